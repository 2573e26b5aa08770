"""The record shipper keeps records through a hung server, a spool shared by two serves, and
its own shutdown: nothing is lost without a word."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from flux_runtime.shipper import Batch, Shipper, Spool
from flux_server.client import FluxClient
from flux_server.server import build_server
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
