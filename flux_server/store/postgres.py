"""The Postgres record store (asyncpg): schema `flux`, daily partitions, LISTEN/NOTIFY tail.

Servers sharing one database are stateless peers: ingest is idempotent by id whichever server
takes a retry, and every server hears every new execution through NOTIFY, whose payload holds
only summary fields (a long path or error is left out and fetched by id), so a huge error can
never make ingest fail on the 8000-byte NOTIFY limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar
from urllib.parse import urlsplit

import asyncpg

from flux_server.filters import ExecutionFilter
from flux_server.records import BootRecord, Execution, ExecutionSummary
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
from flux_server.store.pg_notify import CHANNEL, CONNECTION_ERRORS, NotifyListener, notify_payloads
from flux_server.store.pg_schema import (
    DAY,
    MIGRATION_LOCK,
    MIGRATIONS,
    PARTITION_LOCK,
    PARTITIONED_TABLES,
    SCHEMA,
    day_of,
    partition_day,
    partition_name,
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
    without_nul,
)

T = TypeVar("T")

TEXT_ENCODING_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.CharacterNotInRepertoireError,  # NUL in text
    asyncpg.UntranslatableCharacterError,  # a character the database encoding lacks
)
RETRYABLE_WRITE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.UniqueViolationError,  # another server stored the same retried batch just now
    asyncpg.CheckViolationError,  # "no partition ... found": retention dropped the day
    asyncpg.DuplicateTableError,  # two servers created the same partition
)


def describe_url(url: str) -> str:
    """host:port/database, without user or password, for messages."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


