"""What only the Postgres store promises: schema `flux`, migrations, daily partitions dropped
whole, and NOTIFY payloads that always fit."""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg

from flux_server.records import ExecutionSummary
from flux_server.store.pg_notify import (
    NOTIFY_ITEM_LIMIT,
    notify_payloads,
    summary_from_payload,
    summary_payload,
)
from flux_server.store.pg_schema import DAY, day_of, partition_name
from flux_server.store.postgres import PostgresStore
from tests.server.factory import make_execution, make_failed_execution


async def _tables(url: str) -> dict[str, set[str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT schemaname, tablename FROM pg_tables "
                                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
    finally:
        await conn.close()
    tables: dict[str, set[str]] = {}
    for row in rows:
        tables.setdefault(row["schemaname"], set()).add(row["tablename"])
    return tables


async def test_everything_lives_in_schema_flux_and_migrates_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))  # servers starting together
    try:
        tables = await _tables(pg_url)
        assert set(tables) == {"flux"}  # the app's own schemas are left alone
        today = day_of(time.time())
        for day in (today, today + 1):  # created ahead of ingest
            for table in ("executions", "exchanges", "console_lines"):
                assert partition_name(table, day) in tables["flux"]
        assert {"schema_migrations", "boot_records", "boot_exchanges"} <= tables["flux"]
        conn = await asyncpg.connect(pg_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM flux.schema_migrations") == 1
        finally:
            await conn.close()
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_retention_drops_old_days_whole(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    try:
        now = time.time()
        old_day = day_of(now - 10 * DAY)
        await store.record_batch([make_execution(started_at=now - 10 * DAY),
                                  make_execution(started_at=now)], [])
        assert partition_name("exchanges", old_day) in (await _tables(pg_url))["flux"]
        assert await store.apply_retention(now - 7 * DAY) == 1
        remaining = (await _tables(pg_url))["flux"]
        for table in ("executions", "exchanges", "console_lines"):
            assert partition_name(table, old_day) not in remaining
            assert partition_name(table, day_of(now)) in remaining
    finally:
        await store.close()


def test_notify_payloads_always_fit() -> None:
    summaries = [ExecutionSummary.of(make_execution(path="/p" * 50)) for _ in range(500)]
    huge = ExecutionSummary.of(make_failed_execution("x" * 1_000_000))
    payloads = notify_payloads([*summaries[:250], huge, *summaries[250:]])
    assert all(len(p.encode()) < 8000 for p in payloads)
    items = [item for p in payloads for item in json.loads(p)]
    assert [i["id"] for i in items] == [s.id for s in [*summaries[:250], huge, *summaries[250:]]]
    assert items[250] == {"id": huge.id}  # fetched by id by the listeners
    assert all(len(json.dumps(i)) <= NOTIFY_ITEM_LIMIT for i in items)


def test_summary_payloads_are_json_that_round_trips() -> None:
    tricky = make_failed_execution('quote " backslash \\ newline \n tab \t nul \x00 \u2713',
                                   path='/p/"ü"/\\x')
    for summary in (ExecutionSummary.of(tricky), ExecutionSummary.of(make_execution())):
        payload = summary_payload(summary)
        assert summary_from_payload(json.loads(payload)) == summary


async def test_a_foreign_notification_does_not_break_the_tail(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    try:
        subscription = store.subscribe()
        await store.ready_for_tail()
        conn = await asyncpg.connect(pg_url)
        try:
            for junk in ("not json", "[1, 2]", '[{"started_at": 1}]'):
                await conn.execute("SELECT pg_notify('flux_executions', $1)", junk)
        finally:
            await conn.close()
        execution = make_execution()
        await store.record_batch([execution], [])
        async with asyncio.timeout(5):
            assert (await anext(subscription)).id == execution.id
    finally:
        await store.close()
