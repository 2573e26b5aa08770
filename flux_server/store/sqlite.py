"""The embedded record store: one SQLite file, used when no database URL is given.

aiosqlite runs every statement on its own thread, so the event loop never waits on the disk.
Writes go through one connection under a lock (SQLite has one writer anyway); reads use a
second connection, which WAL lets run alongside a write. Tail fans out in-process: only this
server writes the file.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from flux_server.filters import ExecutionFilter
from flux_server.records import BootRecord, Execution
from flux_server.store.base import (
    MAX_AMBIGUOUS_CANDIDATES,
    AmbiguousPrefix,
    InvalidRecord,
    Page,
    Store,
    StoredCounts,
    StoreUnavailable,
    decode_cursor,
    encode_cursor,
    id_range,
    page_size,
)
from flux_server.store.query import SqlParams, search_condition, where_clause
from flux_server.store.rows import (
    CONSOLE_COLUMNS,
    EXCHANGE_COLUMNS,
    EXECUTION_COLUMNS,
    SUMMARY_COLUMNS,
    PreparedBoot,
    PreparedExecution,
    boot_from_rows,
    execution_from_rows,
    summary_from_row,
)

RETENTION_CHUNK = 500

EXCHANGE_TABLE_COLUMNS = """
    position INTEGER NOT NULL, protocol TEXT NOT NULL, connection INTEGER NOT NULL,
    seq INTEGER NOT NULL, lifetime TEXT NOT NULL, request_id TEXT, started_at REAL NOT NULL,
    duration REAL NOT NULL, frames BLOB NOT NULL,
    request TEXT NOT NULL CHECK (json_valid(request)),
    response TEXT NOT NULL CHECK (json_valid(response)), source TEXT, failed INTEGER NOT NULL
