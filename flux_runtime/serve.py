"""`flux serve`: the worker pool, per-worker recording proxies, the HTTP front and the shipper,
wired together for one app."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flux_proxy.urls import BadUpstreamURL, discover_upstreams, proxy_url, redact
from flux_runtime.front import Front
from flux_runtime.pool import DEFAULT_WORKERS, PoolHooks, WorkerPool
from flux_runtime.preparer import RecordPreparer, pack
from flux_runtime.recorder import SlotRecorder
from flux_runtime.shipper import Batch, Prepare, Shipper, Spool
from flux_runtime.worker import WorkerSlotSettings
from flux_server.client import FluxClient, server_address
from flux_server.convert import boot_to_proto, execution_to_proto
from flux_server.records import Execution, Outcome


class ServeError(Exception):
    """A reason `flux serve` cannot run, as one line."""


def flux_home() -> Path:
    return Path(os.environ.get("FLUX_HOME") or Path.home() / ".flux")


@dataclass
class ServeOptions:
    app: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = DEFAULT_WORKERS
    server: str | None = None
    sample: float = 1.0
    deno_args: Sequence[str] = ()
    echo_output: bool = True


def check_upstreams(env: dict[str, str]) -> dict[str, str]:
    upstreams = discover_upstreams(env)
    for var, url in upstreams.items():
        try:
            proxy_url(url, "127.0.0.1", 1)
        except (BadUpstreamURL, ValueError) as exc:
            raise ServeError(f"bad upstream URL in {var}: {redact(url)} ({exc})") from None
    return upstreams


class Runtime:
    """One `flux serve` process."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.app = Path(options.app).expanduser().absolute()
        self.upstreams: dict[str, str] = {}
        self.slots: list[SlotRecorder] = []
        self.client: FluxClient | None = None
        self.embedded: Any = None
        self.shipper: Shipper | None = None
        self.preparer: RecordPreparer | None = None
        self.pool: WorkerPool | None = None
        self.front: Front | None = None

    async def start(self) -> None:
        if not self.app.is_file():
            raise ServeError(f"app file not found: {self.app}")
        self.upstreams = check_upstreams(dict(os.environ))
        await self._connect_server()
        assert self.client is not None
        client = self.client

        prepare: Prepare
        if self.embedded is not None:  # in this process: no gRPC hop on the serving loop
            service = self.embedded.service
            preparer = self.preparer = RecordPreparer()
            preparer.start()
            prepare = pack

            async def send(batch: Batch) -> None:
                await service.record_local(await preparer.prepare(batch), batch.boots)
        else:
            prepare = execution_to_proto

            async def send(batch: Batch) -> None:
                await client.record_batch_proto(batch.prepared_executions(prepare),
                                                [boot_to_proto(b) for b in batch.boots])

        def sealed(batch: Batch) -> None:
            ids = {e.id for e in batch.executions}
            for slot in self.slots:
                slot.sealed(ids)

        self.shipper = Shipper(send, Spool(flux_home() / "spool"), on_sealed=sealed,
                               prepare=prepare)
        self.shipper.start()
        self.slots = [SlotRecorder(i, self.upstreams) for i in range(self.options.workers)]
        for slot in self.slots:
            await slot.start()
        self.pool = WorkerPool(
            self.app, workers=self.options.workers, deno_args=self.options.deno_args,
            worker_settings=lambda i: WorkerSlotSettings(env=self.slots[i].env()),
            echo_output=self.options.echo_output, hooks=self._hooks())
        self.front = Front(self.pool, host=self.options.host, port=self.options.port)
        await self.front.start()  # first, so a port in use fails before Deno starts
        await self.pool.start()

    async def _connect_server(self) -> None:
        address = server_address(self.options.server)
        self.client = FluxClient(address)
        if await self.client.answers(timeout=1.0):
            return
        from flux_server.server import start_embedded_server

        await self.client.close()  # its channel is in backoff after the failed attempt
        self.embedded = await start_embedded_server(address)
        self.client = FluxClient(address)
        print(f"flux: no record server answered at {address}; started an embedded one "
              f"({self.embedded.store.description})", file=sys.stderr, flush=True)

    def _hooks(self) -> PoolHooks:
        redacted = {var: redact(url) for var, url in self.upstreams.items()}  # once per serve

        def ship_boot(slot: SlotRecorder) -> None:
            """The boot record goes with the worker's first execution, not at readiness: a
            driver that connects in the background (ioredis's INFO ready check) is often
            still talking when the app starts listening, and that IO belongs to start-up.
            IO between requests follows with later executions, as new parts of the record."""
            part = slot.unshipped_boot()
            if part is not None and self.shipper is not None:
                self.shipper.submit_boot(part)

        def starting(worker: Any) -> None:
            slot = self.slots[worker.index]
            if slot.boot_used:
                ship_boot(slot)  # a process that died on its first request still had a boot
            slot.new_boot(worker.boot_id, worker.id, str(self.app))

        def before(worker: Any, execution_id: str) -> None:
            slot = self.slots[worker.index]
            slot.boot_used = True  # an execution will name this boot
            slot.tag(execution_id)

        def after(worker: Any, execution: Execution) -> None:
            slot = self.slots[worker.index]
            slot.tag(None)
            execution.exchanges = slot.take(execution.id)
            if execution.boot_id == (slot.boot.id if slot.boot else None):
                ship_boot(slot)
            # execution.boot_id is the pool's: the process that took the request. Reading
            # worker.boot_id here would name its successor when the worker crashed mid-request.
            execution.upstreams = dict(redacted)

        def finished(execution: Execution) -> None:
            if self.shipper is None:
                return
            if execution.outcome is Outcome.OK and random.random() >= self.options.sample:
                return  # --sample: errors and 5xx are always kept
            self.shipper.submit_execution(execution)

        return PoolHooks(worker_starting=starting, before_dispatch=before,
                         after_completion=after, on_execution=finished)

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests, flush records, stop workers."""
        if self.front is not None:
            await self.front.stop()
        if self.pool is not None:
            await self.pool.stop()
        for slot in self.slots:
            await slot.close()
            part = slot.unshipped_boot() if slot.boot_used else None
            if part is not None and self.shipper is not None:
                self.shipper.submit_boot(part)  # IO after the worker's last request
        if self.shipper is not None:
            await self.shipper.close()
        if self.preparer is not None:
            await self.preparer.close()
        if self.client is not None:
            await self.client.close()
        if self.embedded is not None:
            await self.embedded.stop()


async def serve_forever(options: ServeOptions) -> None:
    runtime = Runtime(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Ctrl-C must work while workers are still starting (npm downloads can take minutes).
        starting = asyncio.ensure_future(runtime.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return
        stopping.cancel()
        starting.result()  # a start error propagates as the one-line error it is
        assert runtime.front is not None
        print(f"flux: serving {runtime.app} on http://{options.host}:{runtime.front.port} "
              f"({options.workers} workers)", flush=True)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await runtime.stop()
