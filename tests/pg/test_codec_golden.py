"""Golden tests: real drivers talk to a real PostgreSQL through a capturing relay, and the codec
must parse every captured byte and re-encode it identically."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import psycopg
import pytest

from flux_proxy.pg import messages as m
from flux_proxy.pg.codec import BackendParser, FrontendParser
from tests.pg.relay import Capture, CaptureRelay
from tests.services import PgCluster


@pytest.fixture(scope="module")
async def relay(pg: PgCluster) -> AsyncIterator[CaptureRelay]:
    relay = await CaptureRelay(pg.host, pg.port).start()
    yield relay
    await relay.close()


def _relay_url(pg: PgCluster, relay: CaptureRelay, user: str = "postgres",
               password: str | None = None) -> str:
    auth = user if password is None else f"{user}:{password}"
    return f"postgresql://{auth}@127.0.0.1:{relay.port}/{pg.database}?sslmode=disable"


def reproduce(capture: Capture) -> tuple[list[m.Message], list[m.Message]]:
    """Parse both directions chunk by chunk; assert the re-encoding is byte-identical."""
    frontend = FrontendParser()
    client: list[m.Message] = []
    for chunk in capture.client:
        client += frontend.feed_messages(chunk)
    frontend.eof()
    backend = BackendParser()
    server: list[m.Message] = []
    for chunk in capture.server:
        server += backend.feed_messages(chunk)
    backend.eof()
    assert b"".join(x.raw for x in client) == capture.client_bytes
    assert b"".join(x.encode() for x in client) == capture.client_bytes
    assert b"".join(x.raw for x in server) == capture.server_bytes
    assert b"".join(x.encode() for x in server) == capture.server_bytes
    # The lazy path splits the same frames.
    lazy = FrontendParser()
    assert [f for c in capture.client for f in lazy.feed(c)] == [x.raw for x in client]
    return client, server


async def _asyncpg_workload(url: str) -> None:
    conn = await asyncpg.connect(url, ssl=False)
    try:
        await conn.execute("DROP TABLE IF EXISTS golden; CREATE TABLE golden (id int PRIMARY KEY,"
                           " name text, score float8, ok bool, tag uuid, amount numeric,"
                           " at timestamptz, doc jsonb, blob bytea, nums int[])")
        await conn.executemany(
            "INSERT INTO golden VALUES ($1, $2, $3, $4, gen_random_uuid(), $5, now(), $6, $7,"
            " $8)", [(i, f"n{i}", i / 3, i % 2 == 0, i * 10, '{"a": 1}', b"\x00\xff", [i, i])
                     for i in range(5)])
        rows = await conn.fetch("SELECT * FROM golden WHERE id > $1 ORDER BY id", 1)
        assert len(rows) == 3
        stmt = await conn.prepare("SELECT name FROM golden WHERE id = $1")
        assert await stmt.fetchval(2) == "n2"
        async with conn.transaction():
            await conn.execute("UPDATE golden SET score = 0 WHERE id = $1", 1)
            async for _row in conn.cursor("SELECT * FROM golden", prefetch=2):
                pass
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO golden (id) VALUES (1)")
        except asyncpg.UniqueViolationError:
            pass
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await conn.execute("SELEC 1")
        assert await conn.fetch("") == []
        await conn.copy_records_to_table("golden", records=[(10, "copied")],
                                         columns=["id", "name"])
        out: list[bytes] = []
        await conn.copy_from_query("SELECT id, name FROM golden", output=_collect(out))
        assert out
        await conn.execute("DO $$ BEGIN RAISE NOTICE 'hello notice'; END $$")
        received: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await conn.add_listener("golden_channel",
                                lambda *args: received.done() or received.set_result(args[3]))
        await conn.execute("NOTIFY golden_channel, 'payload'")
        assert await asyncio.wait_for(received, 5) == "payload"
    finally:
        await conn.close()


def _collect(out: list[bytes]):  # type: ignore[no-untyped-def]
    async def sink(chunk: bytes) -> None:
        out.append(chunk)
    return sink


async def _psycopg_pipeline_workload(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = conn.cursor()
        async with conn.pipeline():
            await cur.execute("CREATE TEMP TABLE pipe (id int, v text)")
            await cur.executemany("INSERT INTO pipe VALUES (%s, %s)",
                                  [(i, f"v{i}") for i in range(4)])
            await cur.execute("SELECT * FROM pipe WHERE id >= %s", (1,), binary=True)
            await cur.execute("SELECT count(*) FROM pipe")
        assert (await cur.fetchone()) == (4,)
        with pytest.raises(psycopg.errors.UndefinedTable):
            async with conn.pipeline(), conn.cursor() as cur:
                await cur.execute("SELECT 1")
                await cur.execute("SELECT * FROM missing_table")
                await cur.execute("SELECT 2")
        async with conn.cursor() as cur:
            async with cur.copy("COPY pipe FROM STDIN") as copy:
                await copy.write_row((9, "copied"))
            await cur.execute("SELECT v FROM pipe WHERE id = 9")
            assert await cur.fetchone() == ("copied",)


async def test_asyncpg_stream_reencodes_identically(pg: PgCluster, relay: CaptureRelay) -> None:
    start = len(relay.captures)
    await _asyncpg_workload(_relay_url(pg, relay))
    seen: set[type] = set()
    for capture in relay.captures[start:]:
        client, server = reproduce(capture)
        seen |= {type(x) for x in client + server}
    expected = {m.StartupMessage, m.Query, m.Parse, m.Bind, m.Describe, m.Execute, m.Sync,
                m.Terminate, m.CopyData, m.CopyDone, m.AuthenticationOk, m.ParameterStatus,
                m.BackendKeyData, m.ReadyForQuery, m.RowDescription, m.DataRow,
                m.CommandComplete, m.EmptyQueryResponse, m.ErrorResponse, m.NoticeResponse,
                m.ParseComplete, m.BindComplete, m.NoData, m.ParameterDescription,
                m.PortalSuspended, m.CopyInResponse, m.CopyOutResponse,
                m.NotificationResponse}
    assert expected <= seen, expected - seen


async def test_psycopg_pipeline_stream_reencodes_identically(pg: PgCluster,
                                                             relay: CaptureRelay) -> None:
    start = len(relay.captures)
    await _psycopg_pipeline_workload(_relay_url(pg, relay))
    seen: list[type] = []
    for capture in relay.captures[start:]:
        client, server = reproduce(capture)
        seen += [type(x) for x in client + server]
    # Pipeline mode: several Execute before one Sync, and an error that skips to the Sync.
    assert seen.count(m.Execute) > seen.count(m.Sync) and m.ErrorResponse in seen
    assert m.Flush in seen or seen.count(m.Sync) >= 2


@pytest.mark.parametrize(("user", "password", "request_type"), [
    ("md5user", "md5-secret", m.AuthenticationMD5Password),
    ("scramuser", "scram-secret", m.AuthenticationSASLFinal),
])
async def test_password_auth_streams_reencode_identically(
        pg: PgCluster, relay: CaptureRelay, user: str, password: str,
        request_type: type) -> None:
    for driver in ("asyncpg", "psycopg"):
        start = len(relay.captures)
        url = _relay_url(pg, relay, user, password)
        if driver == "asyncpg":
            conn = await asyncpg.connect(url, ssl=False)
            assert await conn.fetchval("SELECT current_user") == user
            await conn.close()
        else:
            async with await psycopg.AsyncConnection.connect(url) as pconn:
                cur = await pconn.execute("SELECT current_user")
                assert await cur.fetchone() == (user,)
        for capture in relay.captures[start:]:
            client, server = reproduce(capture)
            assert request_type in {type(x) for x in server}
            assert any(x.TYPE == b"p" for x in client)
