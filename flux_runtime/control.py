"""The loopback control channel between a worker's shim and the Python runtime.

The shim connects back (with `Deno.connect`, which replay permissions allow for this one port)
and speaks newline-delimited JSON, so per-request reports never touch the HTTP response.
Shim -> runtime: `hello`, `listening`, `no_server`, `primed`, `done`.
Runtime -> shim: `prime` (the recorded time/randomness values of a request, in replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from flux_server.records import ConsoleLine, DeterminismEntry, ErrorInfo

Message = dict[str, Any]

MAX_LINE = 64 * 1024 * 1024  # one report holds a request's whole console output


@dataclass(slots=True)
class ShimReport:
    """What the shim saw of one request; the HTTP front adds what it saw on the wire."""

    console: list[ConsoleLine] = field(default_factory=list)
    error: ErrorInfo | None = None
    determinism: list[DeterminismEntry] = field(default_factory=list)
    replayed: bool = False  # a replay log was primed for this request
    # per kind: real values handed out after the replay log ran out
    fallbacks: dict[str, int] = field(default_factory=dict)
    # per kind: recorded values the request never asked for
    unused: dict[str, int] = field(default_factory=dict)
    crashed: bool = False  # an uncaught error ended the worker while serving this request
    determinism_dropped: int = 0  # values observed past the shim's cap, not recorded

    @classmethod
    def from_message(cls, message: Message) -> ShimReport:
        error = message.get("error")
        return cls(
            console=[ConsoleLine(seq=int(c["seq"]), offset=float(c["offset"]),
                                 level=str(c["level"]), text=str(c["text"]))
                     for c in message.get("console") or []],
            error=ErrorInfo(name=str(error.get("name") or "Error"),
                            message=str(error.get("message") or ""),
                            stack=str(error.get("stack") or "")) if error else None,
            determinism=[DeterminismEntry(kind=str(d["kind"]), value=d["value"])
                         for d in message.get("determinism") or []],
            replayed=bool(message.get("replayed")),
            fallbacks={str(k): int(v) for k, v in (message.get("fallbacks") or {}).items()},
            unused={str(k): int(v) for k, v in (message.get("unused") or {}).items()},
            crashed=bool(message.get("crashed")),
            determinism_dropped=int(message.get("determinism_dropped") or 0),
        )


class ControlServer:
    """One loopback listener per worker slot; only the shim presenting the expected token
    (a fresh one per process start) is heard, so a dying process cannot speak for its successor.

    A plain asyncio Protocol: a report is handled in the callback that receives it, without
    waking a reader task, since one arrives for every request."""

    def __init__(self, on_message: Callable[[Message], None]) -> None:
        self._on_message = on_message
        self._server: asyncio.Server | None = None
        self._active: ShimConnection | None = None
        self._token: str | None = None
        self.port = 0

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: ShimConnection(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def expect(self, token: str) -> None:
        """Accept the next shim that says hello with this token; forget the previous one."""
        self._token = token
        if self._active is not None:
            self._active.close()
            self._active = None

    async def send(self, message: Message) -> None:
        active = self._active
        if active is None or active.transport is None or active.transport.is_closing():
            raise ConnectionError("the worker's shim is not connected")
        active.transport.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def close(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
            self.port = 0

    def line_received(self, connection: ShimConnection, line: bytes) -> None:
        try:
            message = orjson.loads(line)  # one report per request: the fast parser
        except ValueError:
            message = None  # never seen from the shim; not worth losing the worker over
        if connection is self._active:
            if isinstance(message, dict):
                self._on_message(message)
            return
        # the first line of a new connection must be the hello of the expected process
        if isinstance(message, dict) and message.get("type") == "hello" \
                and message.get("token") == self._token:
            self._active = connection
            self._on_message(message)
        else:
            connection.close()

    def connection_closed(self, connection: ShimConnection) -> None:
        if self._active is connection:
            self._active = None


class ShimConnection(asyncio.Protocol):
    """Splits the shim's byte stream into lines for its ControlServer."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > MAX_LINE:
            self.close()
            return
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = bytes(self._buffer[start:end])
            start = end + 1
            if line.strip():
                self.server.line_received(self, line)
        del self._buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connection_closed(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
