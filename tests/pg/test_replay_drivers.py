"""Real drivers recorded through the record proxy, then replayed with the server stopped.

Every scenario is recorded once against a private PostgreSQL cluster, which is then stopped:
each replay below runs with no server to dial at all, so every answer the drivers get comes
from the recording.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import psycopg
import pytest

from flux_proxy.matcher import MatchKind
from flux_proxy.model import Lifetime
from tests.pg.replay_harness import REQUEST, Recorded, Scenario, Tag, record, replay
from tests.services import PgCluster

ITEM = uuid.UUID("6f1c1d1e-8a59-4c5e-9d54-3c1c7c0f9a01")
AT = datetime.datetime(2025, 11, 25, 17, 0, tzinfo=datetime.UTC)


def outcome(exc: BaseException) -> tuple[str, str | None]:
    """What a driver error looks like to the app: its class and SQLSTATE."""
    return type(exc).__name__, getattr(exc, "sqlstate", None)


def rows(records: list[Any]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in records]


# ---------------------------------------------------------------------------------- scenarios


async def asyncpg_app(url: str, tag: Tag, variant: str) -> list[Any]:
    """Boot IO, binary params and rows, a reused named statement, a catalog-read type lookup,
    COPY, a transaction. Variants: `changed` (one parameter), `extra` (an unrecorded query),
    `boot-changed` (a parameter of the start-up IO)."""
    conn = await asyncpg.connect(url, ssl=False)
    await conn.execute("CREATE TABLE IF NOT EXISTS ra_items "
                       "(id uuid PRIMARY KEY, n int, at timestamptz, note text)")
    await conn.execute("DROP TYPE IF EXISTS ra_mood; CREATE TYPE ra_mood AS ENUM ('sad', 'ok')")
    await conn.fetchval("SELECT $1::int", 2 if variant == "boot-changed" else 1)
    tag(REQUEST)
    out: list[Any] = []
    n = 5 if variant == "changed" else 3
    out.append(tuple(await conn.fetchrow(
        "INSERT INTO ra_items VALUES ($1, $2, $3, $4) RETURNING *", ITEM, n, AT, "hello")))
    times = await conn.prepare("SELECT n * $1::int4 FROM ra_items WHERE id = $2")
    out += [await times.fetchval(2, ITEM), await times.fetchval(10, ITEM)]
    out.append(await conn.fetchval("SELECT 'ok'::ra_mood"))
    out.append(await conn.copy_records_to_table("ra_items", records=[
        (uuid.UUID(int=1), 1, AT, None), (uuid.UUID(int=2), 2, AT, "two")]))
    async with conn.transaction():
        out.append(await conn.fetchval("SELECT count(*) FROM ra_items"))
        out.append([r[0] async for r in conn.cursor(  # Execute with a row limit, twice
            "SELECT n FROM ra_items ORDER BY n", prefetch=2)])
    if variant == "extra":
        try:
            await conn.fetchval("SELECT note FROM ra_items WHERE n = $1", 404)
        except asyncpg.PostgresError as exc:
            out.append((outcome(exc), str(exc)))
    out.append(rows(await conn.fetch("SELECT n, note FROM ra_items ORDER BY n")))
    tag(None)
    await conn.close()
    return out


async def asyncpg_pool(url: str, tag: Tag, variant: str) -> list[Any]:
    """Recorded on one connection. Variant `fresh`: the request opens two new connections and
    prepares its statement under a name of its own choosing."""
    first = await asyncpg.connect(url, ssl=False)
    tag(REQUEST)
    out: list[Any] = []
    if variant == "fresh":
        a = await asyncpg.connect(url, ssl=False)
        b = await asyncpg.connect(url, ssl=False)
        plus = await a.prepare("SELECT $1::int4 + 1", name="replay_chose_this")
        out += [await plus.fetchval(1), await plus.fetchval(2)]
        out.append(rows(await b.fetch("SELECT generate_series(1, $1::int4)", 3)))
        await a.close()
        await b.close()
    else:
        plus = await first.prepare("SELECT $1::int4 + 1")
        out += [await plus.fetchval(1), await plus.fetchval(2)]
        out.append(rows(await first.fetch("SELECT generate_series(1, $1::int4)", 3)))
    tag(None)
    await first.close()
    return out


async def asyncpg_cached(url: str, tag: Tag, variant: str) -> list[Any]:
    """The request runs statements an earlier request prepared on the same connection: the
    recording of this request holds only their Bind/Execute. Variant `fresh`: that earlier
    request never ran (a new worker), so the driver parses and describes them anew."""
    conn = await asyncpg.connect(url, ssl=False)
    await conn.execute("CREATE TABLE IF NOT EXISTS rc_users (id int PRIMARY KEY, name text); "
                       "INSERT INTO rc_users VALUES (1, 'ada'), (2, 'alan') "
                       "ON CONFLICT DO NOTHING")
    by_id = "SELECT id, name FROM rc_users WHERE id = $1"
    rename = "UPDATE rc_users SET name = $2 WHERE id = $1"
    if variant != "fresh":
        tag("an-earlier-request")
        await conn.fetchrow(by_id, 1)
        await conn.execute(rename, 1, "ada")
        tag(None)
    tag(REQUEST)
    out = [tuple(await conn.fetchrow(by_id, 2)), await conn.execute(rename, 2, "alan")]
    tag(None)
    await conn.close()
    return out


async def asyncpg_failed_transaction(url: str, tag: Tag, variant: str) -> list[Any]:
    """A unique violation inside a transaction (status E), a query refused in it, ROLLBACK."""
    conn = await asyncpg.connect(url, ssl=False)
    await conn.execute("CREATE TABLE IF NOT EXISTS ra_unique (id int PRIMARY KEY)")
    await conn.execute("INSERT INTO ra_unique VALUES (1) ON CONFLICT DO NOTHING")
    tag(REQUEST)
    out: list[Any] = []
    tx = conn.transaction()
    await tx.start()
    for sql in ("INSERT INTO ra_unique VALUES (1)", "SELECT count(*) FROM ra_unique"):
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as exc:
            out.append(outcome(exc))
    await tx.rollback()
    out.append(await conn.fetchval("SELECT count(*) FROM ra_unique"))
    tag(None)
    await conn.close()
    return out


async def psycopg_app(url: str, tag: Tag, variant: str) -> list[Any]:
    """Text params, pipelines (one failing), COPY, a Bind error, a failed transaction with its
    statuses, server-side prepared statements. Variant `binary`: binary results for a query
    recorded with text ones."""
    out: list[Any] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS rp_items (id int, v text)")
        tag(REQUEST)
        cur = await conn.execute("INSERT INTO rp_items VALUES (%s, %s) RETURNING id, v",
                                 (1, "a"))
        out.append(await cur.fetchall())
        async with conn.pipeline(), conn.cursor() as cur:
            await cur.execute("INSERT INTO rp_items VALUES (%s, %s)", (2, "b"))
            await cur.execute("INSERT INTO rp_items VALUES (%b, %t)", (3, "c"))
            await cur.execute("SELECT v FROM rp_items WHERE id >= %s ORDER BY id", (2,))
            out.append(await cur.fetchall())
        try:
            async with conn.pipeline(), conn.cursor() as cur:
                await cur.execute("SELECT 1")
                await cur.execute("SELECT * FROM rp_missing")
                await cur.execute("SELECT 2")
        except psycopg.Error as exc:
            out.append(outcome(exc))
        async with conn.cursor() as cur:
            async with cur.copy("COPY rp_items (id, v) FROM STDIN") as copy:
                await copy.write_row((4, "d"))
            out.append(cur.rowcount)
        try:
            async with conn.cursor(binary=variant == "binary") as cur:
                await cur.execute("SELECT id, v FROM rp_items ORDER BY id")
                out.append(await cur.fetchall())
        except psycopg.Error as exc:
            out.append((outcome(exc), str(exc)))
        try:
            await conn.execute("SELECT * FROM rp_items WHERE id = %s", ("abc",))
        except psycopg.Error as exc:
            out.append(outcome(exc))
        await conn.execute("BEGIN")
        for query, params in (("SELECT 10 / %s", (0,)), ("SELECT 1", None)):
            try:
                await conn.execute(query, params)
            except psycopg.Error as exc:
                out.append((outcome(exc), conn.info.transaction_status.name))
        await conn.execute("ROLLBACK")
        out.append(conn.info.transaction_status.name)
        for value in (7, 8):
            cur = await conn.execute("SELECT %s::int * 2", (value,), prepare=True)
            out.append(await cur.fetchall())
        tag(None)
    return out


SCENARIOS: dict[str, Scenario] = {
    "asyncpg_app": asyncpg_app, "asyncpg_pool": asyncpg_pool, "asyncpg_cached": asyncpg_cached,
    "asyncpg_failed_transaction": asyncpg_failed_transaction, "psycopg_app": psycopg_app}


@pytest.fixture(scope="module")
async def recordings() -> AsyncIterator[dict[str, Recorded]]:
    """Every scenario recorded once; then the server is stopped for good."""
    cluster = PgCluster(tls=False, users=()).start()
    try:
        recorded = {name: await record(cluster.url(sslmode="disable"), scenario)
                    for name, scenario in SCENARIOS.items()}
    finally:
        port = cluster.port
        cluster.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # nothing listens where the server was
    yield recorded


async def replayed(recordings: dict[str, Recorded], name: str, variant: str = "") -> Any:
    recorded = recordings[name]
    result = await asyncio.wait_for(replay(recorded.book(), SCENARIOS[name], variant), 30)
    return recorded, result


# -------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n != "asyncpg_cached"])
async def test_replay_gives_the_driver_identical_results(recordings: dict[str, Recorded],
                                                         name: str) -> None:
    recorded, again = await replayed(recordings, name)
    assert again.result == recorded.result
    book = again.book
    assert book.stopped_at is None and book.unused() == []
    assert [d for r in book.replayed for d in r.match.divergences] == []
    assert all(r.match.kind is MatchKind.EXACT for r in book.replayed)
    assert any(r.during_request for r in book.replayed)


def test_the_recordings_hold_what_the_replays_are_meant_to_answer(
        recordings: dict[str, Recorded]) -> None:
    """Guards the scenarios themselves: each one exercises what its tests claim."""
    app = recordings["asyncpg_app"].exchanges
    assert any(x.lifetime is Lifetime.CONNECTION and "pg_catalog" in (x.request.get("sql") or "")
               and any(f[:1] == b"E" for f in x.client_frames) for x in app)
    assert any((x.request.get("sql") or "").startswith("COPY") for x in app)
    assert sum(1 for x in app if x.request.get("max_rows") == 2) >= 2  # PortalSuspended
    failed = recordings["asyncpg_failed_transaction"].result
    assert failed == [("UniqueViolationError", "23505"),
                      ("InFailedSQLTransactionError", "25P02"), 1]
    psy = recordings["psycopg_app"].result
    assert (("DivisionByZero", "22012"), "INERROR") in psy
    assert (("InFailedSqlTransaction", "25P02"), "INERROR") in psy
    assert ("InvalidTextRepresentation", "22P02") in psy and ("UndefinedTable", "42P01") in psy


async def test_named_statements_on_fresh_connections_and_more_connections_than_recorded(
        recordings: dict[str, Recorded]) -> None:
    recorded, again = await replayed(recordings, "asyncpg_pool", "fresh")
    assert again.result == recorded.result
    book = again.book
    assert book.stopped_at is None and book.unused() == []
    in_request = [r.exchange for r in book.replayed if r.during_request]
    recorded_connections = {x.connection for x in recorded.exchanges}
    assert len(recorded_connections) == 1
    assert len({x.connection for x in in_request}) == 2  # neither is the boot connection
    named = [x for x in in_request if x.request["sql"] == "SELECT $1::int4 + 1"]
    assert [x.request["statement"] for x in named] == ["replay_chose_this"] * 2
    assert [x.request["params"] for x in named] == [[1], [2]]


async def test_statements_prepared_before_the_request_are_parsed_anew_in_replay(
        recordings: dict[str, Recorded]) -> None:
    recorded, again = await replayed(recordings, "asyncpg_cached", "fresh")
    mine = [x for x in recorded.exchanges if x.request_id == REQUEST]
    assert mine and not any(f[:1] in (b"P", b"D") for x in mine for f in x.client_frames)
    assert again.result == recorded.result
    assert again.book.stopped_at is None and again.book.unused() == []
    assert [r.match.kind for r in again.book.replayed if r.during_request] == [
        MatchKind.EXACT, MatchKind.EXACT]


async def test_a_changed_parameter_is_answered_and_reported_as_a_divergence(
        recordings: dict[str, Recorded]) -> None:
    recorded, again = await replayed(recordings, "asyncpg_app", "changed")
    assert again.result == recorded.result  # answered from the recording
    book = again.book
    assert book.stopped_at is None and book.unused() == []
    [diverged] = [r for r in book.replayed if r.match.kind is MatchKind.DIVERGED]
    assert diverged.exchange.request["sql"].startswith("INSERT INTO ra_items")
    assert [(d.field, d.expected, d.actual) for d in diverged.match.divergences] == [
        ("param $2", 3, 5)]


async def test_an_extra_query_gets_fx001_and_the_connection_stays_usable(
        recordings: dict[str, Recorded]) -> None:
    recorded, again = await replayed(recordings, "asyncpg_app", "extra")
    *same, (error, message), last = again.result
    assert [*same, last] == recorded.result  # the next recorded query is still answered
    assert error[1] == "FX001" and "SELECT note FROM ra_items WHERE n = $1" in message
    stopped = again.book.stopped_at
    assert stopped is not None and stopped.match.kind is MatchKind.MISS
    assert stopped.exchange.request["sql"] == "SELECT note FROM ra_items WHERE n = $1"
    assert stopped.exchange.request["params"] == []  # asyncpg's Parse/Describe/Flush missed
    assert stopped.exchange.response["error"]["sqlstate"] == "FX001"
    assert again.book.unused() == []


async def test_start_up_io_is_answered_from_the_boot_record_without_divergences(
        recordings: dict[str, Recorded]) -> None:
    recorded, again = await replayed(recordings, "asyncpg_app", "boot-changed")
    assert again.result == recorded.result
    boot = [r for r in again.book.replayed if not r.during_request]
    assert boot and all(r.source == "boot" for r in boot)
    changed = [r for r in boot if r.exchange.request.get("sql") == "SELECT $1::int"]
    assert changed[0].match.kind is MatchKind.DIVERGED and changed[0].match.divergences == []
    assert again.book.stopped_at is None
    assert [d for r in again.book.replayed for d in r.match.divergences] == []


async def test_binary_results_where_text_was_recorded_are_an_explicit_error(
        recordings: dict[str, Recorded]) -> None:
    recorded, again = await replayed(recordings, "psycopg_app", "binary")
    index = next(i for i, item in enumerate(again.result) if isinstance(item, tuple)
                 and isinstance(item[1], str) and "result formats" in item[1])
    (_, sqlstate), message = again.result[index]
    assert sqlstate == "FX002" and "SELECT id, v FROM rp_items ORDER BY id" in message
    assert "text" in message and "binary" in message
    assert again.result[:index] == recorded.result[:index]
    assert again.result[index + 1:] == recorded.result[index + 1:]  # the connection went on
    [diverged] = [r for r in again.book.replayed if r.match.kind is MatchKind.DIVERGED]
    assert [d.field for d in diverged.match.divergences] == ["result formats"]
