"""Moving one HTTP exchange between a client and a worker, keeping a capped copy of each body."""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_BODY_CAP = 1024 * 1024
EXECUTION_HEADER = "x-flux-execution-id"
REMOTE_HEADER = "x-flux-remote-addr"  # the client's address, for the app (stripped by the shim)
FLUX_REQUEST_HEADERS = frozenset({EXECUTION_HEADER, REMOTE_HEADER})

# Per-connection headers (RFC 9110 7.6.1): they describe one hop, never the message.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade", "expect",
})


def new_execution_id() -> str:
    """A random UUID v4 as `str(uuid.uuid4())` writes it, without building a UUID object
    (every request needs one)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 9562 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def end_to_end(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers that travel on to the next hop (also those named in `Connection`)."""
    named = {token.strip().lower() for name, value in headers if name.lower() == "connection"
             for token in value.split(",")}
    return [(name, value) for name, value in headers
            if name.lower() not in HOP_BY_HOP and name.lower() not in named]


class BodyCapture:
    """Keeps the first `cap` bytes of a streamed body for the record, and whether more passed."""

    def __init__(self, cap: int = DEFAULT_BODY_CAP) -> None:
        self.cap = cap
        self._chunks: list[bytes] = []
        self._kept = 0
        self.size = 0
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self.cap - self._kept
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[:max(room, 0)]
        if chunk:
            self._chunks.append(chunk)
            self._kept += len(chunk)

    @property
    def data(self) -> bytes:
        return b"".join(self._chunks)

    async def tee(self, source: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in source:
            self.feed(chunk)
            yield chunk


@dataclass(slots=True)
class IncomingRequest:
    """A request as the client sent it (headers in order, duplicates kept)."""

    method: str
    path: str  # raw (percent-encoded) path, without the query
    query: str = ""  # raw query string, without "?"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: AsyncIterable[bytes] | bytes | None = None
    remote: str | None = None  # the client's "host:port", which the app sees as its peer

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


class ResponseSink(Protocol):
    """Where the worker's response goes: the HTTP front's client, or a buffer (replay)."""

    started: bool

    async def start(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None: ...

    async def write(self, chunk: bytes) -> None: ...

    async def finish(self, tail: bytes = b"") -> None:
        """The response ends with `tail` (its last bytes, sent together with the end)."""
        ...

    async def abort(self) -> None: ...


class BufferSink:
    """Collects the whole response in memory: for the replay runner and tests."""

    def __init__(self) -> None:
        self.started = False
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self._chunks: list[bytes] = []
        self.complete = False

    async def start(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self.started = True
        self.status, self.reason, self.headers = status, reason, headers

    async def write(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    async def finish(self, tail: bytes = b"") -> None:
        if tail:
            self._chunks.append(tail)
        self.complete = True

    async def abort(self) -> None:
        self.complete = False

    @property
    def body(self) -> bytes:
        return b"".join(self._chunks)
