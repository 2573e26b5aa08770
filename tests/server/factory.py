"""Realistic records for the server tests and the ingest benchmark."""

from __future__ import annotations

import time
import uuid
from typing import Any

from flux_proxy.model import Exchange, Lifetime, Protocol, Source
from flux_server.records import (
    BootRecord,
    ConsoleLine,
    DeterminismEntry,
    ErrorInfo,
    Execution,
    Mode,
)


def postgres_exchange(seq: int, started_at: float, sql: str = "SELECT id, name FROM users "
                      "WHERE id = $1", params: list[Any] | None = None) -> Exchange:
    return Exchange(
        protocol=Protocol.POSTGRES, connection=1, seq=seq, lifetime=Lifetime.REQUEST,
        request_id=None, started_at=started_at + 0.001 * seq, duration=0.0004,
        client_frames=[b"P\x00\x00\x00\x2a" + sql.encode() + b"\x00", b"B\x00\x00\x00\x10",
                       b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00", b"S\x00\x00\x00\x04"],
        server_frames=[b"1\x00\x00\x00\x04", b"2\x00\x00\x00\x04",
                       b"D\x00\x00\x00\x12\x00\x02\x00\x00\x00\x01" + b"7" + b"\x00\x00\x00\x03ann",
                       b"C\x00\x00\x00\x0dSELECT 1\x00", b"Z\x00\x00\x00\x05I"],
        request={"sql": sql, "params": params if params is not None else [str(seq)]},
        response={"command_tag": "SELECT 1", "columns": ["id", "name"], "rows": [["7", "ann"]],
                  "row_count": 1, "error": None},
    )


def redis_exchange(seq: int, started_at: float) -> Exchange:
    return Exchange(
        protocol=Protocol.REDIS, connection=2, seq=seq, lifetime=Lifetime.REQUEST,
        request_id=None, started_at=started_at + 0.002 * seq, duration=0.0002,
        client_frames=[b"*2\r\n$3\r\nGET\r\n$7\r\nuser:42\r\n"],
        server_frames=[b"$5\r\nhello\r\n"],
        request={"command": "GET", "args": ["user:42"]},
        response={"value": "hello", "error": None},
    )


def make_execution(**overrides: Any) -> Execution:
    """An execution with 5 exchanges (4 Postgres, 1 Redis) and 2 console lines."""
    started_at = overrides.pop("started_at", time.time())
    execution_id = overrides.pop("id", str(uuid.uuid4()))
    fields: dict[str, Any] = {
        "id": execution_id,
        "started_at": started_at,
        "duration": 0.0123,
        "method": "GET",
        "path": "/users/42",
        "query": "verbose=1",
        "request_headers": [("host", "localhost:8000"), ("accept", "application/json"),
                            ("x-multi", "a"), ("x-multi", "b")],
        "request_body": b"",
        "status": 200,
        "response_headers": [("content-type", "application/json")],
        "response_body": b'{"id":42,"name":"ann"}',
        "console": [ConsoleLine(seq=0, offset=0.001, level="log", text="loading user 42"),
                    ConsoleLine(seq=1, offset=0.01, level="info", text="done \u2713")],
        "exchanges": [*(postgres_exchange(i, started_at) for i in range(4)),
                      redis_exchange(4, started_at)],
        "determinism": [DeterminismEntry("date_now", 1764088800123),
                        DeterminismEntry("random_uuid", str(uuid.uuid4())),
                        DeterminismEntry("math_random", 0.25)],
        "app_path": "/srv/app/main.ts",
        "code_version": "c0ffee",
        "flux_version": "0.1.0",
        "deno_version": "2.5.0",
        "worker_id": "w1",
        "boot_id": None,
        "upstreams": {"DATABASE_URL": "postgresql://app@127.0.0.1:5432/app"},
    }
    fields.update(overrides)
    return Execution(**fields)


def make_failed_execution(message: str = "duplicate key value violates unique constraint",
                          **overrides: Any) -> Execution:
    overrides.setdefault("status", 500)
    overrides.setdefault("method", "POST")
    overrides.setdefault("path", "/orders")
    stack = f"PostgresError: {message}\n    at createOrder (/srv/app/orders.ts:12:5)"
    return make_execution(error=ErrorInfo(name="PostgresError", message=message, stack=stack),
                          **overrides)


def make_replay(parent: Execution, **overrides: Any) -> Execution:
    replay = make_execution(parent_id=parent.id, mode=Mode.REPLAY, replay_outcome="diverged",
                            **overrides)
    for exchange in replay.exchanges:
        exchange.source = Source.RECORDED
    return replay


def make_boot(**overrides: Any) -> BootRecord:
    started_at = overrides.pop("started_at", time.time())
    fields: dict[str, Any] = {
        "id": str(uuid.uuid4()), "worker_id": "w1", "app_path": "/srv/app/main.ts",
        "started_at": started_at,
        "exchanges": [postgres_exchange(0, started_at, "CREATE TABLE IF NOT EXISTS users (id int)",
                                        params=[])],
    }
    fields.update(overrides)
    for exchange in fields["exchanges"]:
        exchange.lifetime = Lifetime.SESSION
    return BootRecord(**fields)


def with_prefix(prefix: str) -> str:
    """A random UUID v4 whose hex starts with `prefix` (for ambiguity tests)."""
    rest = uuid.uuid4().hex
    hexits = (prefix + rest)[:32]
    return str(uuid.UUID(hexits))
