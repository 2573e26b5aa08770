"""The async client of flux-server, used by the runtime's shipper and by the CLI.

Every failure is one of the exception types below, whose message is a single line the CLI can
print as is.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from flux_server.convert import (
    boot_from_proto,
    boot_to_proto,
    execution_from_proto,
    execution_to_proto,
    filter_to_proto,
    summary_from_proto,
)
from flux_server.filters import ExecutionFilter
from flux_server.gen import flux_pb2 as pb
from flux_server.gen import flux_pb2_grpc as pb_grpc
from flux_server.records import BootRecord, Execution, ExecutionSummary
from flux_server.store.base import Page, StoredCounts
from flux_server.wire import (
    AUTHENTICATION_FAILED,
    CANDIDATES_METADATA_KEY,
    DEFAULT_LISTEN,
    DEFAULT_MAX_MESSAGE_BYTES,
    SERVER_STOPPING,
    STORE_UNAVAILABLE_PREFIX,
    TAIL_FELL_BEHIND,
    TAIL_SUBSCRIBED,
    TOKEN_METADATA_KEY,
    bearer,
)

DEFAULT_TIMEOUT_SECONDS = 30.0
BATCH_BYTES = 8 * 1024 * 1024  # one RecordBatch call carries at most this much


class FluxClientError(Exception):
    """Base of the client's errors; the message is one line for the user."""


class ServerUnavailable(FluxClientError):
    """No server answers at the address (or it did not answer in time)."""


class RecordStoreUnavailable(ServerUnavailable):
    """The server answers but its record store is down; the message gives the reason."""


class AuthenticationFailed(FluxClientError):
    def __init__(self) -> None:
        super().__init__(AUTHENTICATION_FAILED)


class NotFound(FluxClientError):
    pass


class AmbiguousId(FluxClientError):
    def __init__(self, message: str, candidates: list[str]) -> None:
        super().__init__(message)
        self.candidates = candidates


class InvalidRequest(FluxClientError):
    """A bad id, filter or cursor."""


class MessageTooLarge(FluxClientError):
    pass


class TailFellBehind(FluxClientError):
    """The tail could not keep up; reconnecting starts a fresh one."""


def server_address(address: str | None = None) -> str:
    """DESIGN.md: `--server`, else FLUX_SERVER, else 127.0.0.1:50051."""
    return address or os.environ.get("FLUX_SERVER") or DEFAULT_LISTEN