class PostgresStore(Store):
    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout: float = 5.0) -> None:
        super().__init__()
        self.url = url
        self._where = describe_url(url)
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._open_lock = asyncio.Lock()
        self._known_days: set[int] = set()
        self.listener = NotifyListener(url, self._where, self.hub, self.summaries,
                                       connect_timeout=connect_timeout)

    @property
    def description(self) -> str:
        return f"postgres {self._where} (schema {SCHEMA})"

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        reason = str(exc).strip() or type(exc).__name__
        return StoreUnavailable(f"postgres at {self._where} is unavailable: {reason}")

    # -- connection management -------------------------------------------------------------

    async def open(self) -> None:
        self.listener.start()
        await self._get_pool()

    async def _get_pool(self) -> asyncpg.Pool:
        async with self._open_lock:
            if self._pool is None:
                try:
                    pool = await asyncpg.create_pool(
                        self.url, min_size=1, max_size=self._pool_size,
                        timeout=self._connect_timeout, command_timeout=60,
                        server_settings={"application_name": "flux-server"})
                except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                    # refused, wrong password, no such database: the server keeps answering
                    # UNAVAILABLE with this reason, and tries again on the next call
                    raise self._unavailable(exc) from exc
                try:
                    async with pool.acquire() as conn:
                        await self._migrate(conn)
                        await self._create_partitions(conn, self._current_days())
                except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                    await pool.close()
                    raise self._unavailable(exc) from exc
                self._pool = pool
            return self._pool

    async def _run(self, operation: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Runs `operation` on a pooled connection. A connection lost to a database restart
        is retried once on fresh connections; every operation here is safe to repeat."""
        for attempt in (1, 2):
            pool = await self._get_pool()
            try:
                async with pool.acquire(timeout=self._connect_timeout) as conn:
                    return await operation(conn)
            except CONNECTION_ERRORS as exc:
                await pool.expire_connections()
                if attempt == 2:
                    raise self._unavailable(exc) from exc
            except RETRYABLE_WRITE_ERRORS:
                self._known_days.clear()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self.hub.close()
        await self.listener.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @staticmethod
    async def _migrate(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
                "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            applied = {r[0] for r in await conn.fetch(
                f"SELECT version FROM {SCHEMA}.schema_migrations")}
            for version, sql in MIGRATIONS:
                if version not in applied:
                    await conn.execute(sql)
                    await conn.execute(
                        f"INSERT INTO {SCHEMA}.schema_migrations (version) VALUES ($1)", version)

    # -- partitions and retention ----------------------------------------------------------

    @staticmethod
    def _current_days() -> set[int]:
        """Today and tomorrow, created ahead so ingest rarely has to create one."""
        today = day_of(datetime.now(UTC).timestamp())
        return {today, today + 1}

    async def _create_partitions(self, conn: asyncpg.Connection, days: set[int]) -> None:
        missing = days - self._known_days
        if not missing:
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            for day in sorted(missing):
                for table in PARTITIONED_TABLES:
                    await conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{partition_name(table, day)} "
                        f"PARTITION OF {SCHEMA}.{table} "
                        f"FOR VALUES FROM ({day * DAY}) TO ({(day + 1) * DAY})")
        self._known_days |= missing

    async def maintain(self) -> None:
        """Creates today's and tomorrow's partitions ahead of ingest."""
        await self._run(lambda conn: self._create_partitions(conn, self._current_days()))

    async def apply_retention(self, cutoff: float) -> int:
        return await self._run(lambda conn: self._drop_days_before(conn, cutoff))

    async def _drop_days_before(self, conn: asyncpg.Connection, cutoff: float) -> int:
        """Detaches (concurrently, so readers and writers are not blocked) and drops every
        partition whose whole day ends at or before `cutoff`, then the unreferenced boots."""
        first_kept_day = day_of(cutoff)
        tables = await conn.fetch(
            "SELECT c.relname, i.inhdetachpending AS pending, i.inhrelid IS NOT NULL AS attached"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_inherits i ON i.inhrelid = c.oid"
            " WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname ~ $2",
            SCHEMA, f"^({'|'.join(PARTITIONED_TABLES)})_[0-9]{{8}}$")
        dropped_executions = 0
        for table in tables:
            name = table["relname"]
            day = partition_day(name)
            if day is None or day >= first_kept_day:
                continue
            parent = name.rsplit("_", 1)[0]
            if parent == "executions":
                dropped_executions += await conn.fetchval(
                    f"SELECT count(*) FROM {SCHEMA}.{name}")
            if table["attached"]:
                how = "FINALIZE" if table["pending"] else "CONCURRENTLY"
                await conn.execute(
                    f"ALTER TABLE {SCHEMA}.{parent} DETACH PARTITION {SCHEMA}.{name} {how}")
            await conn.execute(f"DROP TABLE IF EXISTS {SCHEMA}.{name}")
            self._known_days.discard(day)
        await conn.execute(
            f"DELETE FROM {SCHEMA}.boot_records b WHERE b.started_at < $1 AND NOT EXISTS "
            f"(SELECT 1 FROM {SCHEMA}.executions e WHERE e.boot_id = b.id)", cutoff)
        return dropped_executions

    # -- writes ----------------------------------------------------------------------------

    async def record_prepared(self, executions: Sequence[PreparedExecution],
                              boots: Sequence[PreparedBoot]) -> StoredCounts:
        unique = list({e.id: e for e in executions}.values())
        unique_boots = list({b.id: b for b in boots}.values())
        try:
            try:
                return await self._run(lambda conn: self._record(conn, unique, unique_boots))
            except TEXT_ENCODING_ERRORS:
                # Postgres text cannot hold NUL: retry with it replaced (rare, so the common
                # path never scans the text)
                clean, clean_boots = without_nul(unique), without_nul(unique_boots)
                return await self._run(lambda conn: self._record(conn, clean, clean_boots))
        except asyncpg.DataError as exc:
            raise InvalidRecord(f"the database refused a record: {exc}") from exc

    async def _record(self, conn: asyncpg.Connection, executions: list[PreparedExecution],
                      boots: list[PreparedBoot]) -> StoredCounts:
        await self._create_partitions(conn, {day_of(e.started_at) for e in executions})
        async with conn.transaction():
            existing: set[str] = set()
            if executions:
                rows = await conn.fetch(
                    f"SELECT id::text FROM {SCHEMA}.executions "
                    "WHERE id = ANY($1::uuid[])", [e.id for e in executions])
                existing = {r[0] for r in rows}
            new = [e for e in executions if e.id not in existing]
            new_boots = await self._insert_boots(conn, boots)
            if new:
                await self._copy_executions(conn, new)
                await conn.execute(
                    "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
                    CHANNEL, notify_payloads([e.summary for e in new]))
        return StoredCounts(executions=len(new), boots=new_boots)

    @staticmethod
    async def _copy_executions(conn: asyncpg.Connection,
                               executions: list[PreparedExecution]) -> None:
        await conn.copy_records_to_table(
            "executions", schema_name=SCHEMA, columns=EXECUTION_COLUMNS,
            records=[e.row for e in executions])
        exchanges = [(e.id, e.started_at, *x) for e in executions for x in e.exchanges]
        if exchanges:
            await conn.copy_records_to_table(
                "exchanges", schema_name=SCHEMA,
                columns=("execution_id", "execution_started_at", *EXCHANGE_COLUMNS),
                records=exchanges)
        console = [(e.id, e.started_at, *c) for e in executions for c in e.console]
        if console:
            await conn.copy_records_to_table(
                "console_lines", schema_name=SCHEMA,
                columns=("execution_id", "execution_started_at", *CONSOLE_COLUMNS),
                records=console)

    @staticmethod
    async def _insert_boots(conn: asyncpg.Connection, boots: list[PreparedBoot]) -> int:
        if not boots:
            return 0
        inserted = await conn.fetch(
            f"INSERT INTO {SCHEMA}.boot_records (id, worker_id, app_path, started_at) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[]) "
            "ON CONFLICT (id) DO NOTHING RETURNING id",
            [b.id for b in boots], [b.worker_id for b in boots], [b.app_path for b in boots],
            [b.started_at for b in boots])
        new_ids = {r[0] for r in inserted}
        exchanges = [(b.id, *x) for b in boots if b.id in new_ids for x in b.exchanges]
        if exchanges:
            await conn.copy_records_to_table(
                "boot_exchanges", schema_name=SCHEMA, columns=("boot_id", *EXCHANGE_COLUMNS),
                records=exchanges)
        # A growing boot record is re-sent with its new exchanges: keep known positions.
        later = [(b.id, *x) for b in boots if b.id not in new_ids for x in b.exchanges]
        if later:
            columns = ("boot_id", *EXCHANGE_COLUMNS)
            await conn.executemany(
                f"INSERT INTO {SCHEMA}.boot_exchanges ({', '.join(columns)}) VALUES "
                f"({', '.join(f'${i}' for i in range(1, len(columns) + 1))}) "
                "ON CONFLICT (boot_id, position) DO NOTHING", later)
        return len(new_ids)

    # -- reads -----------------------------------------------------------------------------

    async def list(self, flt: ExecutionFilter, limit: int | None = None,
                   cursor: str | None = None) -> Page:
        size = page_size(limit)
        params = SqlParams(numbered=True)
        where = where_clause(flt, params, decode_cursor(cursor) if cursor else None,
                             id_cast="::uuid")
        sql = (f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM {SCHEMA}.executions WHERE {where} "
               f"ORDER BY started_at DESC, id DESC LIMIT {size + 1}")
        rows = await self._run(lambda conn: conn.fetch(sql, *params.values))
        summaries = [summary_from_row(r) for r in rows[:size]]
        return Page(summaries, encode_cursor(summaries[-1]) if len(rows) > size else None)

    async def get(self, id_or_prefix: str) -> Execution | None:
        wanted = id_range(id_or_prefix)
        return await self._run(lambda conn: self._get(conn, wanted.text, wanted.low,
                                                      wanted.high))

    async def _get(self, conn: asyncpg.Connection, text: str, low: str,
                   high: str) -> Execution | None:
        rows = await conn.fetch(
            f"SELECT {', '.join(EXECUTION_COLUMNS)} FROM {SCHEMA}.executions "
            f"WHERE id BETWEEN $1::uuid AND $2::uuid ORDER BY id "
            f"LIMIT {MAX_AMBIGUOUS_CANDIDATES + 1}", low, high)
        if not rows:
            return None
        if len(rows) > 1:
            raise AmbiguousPrefix(text, [str(r["id"]) for r in rows])
        row = rows[0]
        key = (row["id"], row["started_at"])
        exchanges = await conn.fetch(
            f"SELECT {', '.join(EXCHANGE_COLUMNS)} FROM {SCHEMA}.exchanges "
            "WHERE execution_id = $1 AND execution_started_at = $2 ORDER BY position", *key)
        console = await conn.fetch(
            f"SELECT {', '.join(CONSOLE_COLUMNS)} FROM {SCHEMA}.console_lines "
            "WHERE execution_id = $1 AND execution_started_at = $2 ORDER BY position", *key)
        return execution_from_rows(row, exchanges, console)

    async def get_boot(self, boot_id: str) -> BootRecord | None:
        async def fetch(conn: asyncpg.Connection) -> BootRecord | None:
            row = await conn.fetchrow(f"SELECT * FROM {SCHEMA}.boot_records WHERE id = $1",
                                      boot_id)
            if row is None:
                return None
            exchanges = await conn.fetch(
                f"SELECT {', '.join(EXCHANGE_COLUMNS)} FROM {SCHEMA}.boot_exchanges "
                "WHERE boot_id = $1 ORDER BY position", boot_id)
            return boot_from_rows(row, exchanges)

        return await self._run(fetch)

    async def search_matches(self, ids: Sequence[str], search: str) -> set[str]:
        if not ids:
            return set()
        params = SqlParams(numbered=True)
        id_param = params.add(list(ids))
        condition = search_condition(search, params)
        sql = (f"SELECT id::text FROM {SCHEMA}.executions "
               f"WHERE id = ANY({id_param}::uuid[]) AND {condition}")
        rows = await self._run(lambda conn: conn.fetch(sql, *params.values))
        return {r[0] for r in rows}

    async def summaries(self, ids: Sequence[str]) -> list[ExecutionSummary]:
        sql = (f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM {SCHEMA}.executions "
               "WHERE id = ANY($1::uuid[]) ORDER BY started_at, id")
        rows = await self._run(lambda conn: conn.fetch(sql, list(ids)))
        return [summary_from_row(r) for r in rows]

    # -- tail ------------------------------------------------------------------------------

    async def ready_for_tail(self) -> None:
        await self.listener.ready()
