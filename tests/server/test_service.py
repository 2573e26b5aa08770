"""The gRPC API end to end, through the client, against real stores."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from flux_server.client import (
    AmbiguousId,
    AuthenticationFailed,
    FluxClient,
    InvalidRequest,
    MessageTooLarge,
    NotFound,
    RecordStoreUnavailable,
    ServerUnavailable,
)
from flux_server.filters import ExecutionFilter
from flux_server.records import ExecutionSummary, Outcome
from flux_server.server import FluxServer, ServerStartError, start_embedded_server
from flux_server.store.postgres import PostgresStore
from flux_server.store.sqlite import SqliteStore
from tests.server.conftest import fresh_database, pg_ctl
from tests.server.factory import make_boot, make_execution, make_failed_execution, with_prefix
from tests.services import PgCluster, free_port

DAY = 86400.0


async def test_records_round_trip_through_the_api(client: FluxClient) -> None:
    boot = make_boot()
    execution = make_execution(boot_id=boot.id, request_body=b"\x89PNG\r\n")
    counts = await client.record_batch([execution], [boot])
    assert (counts.executions, counts.boots) == (1, 1)
    assert (await client.record_batch([execution], [boot])).executions == 0
    assert await client.get(execution.id) == execution
    assert await client.get(execution.id[:8]) == execution
    assert await client.get_boot(boot.id) == boot


async def test_list_filters_and_pages_on_the_server(client: FluxClient) -> None:
    now = time.time()
    executions = [make_execution(started_at=now - i) for i in range(5)]
    failed = make_failed_execution("unique violation on orders_pkey", started_at=now - 100)
    await client.record_batch([*executions, failed])
    page = await client.list(limit=2)
    assert [s.id for s in page.executions] == [executions[0].id, executions[1].id]
    assert page.next_cursor is not None
    second = await client.list(limit=2, cursor=page.next_cursor)
    assert [s.id for s in second.executions] == [executions[2].id, executions[3].id]
    errors = await client.list(ExecutionFilter().with_status("error"))
    assert errors.executions == [ExecutionSummary.of(failed)]
    assert errors.next_cursor is None
    assert (await client.list(ExecutionFilter().with_status("5xx"))).executions[0].id == failed.id
    searched = await client.list(ExecutionFilter(search="ORDERS_PKEY", method="post"))
    assert [s.id for s in searched.executions] == [failed.id]
    assert (await client.list(ExecutionFilter(since=now - 50, outcome=Outcome.ERROR))
            ).executions == []
    with pytest.raises(InvalidRequest, match="cursor"):
        await client.list(cursor="garbage")


async def test_unknown_ambiguous_and_malformed_ids(client: FluxClient) -> None:
    twins = [make_execution(id=with_prefix("feedbeef")) for _ in range(2)]
    await client.record_batch(twins)
    with pytest.raises(AmbiguousId) as ambiguous:
        await client.get("feedbeef")
    assert sorted(ambiguous.value.candidates) == sorted(e.id for e in twins)
    assert all(e.id in str(ambiguous.value) for e in twins)
    with pytest.raises(NotFound):
        await client.get("0badc0de")
    with pytest.raises(NotFound):
        await client.get_boot("no-such-boot")
    with pytest.raises(InvalidRequest, match="prefix of 8"):
        await client.get("feed")
    with pytest.raises(InvalidRequest, match="malformed record"):
        await client.record_batch([make_execution(id="not-a-uuid")])


async def test_tail_streams_new_matching_executions(client: FluxClient) -> None:
    stream = client.tail(ExecutionFilter(status_class="5xx", search="deadlock"))
    await stream.started()
    wanted = make_failed_execution("deadlock detected", status=500)
    await client.record_batch([make_execution(), make_failed_execution("other", status=500),
                               wanted])
    async with asyncio.timeout(5):
        summary = await anext(stream)
    assert summary == ExecutionSummary.of(wanted)
    stream.cancel()


async def test_a_stopping_server_ends_tails_with_unavailable(tmp_path: Path) -> None:
    server = FluxServer(SqliteStore(tmp_path / "flux.db"), "127.0.0.1:0")
    await server.start()
    async with FluxClient(server.address) as client:
        stream = client.tail()
        await stream.started()
        await server.stop()
        with pytest.raises(ServerUnavailable, match="stopping"):
            async with asyncio.timeout(5):
                await anext(stream)


async def test_token_is_required_when_set(tmp_path: Path) -> None:
    secured = FluxServer(SqliteStore(tmp_path / "flux.db"), "127.0.0.1:0", token="s3cret")
    await secured.start()
    try:
        for token in ("", "wrong"):
            async with FluxClient(secured.address, token=token) as intruder:
                with pytest.raises(AuthenticationFailed, match=r"^authentication failed$"):
                    await intruder.record_batch([make_execution()])
                with pytest.raises(AuthenticationFailed):
                    await intruder.list()
                with pytest.raises(AuthenticationFailed):
                    await intruder.tail().started()
        async with FluxClient(secured.address, token="s3cret") as allowed:
            assert (await allowed.record_batch([make_execution()])).executions == 1
            assert len((await allowed.list()).executions) == 1
    finally:
        await secured.stop()


async def test_token_comes_from_the_environment(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX_TOKEN", "from-env")
    monkeypatch.setenv("FLUX_HOME", str(tmp_path))
    monkeypatch.delenv("FLUX_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@127.0.0.1:1/the_apps_own")
    embedded = await start_embedded_server("127.0.0.1:0")
    try:
        assert isinstance(embedded.store, SqliteStore)  # never the app's DATABASE_URL
        assert embedded.store.path == tmp_path / "flux.db"
        monkeypatch.setenv("FLUX_SERVER", embedded.address)
        async with FluxClient() as client:
            assert (await client.record_batch([make_execution()])).executions == 1
        async with FluxClient(token="") as anonymous:
            with pytest.raises(AuthenticationFailed):
                await anonymous.list()
    finally:
        await embedded.stop()


async def test_non_loopback_bind_needs_a_token(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="FLUX_TOKEN"):
        FluxServer(SqliteStore(tmp_path / "a.db"), "0.0.0.0:0")
    with pytest.raises(ServerStartError, match="FLUX_TOKEN"):
        FluxServer(SqliteStore(tmp_path / "a.db"), "flux.example.com:50051")
    allowed = FluxServer(SqliteStore(tmp_path / "b.db"), "0.0.0.0:0", token="t")
    await allowed.start()
    await allowed.stop()
    for loopback in ("localhost:0", "[::1]:0", "127.0.0.2:0"):
        FluxServer(SqliteStore(tmp_path / "c.db"), loopback)


async def test_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    first = FluxServer(SqliteStore(tmp_path / "a.db"), "127.0.0.1:0")
    await first.start()
    try:
        second = FluxServer(SqliteStore(tmp_path / "b.db"), first.address)
        with pytest.raises(ServerStartError, match=f"cannot listen on {first.address}"):
            await second.start()
    finally:
        await first.stop()


async def test_oversized_messages_get_a_clear_status(tmp_path: Path) -> None:
    small = FluxServer(SqliteStore(tmp_path / "flux.db"), "127.0.0.1:0",
                       max_message_bytes=64 * 1024)
    await small.start()
    try:
        async with FluxClient(small.address) as client:
            with pytest.raises(MessageTooLarge, match="larger than max"):
                await client.record_batch([make_execution(response_body=b"x" * 200_000)])
            assert (await client.record_batch([make_execution()])).executions == 1
    finally:
        await small.stop()


async def test_no_server_is_a_one_line_error() -> None:
    address = f"127.0.0.1:{free_port()}"
    async with FluxClient(address, timeout=2) as client:
        assert not await client.answers(timeout=0.2)
        with pytest.raises(ServerUnavailable, match=f"no flux server answers at {address}"):
            await client.list()


async def test_store_down_is_unavailable_and_the_server_recovers(own_pg: PgCluster) -> None:
    url = own_pg.url(database="postgres")
    pg_ctl(own_pg, "stop")
    server = FluxServer(PostgresStore(url), "127.0.0.1:0")
    await server.start()  # starts although its database is down
    assert server.store_error is not None and "unavailable" in server.store_error
    try:
        async with FluxClient(server.address) as client:
            with pytest.raises(RecordStoreUnavailable, match="record store unavailable"):
                await client.record_batch([make_execution()])
            pg_ctl(own_pg, "start")
            first = make_execution()
            assert (await client.record_batch([first])).executions == 1

            pg_ctl(own_pg, "stop")
            with pytest.raises(RecordStoreUnavailable, match=r"127\.0\.0\.1"):
                await client.get(first.id)
            with pytest.raises(RecordStoreUnavailable):
                await client.list()
            pg_ctl(own_pg, "start")
            assert await client.get(first.id) == first

            stream = client.tail()  # the NOTIFY listener reconnected by itself
            await stream.started()
            second = make_execution()
            await client.record_batch([second])
            async with asyncio.timeout(10):
                assert (await anext(stream)).id == second.id
            stream.cancel()
    finally:
        await server.stop()


async def test_shutdown_lets_an_in_flight_write_finish(pg: PgCluster) -> None:
    url = await fresh_database(pg)
    server = FluxServer(PostgresStore(url), "127.0.0.1:0")
    await server.start()
    batch = [make_execution() for _ in range(1500)]
    async with FluxClient(server.address) as client:
        sending = asyncio.create_task(client.record_batch(batch))
        async with asyncio.timeout(20):
            while not server.service._writes:
                await asyncio.sleep(0.001)
        await server.stop(grace=0)  # even with no grace, the write already started completes
        await asyncio.gather(sending, return_exceptions=True)
    store = PostgresStore(url)
    await store.open()
    try:
        page = await store.list(ExecutionFilter(), limit=1000)
        assert len(page.executions) == 1000 and page.next_cursor is not None
        rest = await store.list(ExecutionFilter(), limit=1000, cursor=page.next_cursor)
        assert len(rest.executions) == 500
    finally:
        await store.close()


async def test_server_applies_retention_at_start(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "flux.db")
    await store.open()
    now = time.time()
    old, recent = make_execution(started_at=now - 9 * DAY), make_execution(started_at=now)
    await store.record_batch([old, recent], [])
    await store.close()
    server = FluxServer(SqliteStore(tmp_path / "flux.db"), "127.0.0.1:0", retention=7 * DAY)
    await server.start()
    try:
        async with FluxClient(server.address) as client, asyncio.timeout(5):
            while len((await client.list()).executions) != 1:
                await asyncio.sleep(0.05)
            assert (await client.list()).executions[0].id == recent.id
    finally:
        await server.stop()


async def test_an_unusable_sqlite_file_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    server = FluxServer(SqliteStore(blocker / "flux.db"), "127.0.0.1:0")
    await server.start()
    try:
        assert server.store_error is not None and "not-a-directory" in server.store_error
        async with FluxClient(server.address) as client:
            with pytest.raises(RecordStoreUnavailable, match="cannot open"):
                await client.list()
            blocker.unlink()  # the problem goes away: the next call opens the store
            assert (await client.record_batch([make_execution()])).executions == 1
    finally:
        await server.stop()


@pytest.mark.parametrize("problem", ["wrong password", "no such database"])
async def test_a_misconfigured_database_is_a_reason_not_a_crash(pg: PgCluster,
                                                                problem: str) -> None:
    url = (pg.url(user="md5user", password="wrong") if problem == "wrong password"
           else pg.url(database="no_such_database"))
    server = FluxServer(PostgresStore(url), "127.0.0.1:0")
    await server.start()
    try:
        expected = "password" if problem == "wrong password" else "no_such_database"
        assert server.store_error is not None and expected in server.store_error
        async with FluxClient(server.address) as client:
            with pytest.raises(RecordStoreUnavailable, match=expected):
                await client.list()
    finally:
        await server.stop()


async def test_big_batches_are_split_into_calls_under_the_limit(tmp_path: Path) -> None:
    from flux_server.client import BATCH_BYTES, _split_batch
    from flux_server.convert import boot_to_proto, execution_to_proto

    big = [make_execution(response_body=b"x" * (1024 * 1024), response_truncated=True)
           for _ in range(10)]
    boot = make_boot()
    requests = _split_batch([execution_to_proto(e) for e in big], [boot_to_proto(boot)])
    assert len(requests) == 2 and all(r.ByteSize() <= BATCH_BYTES for r in requests)
    assert len(requests[0].boots) == 1  # boots go first, before executions that name them
    server = FluxServer(SqliteStore(tmp_path / "flux.db"), "127.0.0.1:0",
                        max_message_bytes=BATCH_BYTES + 1024)
    await server.start()
    try:
        async with FluxClient(server.address) as client:
            counts = await client.record_batch(big, [boot])
            assert (counts.executions, counts.boots) == (10, 1)
            assert await client.get(big[-1].id) == big[-1]
    finally:
        await server.stop()


async def test_a_client_finds_a_restarted_server_again(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    async with FluxClient(address, timeout=2) as client:
        for _ in range(3):  # let the channel fail a few times, growing its backoff
            with pytest.raises(ServerUnavailable):
                await client.list()
            await asyncio.sleep(0.2)
        server = FluxServer(SqliteStore(tmp_path / "flux.db"), address)
        await server.start()
        try:
            async with asyncio.timeout(5):
                while not await client.answers(timeout=0.5):
                    pass
            assert (await client.record_batch([make_execution()])).executions == 1
        finally:
            await server.stop()
