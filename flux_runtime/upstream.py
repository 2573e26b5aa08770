"""The front's side of a worker: one keep-alive HTTP/1.1 connection, parsed by httptools.

A worker serves one request at a time, so one connection per worker is all the front needs, and
a general-purpose client (pooling, cookies, redirects, auto headers) would only cost time on the
hot path. Requests are written as given; responses are parsed by httptools (llhttp).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import httptools

BODY_LOW_WATER = 4  # resume reading the worker once this few chunks wait for the client
BODY_HIGH_WATER = 16


class UpstreamError(ConnectionError):
    """The worker closed the connection or sent something that is not HTTP."""


@dataclass(slots=True)
class UpstreamResponse:
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    connection: WorkerConnection | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamError if the worker breaks off."""
        assert self.connection is not None
        async for chunk in self.connection.body():
            yield chunk

    def take_whole(self) -> bytes | None:
        """The whole body, if it has all arrived already (without a generator per request)."""
        return self.connection.take_whole() if self.connection is not None else None

    @property
    def complete(self) -> bool:
        """Every byte of the body has been handed out (or is in the chunk just yielded)."""
        return self.connection is not None and self.connection.drained


class WorkerConnection(asyncio.Protocol):
    """One request at a time over a persistent connection to one worker."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response = UpstreamResponse(connection=self)
        self._headers_done: asyncio.Future[UpstreamResponse] | None = None
        self._body: collections.deque[bytes] = collections.deque()
        self._body_event = asyncio.Event()
        self._complete = False
        self._error: Exception | None = None
        self._no_body = False
        self._reading_paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._body_writer: asyncio.Task[None] | None = None
        self.requests = 0  # sent on this connection so far
        self.closed = False
        self.host = ""
        self.port = 0

    @classmethod
    async def open(cls, host: str, port: int) -> WorkerConnection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        protocol.host, protocol.port = host, port
        return protocol

    @property
    def reusable(self) -> bool:
        """Open, idle, and not broken: fit for the next request."""
        idle = self._headers_done is None or self._complete
        body_sent = self._body_writer is None or (
            self._body_writer.done() and not self._body_writer.cancelled()
            and self._body_writer.exception() is None)
        return not self.closed and idle and body_sent and self._error is None

    @property
    def was_reused(self) -> bool:
        """The current request is not the first on this connection."""
        return self.requests > 1

    @property
    def answered(self) -> bool:
        """Bytes of a response to the current request have arrived."""
        return bool(self._response.status or self._response.headers or self._response.reason)

    @property
    def drained(self) -> bool:
        return self._complete and not self._body

    def close(self) -> None:
        self.closed = True
        if self._body_writer is not None and not self._body_writer.done():
            self._body_writer.cancel()
        if self._transport is not None:
            self._transport.close()

    # ---------------------------------------------------------------- request

    async def send(self, method: str, target: str, headers: Sequence[tuple[str, str]],
                   body: AsyncIterable[bytes] | bytes | None) -> UpstreamResponse:
        """Write the request (streaming its body) and return once the response headers are in.

        A streamed body of unknown length goes chunked; `headers` must not carry hop-by-hop
        fields. Call `chunks()` on the result to read the body.
        """
        self.requests += 1
        self._response = UpstreamResponse(connection=self)
        if self.closed or self._transport is None:
            raise UpstreamError("the connection to the worker is closed")
        loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._headers_done = loop.create_future()
        self._body.clear()
        self._complete = False
        self._no_body = method == "HEAD"
        if isinstance(body, bytes):  # its length is known: it wins over any recorded one
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
        lines = [f"{method} {target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers]
        if not any(name.lower() == "host" for name, _ in headers):
            lines.append(f"host: {self.host}:{self.port}")
        has_length = any(name.lower() == "content-length" for name, _ in headers)
        chunked = False
        if isinstance(body, bytes):
            if not has_length:
                lines.append(f"content-length: {len(body)}")
        elif body is not None and not has_length:
            lines.append("transfer-encoding: chunked")
            chunked = True
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if isinstance(body, bytes) or body is None:
            self._transport.write(head + (body or b""))
            self._body_writer = None
        else:
            # the app may answer before it has read the whole body: read both ways at once
            self._transport.write(head)
            self._body_writer = loop.create_task(self._write_body(body, chunked))
        try:
            return await self._headers_done
        except BaseException:
            if self._body_writer is not None:
                self._body_writer.cancel()
            raise

    async def _write_body(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        assert self._transport is not None
        async for chunk in body:
            if not chunk:
                continue
            self._transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await self._writable.wait()
            if self.closed:
                return
        if chunked:
            self._transport.write(b"0\r\n\r\n")

    def take_whole(self) -> bytes | None:
        if not self._complete:
            return None
        body = b"".join(self._body)
        self._body.clear()
        if self._reading_paused:
            self._reading_paused = False
            if self._transport is not None:
                self._transport.resume_reading()
        return body

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            while self._body:
                chunk = self._body.popleft()
                if self._reading_paused and len(self._body) <= BODY_LOW_WATER:
                    self._reading_paused = False
                    if self._transport is not None:
                        self._transport.resume_reading()
                yield chunk
            if self._complete:
                return
            self._raise_if_broken()
            self._body_event.clear()
            await self._body_event.wait()

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise self._error
        if self.closed and not self._complete:
            raise UpstreamError("the worker closed the connection mid-response")

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the worker sent malformed HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._complete:
            self._fail(UpstreamError("the worker closed the connection"
                                     + (f": {exc}" if exc else "")))
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        if self._headers_done is not None and not self._headers_done.done():
            self._headers_done.set_exception(error)
        self._body_event.set()

    # ---------------------------------------------------------------- httptools callbacks

    def on_status(self, reason: bytes) -> None:
        self._response.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._response.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._response.status = self._parser.get_status_code()
        if self._headers_done is not None and not self._headers_done.done():
            self._headers_done.set_result(self._response)
        if self._no_body:  # llhttp cannot know a HEAD response has no body
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._body_event.set()
        if len(self._body) >= BODY_HIGH_WATER and not self._reading_paused \
                and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._complete:
            return
        self._complete = True
        self._body_event.set()
        if not self._parser.should_keep_alive() and not self._no_body:
            self.close()