class FluxClient:
    def __init__(self, address: str | None = None, *, token: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.address = server_address(address)
        token = token if token is not None else os.environ.get("FLUX_TOKEN") or None
        self._metadata = ((TOKEN_METADATA_KEY, bearer(token)),) if token else ()
        self._timeout = timeout
        self._channel = grpc.aio.insecure_channel(self.address, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # a restarted server is found again within ~2 s, not after gRPC's default
            # backoff of up to 2 minutes (the shipper and `flux tail` retry on their own)
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ])
        self._stub = pb_grpc.FluxStub(self._channel)

    async def __aenter__(self) -> FluxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def answers(self, timeout: float = 1.0) -> bool:
        """Whether a server accepts connections at the address (no call is made)."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except (TimeoutError, grpc.aio.AioRpcError):
            return False
        return True

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise self.translate(exc) from None

    def translate(self, exc: grpc.aio.AioRpcError) -> FluxClientError:
        """A status from the server (or from gRPC itself) as one of the client's errors."""
        return self.translate_status(exc.code(), exc.details(), exc.trailing_metadata())

    def translate_status(self, code: grpc.StatusCode, details: str | None,
                         trailing_metadata: Any) -> FluxClientError:
        details = (details or "").strip()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return AuthenticationFailed()
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFound(details)
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            trailing = dict(trailing_metadata or ())
            candidates = [c for c in str(trailing.get(CANDIDATES_METADATA_KEY, "")).split(",")
                          if c]
            return AmbiguousId(details, candidates)
        if code == grpc.StatusCode.UNAVAILABLE:
            if details.startswith(STORE_UNAVAILABLE_PREFIX):
                return RecordStoreUnavailable(details)
            if details == SERVER_STOPPING:
                return ServerUnavailable(f"flux server at {self.address} is stopping")
            return ServerUnavailable(f"no flux server answers at {self.address} (start one "
                                     "with `flux server`, or point FLUX_SERVER at one)")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ServerUnavailable(f"flux server at {self.address} did not answer in time")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            if details == TAIL_FELL_BEHIND:
                return TailFellBehind(details)
            return MessageTooLarge(f"message too large for flux server at {self.address}: "
                                   f"{details}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidRequest(details)
        return FluxClientError(f"flux server at {self.address}: {code.name.lower()}: {details}")

    async def record_batch(self, executions: Sequence[Execution],
                           boots: Sequence[BootRecord] = ()) -> StoredCounts:
        """Stores the records (idempotent by id), split into calls of at most BATCH_BYTES."""
        return await self.record_batch_proto([execution_to_proto(e) for e in executions],
                                             [boot_to_proto(b) for b in boots])

    async def record_batch_proto(self, executions: Sequence[pb.Execution],
                                 boots: Sequence[pb.BootRecord] = ()) -> StoredCounts:
        """`record_batch` for records already in protobuf form (`flux serve` converts each
        execution as its request finishes)."""
        stored = StoredCounts(0, 0)
        for request in _split_batch(list(executions), list(boots)):
            response = await self._unary(self._stub.RecordBatch, request)
            stored.executions += response.executions_stored
            stored.boots += response.boots_stored
        return stored

    async def list(self, flt: ExecutionFilter | None = None, *, limit: int = 50,
                   cursor: str | None = None) -> Page:
        """Newest first; pass the page's next_cursor to get the following page."""
        request = pb.ListRequest(filter=filter_to_proto(flt or ExecutionFilter()), limit=limit,
                                 cursor=cursor or "")
        response = await self._unary(self._stub.List, request)
        return Page([summary_from_proto(s) for s in response.executions],
                    response.next_cursor or None)

    async def get(self, id_or_prefix: str) -> Execution:
        response = await self._unary(self._stub.Get, pb.GetRequest(id=id_or_prefix))
        return execution_from_proto(response)

    async def get_boot(self, boot_id: str) -> BootRecord:
        response = await self._unary(self._stub.GetBoot, pb.GetBootRequest(id=boot_id))
        return boot_from_proto(response)

    def tail(self, flt: ExecutionFilter | None = None) -> TailStream:
        """New executions as they are stored: `async for summary in client.tail(...)`."""
        call = self._stub.Tail(pb.TailRequest(filter=filter_to_proto(flt or ExecutionFilter())),
                               metadata=self._metadata)
        return TailStream(self, call)


class TailStream:
    """An async iterator of summaries. `await stream.started()` returns once the server has
    subscribed it, so nothing stored after that is missed."""

    def __init__(self, client: FluxClient, call: Any) -> None:
        self._client = client
        self._call = call
        self._messages: AsyncIterator[Any] | None = None

    async def started(self) -> None:
        try:
            metadata = dict(await self._call.initial_metadata() or ())
        except grpc.aio.AioRpcError as exc:
            raise self._client.translate(exc) from None
        if metadata.get(TAIL_SUBSCRIBED[0][0]) != TAIL_SUBSCRIBED[0][1]:
            # the call ended before subscribing (e.g. refused); report why
            raise self._client.translate_status(await self._call.code(),
                                                await self._call.details(),
                                                await self._call.trailing_metadata())

    def __aiter__(self) -> TailStream:
        return self

    async def __anext__(self) -> ExecutionSummary:
        if self._messages is None:
            self._messages = self._call.__aiter__()
        try:
            message = await self._messages.__anext__()
        except grpc.aio.AioRpcError as exc:
            raise self._client.translate(exc) from None
        return summary_from_proto(message)

    def cancel(self) -> None:
        self._call.cancel()


def _split_batch(executions: list[pb.Execution],
                 boots: list[pb.BootRecord]) -> list[pb.RecordBatchRequest]:
    """Requests of at most BATCH_BYTES each (a single larger record goes alone)."""
    requests: list[pb.RecordBatchRequest] = []
    current = pb.RecordBatchRequest()
    size = 0
    for field, record in [("boots", b) for b in boots] + [("executions", e) for e in executions]:
        record_size = record.ByteSize()
        if size and size + record_size > BATCH_BYTES:
            requests.append(current)
            current, size = pb.RecordBatchRequest(), 0
        getattr(current, field).append(record)
        size += record_size
    if size or not requests:
        requests.append(current)
    return requests
