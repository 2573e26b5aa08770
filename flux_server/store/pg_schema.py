"""Versioned migrations of the Postgres store (schema `flux`), applied at start.

Executions, their exchanges and their console lines are range-partitioned by the execution's
start time (epoch seconds), one partition per UTC day, so retention drops a day whole.
Partitions are created on demand; there is no default partition, which keeps
`DETACH PARTITION ... CONCURRENTLY` possible.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

SCHEMA = "flux"
DAY = 86400
PARTITIONED_TABLES = ("executions", "exchanges", "console_lines")
MIGRATION_LOCK = 0x666C7578_0001  # pg_advisory lock keys: "flux" + purpose
PARTITION_LOCK = 0x666C7578_0002

EXCHANGE_COLUMNS_SQL = """
    position integer NOT NULL,
    protocol text NOT NULL,
    connection bigint NOT NULL,
    seq bigint NOT NULL,
    lifetime text NOT NULL,
    request_id text,
    started_at double precision NOT NULL,
    duration double precision NOT NULL,
    frames bytea NOT NULL,  -- flux.v1.Frames: the raw frames both ways, in order
    request json NOT NULL,
    response json NOT NULL,
    source text,
    failed boolean NOT NULL
"""

MIGRATIONS: list[tuple[int, str]] = [
    (1, f"""
    CREATE TABLE flux.executions (
        id uuid NOT NULL,
        started_at double precision NOT NULL,
        duration double precision NOT NULL,
        method text NOT NULL,
        path text NOT NULL,
        query text NOT NULL,
        request_headers json NOT NULL,
        request_body bytea NOT NULL,
        request_truncated boolean NOT NULL,
        status integer NOT NULL,
        response_headers json NOT NULL,
        response_body bytea NOT NULL,
        response_truncated boolean NOT NULL,
        outcome text NOT NULL,
        error_name text,
        error_message text,
        error_stack text,
        determinism json NOT NULL,
        parent_id uuid,
        mode text NOT NULL,
        app_path text NOT NULL,
        code_version text NOT NULL,
        flux_version text NOT NULL,
        deno_version text NOT NULL,
        worker_id text NOT NULL,
        boot_id text,
        upstreams json NOT NULL,
        replay_outcome text,
        PRIMARY KEY (id, started_at)
    ) PARTITION BY RANGE (started_at);
    CREATE INDEX executions_started ON flux.executions (started_at DESC, id DESC);
    CREATE INDEX executions_status ON flux.executions (status, started_at DESC);
    CREATE INDEX executions_outcome ON flux.executions (outcome, started_at DESC);
    CREATE INDEX executions_method ON flux.executions (method, started_at DESC);
    CREATE INDEX executions_mode ON flux.executions (mode, started_at DESC);
    CREATE INDEX executions_boot ON flux.executions (boot_id);

    CREATE TABLE flux.exchanges (
        execution_id uuid NOT NULL,
        execution_started_at double precision NOT NULL,
        {EXCHANGE_COLUMNS_SQL},
        PRIMARY KEY (execution_id, execution_started_at, position)
    ) PARTITION BY RANGE (execution_started_at);

    CREATE TABLE flux.console_lines (
        execution_id uuid NOT NULL,
        execution_started_at double precision NOT NULL,
        position integer NOT NULL,
        seq bigint NOT NULL,
        offset_s double precision NOT NULL,
        level text NOT NULL,
        text text NOT NULL,
        PRIMARY KEY (execution_id, execution_started_at, position)
    ) PARTITION BY RANGE (execution_started_at);

    CREATE TABLE flux.boot_records (
        id text PRIMARY KEY,
        worker_id text NOT NULL,
        app_path text NOT NULL,
        started_at double precision NOT NULL
    );
    CREATE INDEX boot_records_started ON flux.boot_records (started_at);

    CREATE TABLE flux.boot_exchanges (
        boot_id text NOT NULL REFERENCES flux.boot_records (id) ON DELETE CASCADE,
        {EXCHANGE_COLUMNS_SQL},
        PRIMARY KEY (boot_id, position)
    );
    """),
]


def day_of(timestamp: float) -> int:
    return math.floor(timestamp / DAY)


def partition_name(table: str, day: int) -> str:
    return f"{table}_{datetime.fromtimestamp(day * DAY, UTC):%Y%m%d}"


def partition_day(name: str) -> int | None:
    """The day of a partition table name, or None for anything else."""
    _, _, stamp = name.rpartition("_")
    try:
        return day_of(datetime.strptime(stamp, "%Y%m%d").replace(tzinfo=UTC).timestamp())
    except ValueError:
        return None
