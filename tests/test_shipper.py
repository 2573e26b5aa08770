"""The record shipper keeps records through a hung server, a spool shared by two serves, and
its own shutdown: nothing is lost without a word."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from flux_runtime.shipper import Batch, Shipper, Spool
from flux_server.client import FluxClient
from flux_server.records import Execution
from flux_server.server import build_server
from flux_server.store.rows import PreparedExecution, prepare_execution
from tests.server.factory import make_execution
from tests.services import free_port


def send_with(client: FluxClient):  # type: ignore[no-untyped-def]
    async def send(batch: Batch) -> None:
        await client.record_batch(batch.executions, batch.boots)

    return send


async def test_close_spools_the_batch_a_hung_server_is_holding(tmp_path: Path) -> None:
    hung = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks HTTP/2
    address = f"127.0.0.1:{hung.getsockname()[1]}"
    spool = Spool(tmp_path / "spool")
    async with FluxClient(address) as client:
        shipper = Shipper(send_with(client), spool, flush_interval=0.05)
        shipper.start()
        execution = make_execution()
        shipper.submit_execution(execution)
        await asyncio.sleep(0.5)  # the batch is now in flight, waiting on the server
        await shipper.close(timeout=0.5)
    hung.close()
    batches = [spool.load(path) for path in spool.pending()]
    assert [e.id for b in batches for e in b.executions] == [execution.id]


async def test_two_shippers_draining_one_spool_lose_nothing(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spooled = make_execution()
    Spool(spool_dir).put(Batch([spooled]))  # left by an earlier flux serve
    server = build_server(None, f"127.0.0.1:{free_port()}", sqlite_path=tmp_path / "flux.db")
    await server.start()
    try:
        async with FluxClient(server.address) as client:
            shippers = [Shipper(send_with(client), Spool(spool_dir), flush_interval=0.05)
                        for _ in range(2)]
            for shipper in shippers:
                shipper.start()
            later = [make_execution(), make_execution()]
            await asyncio.sleep(0.3)  # both drained the same file; one found it gone
            for shipper, execution in zip(shippers, later, strict=True):
                shipper.submit_execution(execution)
            for shipper in shippers:
                await shipper.close()
            for execution in [spooled, *later]:
                assert (await client.get(execution.id)).id == execution.id
            assert not list(spool_dir.glob("*.batch"))
    finally:
        await server.stop()


async def test_sealed_batches_are_announced(tmp_path: Path) -> None:
    sealed: list[str] = []
    shipper = Shipper(lambda batch: asyncio.sleep(0), Spool(tmp_path / "spool"),
                      flush_interval=0.05,
                      on_sealed=lambda batch: sealed.extend(e.id for e in batch.executions))
    shipper.start()
    execution = make_execution()
    shipper.submit_execution(execution)
    await shipper.close()
    assert sealed == [execution.id]


async def test_records_are_prepared_as_they_come_and_again_if_they_grew(tmp_path: Path) -> None:
    """The embedded server's path: each execution becomes store rows when submitted, and the
    rows reach the store; one whose exchanges grew afterwards (a late exchange) is redone,
    and one whose preparation failed at submission is prepared when sent."""
    server = build_server(None, f"127.0.0.1:{free_port()}", sqlite_path=tmp_path / "flux.db")
    await server.start()
    prepared_ids: list[str] = []
    refuse = {"id": ""}

    def prepare(execution: Execution) -> PreparedExecution:
        if execution.id == refuse["id"]:
            raise ValueError("not now")
        prepared_ids.append(execution.id)
        return prepare_execution(execution)

    async def send(batch: Batch) -> None:
        await server.service.record_local(batch.prepared_executions(prepare), batch.boots)

    try:
        shipper = Shipper(send, Spool(tmp_path / "spool"), flush_interval=3600, prepare=prepare)
        shipper.start()
        plain, grown, refused = make_execution(), make_execution(), make_execution()
        refuse["id"] = refused.id
        for execution in (plain, grown, refused):
            shipper.submit_execution(execution)
        assert prepared_ids == [plain.id, grown.id]  # at submission, not at the flush
        late = grown.exchanges[0]
        grown.exchanges.append(late)
        refuse["id"] = ""
        await shipper.close()
        assert prepared_ids == [plain.id, grown.id, grown.id, refused.id]
        async with FluxClient(server.address) as client:
            for execution in (plain, grown, refused):
                assert await client.get(execution.id) == execution
    finally:
        await server.stop()
