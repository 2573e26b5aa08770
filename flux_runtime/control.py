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
from typing import Any

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
        )


class ControlServer:
    """One loopback listener per worker slot; only the shim presenting the expected token
    (a fresh one per process start) is heard, so a dying process cannot speak for its successor."""

    def __init__(self, on_message: Callable[[Message], None]) -> None:
        self._on_message = on_message
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._token: str | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=MAX_LINE)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def expect(self, token: str) -> None:
        """Accept the next shim that says hello with this token; forget the previous one."""
        self._token = token
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def send(self, message: Message) -> None:
        writer = self._writer
        if writer is None:
            raise ConnectionError("the worker's shim is not connected")
        writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        await writer.drain()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
            self.port = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = json.loads(await reader.readline() or b"null")
            if not isinstance(hello, dict) or hello.get("type") != "hello" \
                    or hello.get("token") != self._token:
                writer.close()
                return
            self._writer = writer
            self._on_message(hello)
            while line := await reader.readline():
                if self._writer is not writer:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # never seen from the shim; not worth losing the worker over
                self._on_message(message)
        except (ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            return  # the loop is shutting down; asyncio's stream callback must not see it
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
