"""Relay behaviour: big results with flow control, pipelined startup, protocol 3.2, uvloop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import asyncpg
import pytest
import uvloop

from flux_proxy.model import Exchange, Lifetime
from flux_proxy.pg import messages as m
from flux_proxy.pg.proxy import PgRecordProxy
from tests.pg.conftest import RawClient, Recorder
from tests.services import PgCluster


async def test_large_result_streams_through_intact(recorder: Recorder) -> None:
    conn = await asyncpg.connect(recorder.url(), ssl=False)
    try:
        recorder.proxy.set_current_request("big")
        rows = await conn.fetch("SELECT g, repeat('x', 2000) AS pad "
                                "FROM generate_series(1, 5000) g")
        assert len(rows) == 5000 and rows[-1]["g"] == 5000 and len(rows[0]["pad"]) == 2000
    finally:
        await conn.close()
    await recorder.settle()
    [big] = [e for e in recorder.exchanges
             if e.request_id == "big" and e.lifetime is Lifetime.REQUEST]
    assert big.response["row_count"] == 5000 and len(big.server_frames) == 5000 + 3  # 2, D..., C, Z
    assert sum(len(f) for f in big.server_frames) > 10_000_000


async def test_query_pipelined_with_startup_is_relayed_after_upstream_connects(
        recorder: Recorder) -> None:
    client = await RawClient.connect(recorder.port)
    client.send(m.StartupMessage(parameters=(("user", "postgres"), ("database", "flux_test"))),
                m.Query("SELECT 'early'"))
    replies = await client.until(m.ReadyForQuery)  # the startup's
    assert isinstance(replies[0], m.AuthenticationOk)
    replies = await client.until(m.ReadyForQuery)
    assert m.DataRow((b"early",)) in replies
    await client.close()


async def test_protocol_3_2_request_is_negotiated_down_by_the_upstream(
        recorder: Recorder) -> None:
    client = await RawClient.connect(recorder.port)
    client.send(m.StartupMessage(m.PROTOCOL_3_2, (("user", "postgres"),
                                                  ("database", "flux_test"))))
    replies = await client.until(m.ReadyForQuery)
    # PostgreSQL 15 sends its whole latest version code (3.0) in the "newest minor" field.
    assert isinstance(replies[0], m.NegotiateProtocolVersion)
    assert replies[0].newest_minor & 0xFFFF == 0
    assert isinstance(replies[1], m.AuthenticationOk)
    await client.close()


@pytest.fixture
def uvloop_proxy(pg: PgCluster) -> Iterator[tuple[PgRecordProxy, list[Exchange]]]:
    """The proxy on its own uvloop thread, with a TLS (verify-full) upstream."""
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    exchanges: list[Exchange] = []
    upstream = pg.url("tlsuser", "tls-secret", sslmode="verify-full", sslrootcert=str(pg.ca_file))
    proxy = asyncio.run_coroutine_threadsafe(
        PgRecordProxy(upstream, exchanges.append).start(), loop).result(10)
    yield proxy, exchanges
    asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


async def test_under_uvloop_with_tls_upstream(
        uvloop_proxy: tuple[PgRecordProxy, list[Exchange]]) -> None:
    proxy, exchanges = uvloop_proxy
    conn = await asyncpg.connect(f"postgresql://tlsuser@127.0.0.1:{proxy.port}/flux_test",
                                 ssl=False)
    try:
        proxy.set_current_request("uv")
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        # pg_stat_ssl is a catalog view, but not driver type introspection: REQUEST lifetime
        rows = await conn.fetch("SELECT g FROM generate_series(1, 3000) g")
        assert len(rows) == 3000
    finally:
        await conn.close()
    for _ in range(50):
        if sum(e.request_id == "uv" for e in exchanges) >= 4:
            break
        await asyncio.sleep(0.05)
    requests = [e for e in exchanges if e.request_id == "uv" and e.lifetime is Lifetime.REQUEST]
    assert [e.response["row_count"] for e in requests] == [1, 3000]


async def test_slow_reader_pauses_the_upstream_and_resumes(recorder: Recorder) -> None:
    client = await RawClient.connect(recorder.port)
    await client.startup()
    client.send(m.Query("SELECT repeat('y', 4000) FROM generate_series(1, 3000)"))
    await asyncio.sleep(0.5)  # not reading: the proxy's client buffer fills, upstream pauses
    replies = await client.until(m.ReadyForQuery, timeout=20)
    rows = [x for x in replies if isinstance(x, m.DataRow)]
    assert len(rows) == 3000 and rows[-1].values == (b"y" * 4000,)
    client.send(m.Query("SELECT 'after'"))  # both directions still flow
    assert m.DataRow((b"after",)) in await client.until(m.ReadyForQuery)
    await client.close()
