"""The gRPC servicer: authentication, translation of store outcomes into status codes.

Status codes the clients rely on (see flux_server/client.py):
UNAUTHENTICATED `authentication failed`; NOT_FOUND for an unknown id; FAILED_PRECONDITION for
an ambiguous prefix, with the candidates in the message and in trailing metadata
`flux-candidates`; INVALID_ARGUMENT for a bad id, filter or cursor; UNAVAILABLE with the
reason when the record store is down; RESOURCE_EXHAUSTED for an oversized message (gRPC's own
limit) or a tail that fell too far behind.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import NoReturn, TypeVar

import grpc

from flux_server.convert import (
    boot_to_proto,
    execution_to_proto,
    filter_from_proto,
    summary_to_proto,
)
from flux_server.filters import ExecutionFilter, FilterError
from flux_server.gen import flux_pb2 as pb
from flux_server.gen import flux_pb2_grpc as pb_grpc
from flux_server.ingest import MalformedRecord, prepare_batch_proto
from flux_server.records import BootRecord
from flux_server.store import (
    AmbiguousPrefix,
    InvalidCursor,
    InvalidId,
    InvalidRecord,
    Store,
    StoredCounts,
    StoreUnavailable,
)
from flux_server.store.rows import PreparedExecution, prepare_boot
from flux_server.wire import (
    AUTHENTICATION_FAILED,
    CANDIDATES_METADATA_KEY,
    SERVER_STOPPING,
    STORE_UNAVAILABLE_PREFIX,
    TAIL_FELL_BEHIND,
    TAIL_SUBSCRIBED,
    TOKEN_METADATA_KEY,
    bearer,
)

log = logging.getLogger("flux.server")

T = TypeVar("T")



class FluxService(pb_grpc.FluxServicer):
    def __init__(self, store: Store, token: str | None = None) -> None:
        self.store = store
        self._expected = bearer(token).encode() if token else None
        self._writes: set[asyncio.Task[object]] = set()

    # -- helpers ---------------------------------------------------------------------------

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        if self._expected is None:
            return
        given = dict(context.invocation_metadata() or ()).get(TOKEN_METADATA_KEY, "")
        given_bytes = given.encode() if isinstance(given, str) else given
        if not hmac.compare_digest(given_bytes, self._expected):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, AUTHENTICATION_FAILED)

    async def _store_call(self, context: grpc.aio.ServicerContext, call: Awaitable[T]) -> T:
        """Awaits a store operation, turning what it raises into a status."""
        try:
            return await call
        except StoreUnavailable as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE,
                        f"{STORE_UNAVAILABLE_PREFIX}: {exc}")
        except AmbiguousPrefix as exc:
            context.set_trailing_metadata(((CANDIDATES_METADATA_KEY, ",".join(exc.candidates)),))
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (InvalidId, InvalidCursor, InvalidRecord, FilterError) as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:  # a bug or a database error we did not foresee: one line
            log.error("%s: %s", type(exc).__name__, exc)
            await abort(context, grpc.StatusCode.INTERNAL, f"internal error: {exc}")

    def _shielded_write(self, call: Awaitable[T]) -> asyncio.Future[T]:
        """A write runs to its end even if the client goes away or the server stops, so a
        batch is either stored whole or not at all; `drain` waits for these."""
        task: asyncio.Task[T] = asyncio.ensure_future(call)
        self._writes.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._write_done)  # type: ignore[arg-type]
        return asyncio.shield(task)

    def _write_done(self, task: asyncio.Task[object]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # the caller may have gone away; the client retries, and ids keep that safe
            log.debug("write failed: %s", task.exception())

    async def drain(self) -> None:
        """Waits for in-flight writes (graceful shutdown)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    # -- RPCs ------------------------------------------------------------------------------

    async def RecordBatch(self, request: pb.RecordBatchRequest,
                          context: grpc.aio.ServicerContext) -> pb.RecordBatchResponse:
        await self._authenticate(context)
        try:
            executions, boots = prepare_batch_proto(request)
        except MalformedRecord as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed record: {exc}")
        counts = await self._store_call(
            context, self._shielded_write(self.store.record_prepared(executions, boots)))
        return pb.RecordBatchResponse(executions_stored=counts.executions,
                                      boots_stored=counts.boots)

    async def record_local(self, executions: Sequence[PreparedExecution],
                           boots: Sequence[BootRecord]) -> StoredCounts:
        """RecordBatch for a caller in this process (`flux serve`'s embedded server): the same
        store write, without protobuf and loopback gRPC on the serving process's path. The
        executions come as rows (`rows.prepare_execution`), which the runtime makes one by one
        as requests finish."""
        return await self._shielded_write(self.store.record_prepared(
            list(executions), [prepare_boot(b) for b in boots]))

    async def List(self, request: pb.ListRequest,
                   context: grpc.aio.ServicerContext) -> pb.ListResponse:
        await self._authenticate(context)
        flt = await self._filter(request.filter, context)
        page = await self._store_call(
            context, self.store.list(flt, request.limit, request.cursor or None))
        return pb.ListResponse(executions=[summary_to_proto(s) for s in page.executions],
                               next_cursor=page.next_cursor or "")

    async def Get(self, request: pb.GetRequest,
                  context: grpc.aio.ServicerContext) -> pb.Execution:
        await self._authenticate(context)
        execution = await self._store_call(context, self.store.get(request.id))
        if execution is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no execution {request.id}")
        return execution_to_proto(execution)

    async def GetBoot(self, request: pb.GetBootRequest,
                      context: grpc.aio.ServicerContext) -> pb.BootRecord:
        await self._authenticate(context)
        boot = await self._store_call(context, self.store.get_boot(request.id))
        if boot is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"no boot record {request.id}")
        return boot_to_proto(boot)

    async def Tail(self, request: pb.TailRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ExecutionSummary]:
        await self._authenticate(context)
        flt = await self._filter(request.filter, context)
        subscription = self.store.subscribe()
        try:
            await self.store.ready_for_tail()
            await context.send_initial_metadata(TAIL_SUBSCRIBED)  # the client knows it is on
            async for summary in subscription:
                if not flt.matches(summary):
                    continue
                if flt.search is not None:
                    matches = await self._store_call(
                        context, self.store.search_matches([summary.id], flt.search))
                    if summary.id not in matches:
                        continue
                yield summary_to_proto(summary)
        finally:
            subscription.close()
        if subscription.lagged:
            await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, TAIL_FELL_BEHIND)
        # the subscription only ends otherwise when the server stops: tell the client to retry
        await abort(context, grpc.StatusCode.UNAVAILABLE, SERVER_STOPPING)

    @staticmethod
    async def _filter(message: pb.ExecutionFilter,
                      context: grpc.aio.ServicerContext) -> ExecutionFilter:
        try:
            return filter_from_proto(message)
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"bad filter: {exc}")


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode,
                details: str) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("context.abort returned")  # it raises; this tells the type checker
