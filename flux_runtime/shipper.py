"""Ships finished executions and boot records to flux-server without ever blocking a request.

Records wait in memory for at most `flush_interval`, then go in one batch. A batch the server
does not acknowledge is written to the spool (`$FLUX_HOME/spool`) before anything else is
tried, and spooled batches are re-sent, oldest first, until acknowledged — also by the next
`flux serve` after a restart. The server's RecordBatch is idempotent by id, so a batch sent
twice (acknowledged, but the ack was lost) is never duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flux_server.records import BootRecord, Execution

log = logging.getLogger("flux.shipper")


Prepare = Callable[[Execution], Any]
"""Turns a record into what the server's write takes (store rows, a protobuf message)."""


@dataclass
class Batch:
    executions: list[Execution] = field(default_factory=list)
    boots: list[BootRecord] = field(default_factory=list)
    # id -> (its exchange count then, the prepared form), made as each execution came in
    prepared: dict[str, tuple[int, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.executions) + len(self.boots)

    def prepared_executions(self, prepare: Prepare) -> list[Any]:
        """Every execution in prepared form: the one made at submission, unless exchanges
        joined the record since (a query its handler did not await), or none was made."""
        forms = []
        for execution in self.executions:
            made = self.prepared.get(execution.id)
            if made is None or made[0] != len(execution.exchanges):
                made = (len(execution.exchanges), prepare(execution))
            forms.append(made[1])
        return forms


SendBatch = Callable[[Batch], Awaitable[None]]
"""Delivers a batch; raises when the server did not acknowledge it."""


class SpoolCodec:
    """How a batch is laid down on disk: the gRPC request's own protobuf bytes."""

    @staticmethod
    def encode(batch: Batch) -> bytes:
        from flux_server.convert import batch_to_proto

        return batch_to_proto(batch.executions, batch.boots).SerializeToString()

    @staticmethod
    def decode(data: bytes) -> Batch:
        from flux_server.convert import batch_from_bytes

        executions, boots = batch_from_bytes(data)
        return Batch(executions, boots)


class Spool:
    """Batches on disk, one file each, written atomically, named so they sort oldest first."""

    def __init__(self, directory: Path, codec: type[SpoolCodec] = SpoolCodec) -> None:
        self.directory = directory
        self.codec = codec
        directory.mkdir(parents=True, exist_ok=True)

    def put(self, batch: Batch) -> Path:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.batch"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(self.codec.encode(batch))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        final = self.directory / name
        tmp.rename(final)
        return final

    def pending(self) -> list[Path]:
        return sorted(self.directory.glob("*.batch"))

    def load(self, path: Path) -> Batch:
        return self.codec.decode(path.read_bytes())


class Shipper:
    def __init__(self, send: SendBatch, spool: Spool, *, flush_interval: float = 0.2,
                 max_batch: int = 500, retry_interval: float = 1.0,
                 on_sealed: Callable[[Batch], None] | None = None,
                 prepare: Prepare | None = None) -> None:
        self._send = send
        # Preparing each record as it comes spreads that work over the requests; preparing a
        # whole batch at flush time held up the requests in flight for tens of milliseconds.
        self._prepare = prepare
        self.spool = spool
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._retry_interval = retry_interval
        self._on_sealed = on_sealed  # told which records left memory, so nothing is added late
        self._pending = Batch()
        self._in_flight: Batch | None = None
        self._spooled = bool(spool.pending())  # skip the spool scan while nothing is there
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.sent = 0  # records acknowledged by the server, for tests and status lines

    def submit_execution(self, execution: Execution) -> None:
        self._pending.executions.append(execution)
        if self._prepare is not None:
            try:
                made = self._prepare(execution)
            except Exception as exc:  # prepared again when sent, where a failure is handled
                log.debug("flux: preparing execution %s failed (%s)", execution.id, exc)
            else:
                self._pending.prepared[execution.id] = (len(execution.exchanges), made)
        if len(self._pending) >= self._max_batch:
            self._wakeup.set()

    def submit_boot(self, boot: BootRecord) -> None:
        self._pending.boots.append(boot)
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="flux-shipper")

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is pending; spool whatever the server does not take within `timeout`,
        the batch being sent when time ran out included."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except Exception as exc:  # _run guards its steps; this is the last resort
                log.error("flux: the record shipper failed (%s)", exc)
        left = Batch()
        for batch in (self._in_flight, self._take()):
            if batch is not None:
                left.executions += batch.executions
                left.boots += batch.boots
        self._in_flight = None
        if len(left):
            await self._put(left)

    def _take(self) -> Batch:
        batch, self._pending = self._pending, Batch()
        if len(batch) and self._on_sealed is not None:
            self._on_sealed(batch)
        return batch

    async def _put(self, batch: Batch) -> None:
        """Spool a batch, off the event loop. A spool that cannot be written is said loudly."""
        try:
            await asyncio.to_thread(self.spool.put, batch)
        except OSError as exc:
            log.error("flux: could not spool %d records to %s (%s); they are lost",
                      len(batch), self.spool.directory, exc)
            return
        self._spooled = True

    async def _run(self) -> None:
        next_retry = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._flush_interval)
            self._wakeup.clear()
            try:
                if len(self._pending):
                    self._in_flight = self._take()
                    if not await self._deliver(self._in_flight):
                        await self._put(self._in_flight)
                        next_retry = time.monotonic() + self._retry_interval
                    self._in_flight = None
                if self._spooled and time.monotonic() >= next_retry \
                        and not await self._drain_spool():
                    next_retry = time.monotonic() + self._retry_interval
            except Exception as exc:  # one failed step must not stop shipping for good
                log.error("flux: record shipper step failed (%s); retrying", exc)
                if self._in_flight is not None:
                    self._pending.executions[:0] = self._in_flight.executions
                    self._pending.boots[:0] = self._in_flight.boots
                    self._pending.prepared.update(self._in_flight.prepared)
                    self._in_flight = None
                next_retry = time.monotonic() + self._retry_interval
            if self._closing and not len(self._pending):
                return

    async def _deliver(self, batch: Batch) -> bool:
        try:
            await self._send(batch)
        except Exception as exc:  # any failure means: not acknowledged, keep it
            log.warning("flux: record server did not take %d records (%s); spooled",
                        len(batch), exc)
            return False
        self.sent += len(batch)
        return True

    async def _drain_spool(self) -> bool:
        """Re-send spooled batches oldest first; False when the server still refuses."""
        paths = await asyncio.to_thread(self.spool.pending)
        for path in paths:
            try:
                batch = await asyncio.to_thread(self.spool.load, path)
            except FileNotFoundError:
                continue  # another flux serve sharing FLUX_HOME sent it
            except Exception as exc:
                # A file we cannot read is moved aside, never deleted: records are not lost.
                log.error("flux: unreadable spool file %s (%s); kept as .bad", path, exc)
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".bad"))
                continue
            if not await self._deliver(batch):
                return False
            path.unlink(missing_ok=True)
        self._spooled = False
        return True
