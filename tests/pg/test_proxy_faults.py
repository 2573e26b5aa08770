"""Faults: dead upstream, vanished client, garbage, TLS and SSLRequest misuse, standalone."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from flux_proxy.model import Exchange, Lifetime
from flux_proxy.pg import messages as m
from flux_proxy.pg.proxy import run_standalone
from tests.pg.conftest import ProxyFactory, RawClient, Recorder
from tests.pg.relay import CaptureRelay
from tests.services import PgCluster


@pytest.fixture
async def breakable(pg: PgCluster) -> AsyncIterator[CaptureRelay]:
    """A relay between the proxy and the server that the test can cut."""
    relay = await CaptureRelay(pg.host, pg.port).start()
    yield relay
    await relay.close()


def errors_in(messages: list[m.Message]) -> list[m.ErrorResponse]:
    return [x for x in messages if isinstance(x, m.ErrorResponse)]


async def test_upstream_dies_mid_query(pg: PgCluster, breakable: CaptureRelay,
                                       make_proxy: ProxyFactory) -> None:
    recorder = await make_proxy(
        f"postgresql://postgres@127.0.0.1:{breakable.port}/{pg.database}?sslmode=disable")
    client = await RawClient.connect(recorder.port)
    await client.startup()
    recorder.proxy.set_current_request("doomed")
    client.send(m.Query("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.3)
    breakable.sever()
    replies = await client.until(m.ReadyForQuery)
    [error] = errors_in(replies)
    assert error.sqlstate == "08006" and "upstream connection lost" in (error.message or "")
    assert await client.read_raw() == b""  # then the proxy closes that connection
    await client.close()
    await recorder.settle(lambda: any(e.request_id == "doomed" for e in recorder.exchanges))
    [doomed] = [e for e in recorder.exchanges if e.request_id == "doomed"]
    assert doomed.failed and doomed.lifetime is Lifetime.REQUEST
    assert doomed.request["sql"] == "SELECT pg_sleep(30)"
    assert doomed.response["error"]["sqlstate"] == "08006"
    assert doomed.server_frames[-1] == error.raw
    # The proxy stays up: a new connection works.
    conn = await asyncpg.connect(recorder.url(), ssl=False)
    assert await conn.fetchval("SELECT 41 + 1") == 42
    await conn.close()


async def test_asyncpg_sees_a_clean_error_when_upstream_dies(pg: PgCluster,
                                                             breakable: CaptureRelay,
                                                             make_proxy: ProxyFactory) -> None:
    recorder = await make_proxy(
        f"postgresql://postgres@127.0.0.1:{breakable.port}/{pg.database}?sslmode=disable")
    conn = await asyncpg.connect(recorder.url(), ssl=False)
    query = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.3)
    breakable.sever()
    # asyncpg reports the FATAL ErrorResponse as a closed connection, with the proxy's text.
    with pytest.raises((asyncpg.ConnectionFailureError, asyncpg.ConnectionDoesNotExistError),
                       match="upstream connection lost"):
        await asyncio.wait_for(query, 5)
    await conn.close()


async def test_client_disconnects_mid_pipeline(recorder: Recorder) -> None:
    client = await RawClient.connect(recorder.port)
    await client.startup()
    recorder.proxy.set_current_request("vanished")
    client.send(m.Parse("", "SELECT pg_sleep(0.3)"), m.Bind(), m.Execute(),
                m.Parse("", "SELECT 2"), m.Bind(), m.Execute(), m.Sync())
    await client.close()
    await recorder.settle(lambda: len([e for e in recorder.exchanges
                                       if e.request_id == "vanished"]) == 2)
    first, second = [e for e in recorder.exchanges if e.request_id == "vanished"]
    assert first.failed and second.failed
    assert first.response["error"]["message"] == "client disconnected"
    assert [f[0:1] for f in second.client_frames] == [b"P", b"B", b"E", b"S"]
    conn = await asyncpg.connect(recorder.url(), ssl=False)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()


async def test_garbage_from_a_client_closes_only_that_connection(recorder: Recorder) -> None:
    bystander = await asyncpg.connect(recorder.url(), ssl=False)
    client = await RawClient.connect(recorder.port)
    await client.startup()
    client.send(b"\x01garbage that is no message")
    replies = await client.until(m.ReadyForQuery)
    [error] = errors_in(replies)
    assert error.sqlstate == "08P01" and "unknown frontend message type 0x01" in str(
        error.message)
    assert await client.read_raw() == b""
    await client.close()
    assert await bystander.fetchval("SELECT 'still fine'") == "still fine"
    await bystander.close()


async def test_garbage_instead_of_startup(recorder: Recorder) -> None:
    client = await RawClient.connect(recorder.port)
    client.send(b"\x00\x00\x00\x09hello")
    [error] = errors_in(await client.until(m.ReadyForQuery))
    assert error.sqlstate == "08P01" and "unsupported frontend protocol" in str(error.message)
    await client.close()


async def test_ssl_and_gssenc_requests_get_n(recorder: Recorder) -> None:
    client = await RawClient.connect(recorder.port)
    client.send(m.GSSENCRequest())
    assert await client.read_raw() == b"N"
    client.send(m.SSLRequest())
    assert await client.read_raw() == b"N"
    replies = await client.startup()
    assert isinstance(replies[0], m.AuthenticationOk)
    assert {type(x) for x in replies} >= {m.ParameterStatus, m.BackendKeyData}
    client.send(m.Query("SELECT 1"))
    rows = [x for x in await client.until(m.ReadyForQuery) if isinstance(x, m.DataRow)]
    assert rows == [m.DataRow((b"1",))]
    await client.close()


async def test_bytes_pipelined_after_ssl_request_are_refused(recorder: Recorder) -> None:
    client = await RawClient.connect(recorder.port)
    client.send(m.SSLRequest(), m.StartupMessage(parameters=(("user", "postgres"),)))
    [error] = errors_in(await client.until(m.ReadyForQuery))
    assert "unencrypted data after SSLRequest" in str(error.message)
    await client.close()


async def test_direct_tls_is_refused_with_a_clear_error(recorder: Recorder) -> None:
    client = await RawClient.connect(recorder.port)
    client.send(b"\x16\x03\x01\x00\xf4\x01\x00\x00\xf0\x03\x03" + bytes(32))
    [error] = errors_in(await client.until(m.ReadyForQuery))
    assert "direct TLS connections are not supported" in str(error.message)
    await client.close()


async def test_standalone_appends_one_json_line_per_exchange(pg: PgCluster,
                                                             tmp_path: Path) -> None:
    record = tmp_path / "pg.jsonl"
    ports: asyncio.Queue[int] = asyncio.Queue()
    task = asyncio.ensure_future(run_standalone(
        pg.url("scramuser", "scram-secret", sslmode="disable"), "127.0.0.1:0", str(record),
        on_listening=ports.put_nowait))
    try:
        port = await asyncio.wait_for(ports.get(), 10)
        conn = await asyncpg.connect(f"postgresql://scramuser@127.0.0.1:{port}/{pg.database}",
                                     ssl=False)
        assert await conn.fetchval("SELECT $1::int4 * 3", 5) == 15
        await conn.close()
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    docs = [json.loads(line) for line in record.read_text().splitlines()]
    exchanges = [Exchange.from_json(d) for d in docs]
    assert exchanges[0].lifetime is Lifetime.SESSION and b"scram-secret" not in b"".join(
        exchanges[0].client_frames + exchanges[0].server_frames)
    [query] = [e for e in exchanges if e.lifetime is Lifetime.REQUEST]
    assert query.request["params"] == [5] and query.response["rows"] == [[15]]
    assert query.client_frames and query.server_frames and docs[-1]["frames"]["client"]


async def test_terminate_closes_quietly(recorder: Recorder) -> None:
    client = await RawClient.connect(recorder.port)
    await client.startup()
    client.send(m.Terminate())
    assert await client.read_raw() == b""  # no error after a requested goodbye
    await client.close()


@pytest.mark.parametrize("garbage", [
    b"Q\x00\x00\x00\x02",  # length below 4
    b"Q\x7f\xff\xff\xff",  # length over the maximum
    b"\xff" * 16,  # unknown type byte
])
async def test_malformed_frames_after_startup(recorder: Recorder, garbage: bytes) -> None:
    client = await RawClient.connect(recorder.port)
    await client.startup()
    client.send(garbage)
    [error] = errors_in(await client.until(m.ReadyForQuery))
    assert error.sqlstate == "08P01" and str(error.message).startswith("invalid frontend message")
    assert await client.read_raw() == b""
    await client.close()
    conn = await asyncpg.connect(recorder.url(), ssl=False)  # the listener is unaffected
    assert await conn.fetchval("SELECT 7") == 7
    await conn.close()