"""

MIGRATIONS: list[str] = [
    # 1: the initial schema.
    f"""
    CREATE TABLE executions (
        id TEXT PRIMARY KEY, started_at REAL NOT NULL, duration REAL NOT NULL,
        method TEXT NOT NULL, path TEXT NOT NULL, query TEXT NOT NULL,
        request_headers TEXT NOT NULL CHECK (json_valid(request_headers)),
        request_body BLOB NOT NULL,
        request_truncated INTEGER NOT NULL, status INTEGER NOT NULL,
        response_headers TEXT NOT NULL CHECK (json_valid(response_headers)),
        response_body BLOB NOT NULL,
        response_truncated INTEGER NOT NULL, outcome TEXT NOT NULL, error_name TEXT,
        error_message TEXT, error_stack TEXT,
        determinism TEXT NOT NULL CHECK (json_valid(determinism)), parent_id TEXT,
        mode TEXT NOT NULL, app_path TEXT NOT NULL, code_version TEXT NOT NULL,
        flux_version TEXT NOT NULL, deno_version TEXT NOT NULL, worker_id TEXT NOT NULL,
        boot_id TEXT, upstreams TEXT NOT NULL CHECK (json_valid(upstreams)),
        replay_outcome TEXT
    );
    CREATE INDEX executions_started ON executions (started_at DESC, id DESC);
    CREATE INDEX executions_status ON executions (status, started_at DESC);
    CREATE INDEX executions_outcome ON executions (outcome, started_at DESC);
    CREATE INDEX executions_method ON executions (method, started_at DESC);
    CREATE INDEX executions_mode ON executions (mode, started_at DESC);
    CREATE INDEX executions_boot ON executions (boot_id);
    CREATE TABLE exchanges (
        execution_id TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
        {EXCHANGE_TABLE_COLUMNS},
        PRIMARY KEY (execution_id, position)
    );
    CREATE TABLE console_lines (
        execution_id TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
        position INTEGER NOT NULL, seq INTEGER NOT NULL, offset_s REAL NOT NULL,
        level TEXT NOT NULL, text TEXT NOT NULL,
        PRIMARY KEY (execution_id, position)
    );
    CREATE TABLE boot_records (
        id TEXT PRIMARY KEY, worker_id TEXT NOT NULL, app_path TEXT NOT NULL,
        started_at REAL NOT NULL
    );
    CREATE INDEX boot_records_started ON boot_records (started_at);
    CREATE TABLE boot_exchanges (
        boot_id TEXT NOT NULL REFERENCES boot_records (id) ON DELETE CASCADE,
        {EXCHANGE_TABLE_COLUMNS},
        PRIMARY KEY (boot_id, position)
    );
    """,
]


def default_sqlite_path() -> Path:
    home = os.environ.get("FLUX_HOME") or str(Path.home() / ".flux")
    return Path(home) / "flux.db"


def _insert_sql(table: str, columns: Sequence[str], verb: str = "INSERT") -> str:
    return (f"{verb} INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})")


class SqliteStore(Store):
    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        self.path = path or default_sqlite_path()
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()

    @property
    def description(self) -> str:
        return f"sqlite {self.path}"

    async def open(self) -> None:
        await self._connections()

    async def _connections(self) -> tuple[aiosqlite.Connection, aiosqlite.Connection]:
        async with self._open_lock:
            if self._writer is None or self._reader is None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    writer = await self._connect()
                    await writer.execute("PRAGMA journal_mode = WAL")
                    await self._migrate(writer)
                    self._writer, self._reader = writer, await self._connect()
                except (OSError, sqlite3.Error) as exc:
                    raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
            return self._writer, self._reader

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA busy_timeout = 10000")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @staticmethod
    async def _migrate(conn: aiosqlite.Connection) -> None:
        async with conn.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = row[0] if row else 0
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await conn.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    async def close(self) -> None:
        self.hub.close()
        async with self._write_lock:
            for conn in (self._writer, self._reader):
                if conn is not None:
                    await conn.close()
            self._writer = self._reader = None

    async def record_prepared(self, executions: Sequence[PreparedExecution],
                              boots: Sequence[PreparedBoot]) -> StoredCounts:
        writer, _ = await self._connections()
        unique = list({e.id: e for e in executions}.values())
        unique_boots = list({b.id: b for b in boots}.values())
        async with self._write_lock:
            try:
                await writer.execute("BEGIN IMMEDIATE")
                try:
                    new = await self._new_executions(writer, unique)
                    new_boots = await self._insert_boots(writer, unique_boots)
                    await self._insert_executions(writer, new)
                    await writer.execute("COMMIT")
                except BaseException:
                    await writer.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"cannot write {self.path}: {exc}") from exc
            except sqlite3.IntegrityError as exc:  # the json_valid checks, as Postgres' `json`
                raise InvalidRecord(f"the database refused a record: {exc}") from exc
        self.hub.publish(e.summary for e in new)
        return StoredCounts(executions=len(new), boots=new_boots)

    @staticmethod
    async def _new_executions(conn: aiosqlite.Connection,
                              executions: list[PreparedExecution]) -> list[PreparedExecution]:
        if not executions:
            return []
        ids = [e.id for e in executions]
        existing: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            sql = f"SELECT id FROM executions WHERE id IN ({', '.join('?' * len(chunk))})"
            async with conn.execute(sql, chunk) as cursor:
                existing.update(row[0] for row in await cursor.fetchall())
        return [e for e in executions if e.id not in existing]

    @staticmethod
    async def _insert_executions(conn: aiosqlite.Connection,
                                 executions: list[PreparedExecution]) -> None:
        await conn.executemany(_insert_sql("executions", EXECUTION_COLUMNS),
                               [e.row for e in executions])
        await conn.executemany(
            _insert_sql("exchanges", ("execution_id", *EXCHANGE_COLUMNS)),
            [(e.id, *x) for e in executions for x in e.exchanges])
        await conn.executemany(
            _insert_sql("console_lines", ("execution_id", *CONSOLE_COLUMNS)),
            [(e.id, *c) for e in executions for c in e.console])

    @staticmethod
    async def _insert_boots(conn: aiosqlite.Connection, boots: list[PreparedBoot]) -> int:
        stored = 0
        for boot in boots:
            cursor = await conn.execute(
                "INSERT OR IGNORE INTO boot_records (id, worker_id, app_path, started_at) "
                "VALUES (?, ?, ?, ?)", (boot.id, boot.worker_id, boot.app_path, boot.started_at))
            if cursor.rowcount == 1:
                stored += 1
            # A growing boot record is re-sent with its new exchanges: keep known positions.
            await conn.executemany(
                _insert_sql("boot_exchanges", ("boot_id", *EXCHANGE_COLUMNS), "INSERT OR IGNORE"),
                [(boot.id, *x) for x in boot.exchanges])
        return stored

    async def _fetch(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        _, reader = await self._connections()
        try:
            async with reader.execute(sql, args) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"cannot read {self.path}: {exc}") from exc

    async def list(self, flt: ExecutionFilter, limit: int | None = None,
                   cursor: str | None = None) -> Page:
        size = page_size(limit)
        params = SqlParams(numbered=False)
        where = where_clause(flt, params, decode_cursor(cursor) if cursor else None)
        rows = await self._fetch(
            f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM executions WHERE {where} "
            f"ORDER BY started_at DESC, id DESC LIMIT {size + 1}", params.values)
        summaries = [summary_from_row(r) for r in rows[:size]]
        more = len(rows) > size
        return Page(summaries, encode_cursor(summaries[-1]) if more else None)

    async def get(self, id_or_prefix: str) -> Execution | None:
        wanted = id_range(id_or_prefix)
        rows = await self._fetch(
            f"SELECT {', '.join(EXECUTION_COLUMNS)} FROM executions WHERE id BETWEEN ? AND ? "
            f"ORDER BY id LIMIT {MAX_AMBIGUOUS_CANDIDATES + 1}", (wanted.low, wanted.high))
        if not rows:
            return None
        if len(rows) > 1:
            raise AmbiguousPrefix(wanted.text, [r["id"] for r in rows])
        execution_id = rows[0]["id"]
        exchanges = await self._fetch(
            f"SELECT {', '.join(EXCHANGE_COLUMNS)} FROM exchanges WHERE execution_id = ? "
            "ORDER BY position", (execution_id,))
        console = await self._fetch(
            f"SELECT {', '.join(CONSOLE_COLUMNS)} FROM console_lines WHERE execution_id = ? "
            "ORDER BY position", (execution_id,))
        return execution_from_rows(rows[0], exchanges, console)

    async def get_boot(self, boot_id: str) -> BootRecord | None:
        rows = await self._fetch("SELECT * FROM boot_records WHERE id = ?", (boot_id,))
        if not rows:
            return None
        exchanges = await self._fetch(
            f"SELECT {', '.join(EXCHANGE_COLUMNS)} FROM boot_exchanges WHERE boot_id = ? "
            "ORDER BY position", (boot_id,))
        return boot_from_rows(rows[0], exchanges)

    async def search_matches(self, ids: Sequence[str], search: str) -> set[str]:
        if not ids:
            return set()
        params = SqlParams(numbered=False)
        placeholders = ", ".join(params.add(i) for i in ids)
        condition = search_condition(search, params)
        rows = await self._fetch(
            f"SELECT id FROM executions WHERE id IN ({placeholders}) AND {condition}",
            params.values)
        return {r["id"] for r in rows}

    async def apply_retention(self, cutoff: float) -> int:
        """Deletes in small transactions so ingest never waits long for the write lock."""
        writer, _ = await self._connections()
        deleted = 0
        while True:
            async with self._write_lock:
                cursor = await writer.execute(
                    "DELETE FROM executions WHERE id IN (SELECT id FROM executions "
                    f"WHERE started_at < ? LIMIT {RETENTION_CHUNK})", (cutoff,))
            deleted += cursor.rowcount
            if cursor.rowcount < RETENTION_CHUNK:
                break
        async with self._write_lock:
            await writer.execute(
                "DELETE FROM boot_records WHERE started_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM executions e WHERE e.boot_id = boot_records.id)", (cutoff,))
        return deleted
