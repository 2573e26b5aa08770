"""The HTTP front: one asyncio Protocol per client connection, requests parsed by httptools.

Every request goes through the pool to one worker; the response is written back as the worker
framed it (the front adds only `x-flux-execution-id`, and chunking when the worker's framing
was hop-by-hop). A general-purpose server (aiohttp) built a request object, a response object
and a multidict of headers for each request and ran its own timers: on this path, which every
request takes, that was a sixth of the serving process's time. llhttp (through httptools)
does the parsing, so no HTTP parser is hand-written here.

HTTP/1.1 answers in order, so a connection serves its requests one after another; a pipelined
request waits for the one before it.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import http
import sys
import time
from collections.abc import AsyncIterator
from typing import cast

import httptools

from flux_runtime.pool import WorkerPool
from flux_runtime.relay import EXECUTION_HEADER, IncomingRequest, new_execution_id

MAX_FIELD = 64 * 1024  # bytes in the request target or in one header, as aiohttp allowed
BODY_HIGH_WATER = 1024 * 1024  # request body bytes held for a busy worker before reading stops
KEEP_ALIVE_TIMEOUT = 75.0  # seconds an idle client connection stays open, as aiohttp's
PIPELINE_HIGH_WATER = 8  # parsed requests waiting on one connection before reading stops
NO_BODY_STATUS = frozenset({204, 304})


def status_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class FrontStartError(RuntimeError):
    """The front could not listen (port in use, ...); the message is one line."""


class RequestTooLarge(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class RequestBody:
    """A request body as the client sends it, read by the worker's side as it arrives."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._arrived = asyncio.Event()
        self.complete = False
        self.broken = False
        self.discarding = False

    def feed(self, chunk: bytes) -> None:
        if self.discarding:
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._arrived.set()
        if self._buffered > BODY_HIGH_WATER:
            self._connection.hold_reading(self)

    def end(self) -> None:
        self.complete = True
        self._arrived.set()

    def discard(self) -> None:
        """Nobody reads the rest: drop what is held and what still comes."""
        self.discarding = True
        self._chunks.clear()
        self._buffered = 0
        self._connection.release_reading(self)

    def break_off(self) -> None:
        self.broken = True
        self._arrived.set()

    def whole(self) -> bytes:
        return b"".join(self._chunks)

    @property
    def empty(self) -> bool:
        return not self._chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= BODY_HIGH_WATER:
                    self._connection.release_reading(self)
                yield chunk
            if self.complete:
                return
            if self.broken:
                raise ConnectionResetError("the client closed the connection mid-body")
            self._arrived.clear()
            await self._arrived.wait()


class ParsedRequest:
    """What the parser has of one request so far."""

    __slots__ = (
        "body",
        "expects",
        "has_length",
        "head_bytes",
        "headers",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(self, connection: ClientConnection) -> None:
        self.method = ""
        self.target = b""
        self.headers: list[tuple[str, str]] = []
        self.version = "1.1"
        self.keep_alive = True
        self.body = RequestBody(connection)
        self.expects = False  # Expect: 100-continue
        self.has_length = False  # Content-Length given: the whole body can go in one write
        self.head_bytes = 0


class ClientConnection(asyncio.Protocol):
    """One client connection; also the pool's ResponseSink for the request being answered."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._parsing: ParsedRequest | None = None
        self._queue: collections.deque[ParsedRequest] = collections.deque()
        self._serving: asyncio.Task[None] | None = None
        self._held: set[object] = set()  # who asked reading to stop
        self._writable = asyncio.Event()
        self._writable.set()
        self.client_gone = False
        self.closing = False  # close once the current response is out
        self.last_read = time.monotonic()
        # the response being written
        self.started = False
        self._finished = False  # the response's last bytes are written
        self._head = b""
        self._chunked = False
        self._no_body = False
        self._keep_alive = True
        self._version = "1.1"
        self._current: ParsedRequest | None = None

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.remote = f"{peer[0]}:{peer[1]}"
        self.front.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades (WebSocket) are not relayed: the request is served as a plain one,
            # and the connection ends with its response.
            if self._queue:
                self._queue[-1].keep_alive = False
            self._stop_reading()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, RequestTooLarge):
                self._refuse(exc.__context__.status, exc.__context__.reason)
            else:
                self._refuse(400, "Bad Request", f"malformed request: {exc}")
            return
        self._serve_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_gone = True
        self.front.connections.discard(self)
        self._writable.set()
        for request in (self._parsing, *self._queue):
            if request is not None and not request.body.complete:
                request.body.break_off()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ---------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self._parsing = ParsedRequest(self)

    def on_url(self, url: bytes) -> None:
        request = self._parsing
        assert request is not None
        request.target += url
        if len(request.target) > MAX_FIELD:
            raise RequestTooLarge(414, "URI Too Long")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._parsing
        assert request is not None
        request.head_bytes += len(name) + len(value)
        if len(name) + len(value) > MAX_FIELD or request.head_bytes > 16 * MAX_FIELD:
            raise RequestTooLarge(431, "Request Header Fields Too Large")
        text = name.decode("latin-1")
        request.headers.append((text, value.decode("latin-1")))
        lowered = text.lower()
        if lowered == "content-length":
            request.has_length = True
        elif lowered == "expect" and value.lower() == b"100-continue":
            request.expects = True

    def on_headers_complete(self) -> None:
        request = self._parsing
        assert request is not None
        request.method = self._parser.get_method().decode("ascii")
        request.version = self._parser.get_http_version()
        request.keep_alive = self._parser.should_keep_alive()
        self._queue.append(request)
        if len(self._queue) >= PIPELINE_HIGH_WATER:
            self.hold_reading("pipeline")

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.body.feed(body)

    def on_message_complete(self) -> None:
        request, self._parsing = self._parsing, None
        if request is not None:
            request.body.end()
            if request.body.discarding:  # the rest of a body its app did not wait for
                self._close()

    # ---------------------------------------------------------------- serving

    def _serve_next(self) -> None:
        if self._serving is None and self._queue and not self.closing:
            request = self._queue.popleft()
            self.release_reading("pipeline")
            self._serving = asyncio.get_running_loop().create_task(self._serve(request))

    async def _serve(self, parsed: ParsedRequest) -> None:
        path, _, query = parsed.target.decode("latin-1").partition("?")
        body = parsed.body
        if parsed.expects and parsed.version == "1.1" and not body.complete:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request_body: RequestBody | bytes | None = body  # streamed, chunked as it was sent
        if body.complete and parsed.has_length:
            request_body = body.whole()  # its length is known: one write to the worker
        elif body.complete and body.empty:
            request_body = None
        self._start_response(parsed)
        execution_id = new_execution_id()
        request = IncomingRequest(method=parsed.method, path=path, query=query,
                                  headers=parsed.headers, body=request_body, remote=self.remote)
        try:
            await self.front.pool.serve(request, self, execution_id=execution_id, shield=False)
        except Exception as exc:  # a bug in Flux or in a hook: still one clear answer
            sys.stderr.write(f"flux: internal error serving {parsed.method} {path} "
                             f"({execution_id}): {type(exc).__name__}: {exc}\n")
            if not self.started:
                text = f"flux: internal error: {exc}\n".encode()
                await self.start(500, "Internal Server Error",
                                 [("content-type", "text/plain; charset=utf-8"),
                                  ("content-length", str(len(text))),
                                  (EXECUTION_HEADER, execution_id)])
                await self.finish(text)
            elif not self._finished:  # a response cut short must not pass for a whole one
                await self.abort()
        self._serving = None
        if not parsed.body.complete:
            # The app answered before the body ended. Closing now, with the client still
            # sending, would reset the connection and could lose the answer: the rest of the
            # body is read and dropped, and the connection closes at its end.
            parsed.body.discard()
        elif not self._keep_alive or self.closing:
            self._close()
        else:
            self._serve_next()

    def _start_response(self, parsed: ParsedRequest) -> None:
        self._current = parsed
        self.started = False
        self._finished = False
        self._head = b""
        self._chunked = False
        self._no_body = parsed.method == "HEAD"
        self._keep_alive = parsed.keep_alive
        self._version = parsed.version

    # ---------------------------------------------------------------- ResponseSink

    async def start(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        """The head leaves with the first body bytes: one send for a small response."""
        self.started = True
        if self._current is not None and not self._current.body.complete:
            self._keep_alive = False  # answered mid-upload: the connection ends with it
        no_body = self._no_body or status in NO_BODY_STATUS or status < 200
        framed = no_body or any(name.lower() == "content-length" for name, _ in headers)
        lines = [f"HTTP/{self._version} {status} {reason or status_phrase(status)}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if not framed:
            if self._version == "1.1":
                self._chunked = True
                lines.append("transfer-encoding: chunked")
            else:  # an HTTP/1.0 client learns where the body ends from the close
                self._keep_alive = False
        if not self._keep_alive or self.closing:
            self._keep_alive = False
            lines.append("connection: close")
        elif self._version == "1.0":
            lines.append("connection: keep-alive")
        self._no_body = no_body
        self._head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def write(self, chunk: bytes) -> None:
        if not chunk and not self._head:
            return
        self._write(self._framed(chunk))
        if not self._writable.is_set() and not self.client_gone:
            await self._writable.wait()  # a slow client: the worker's side waits with it

    async def finish(self, tail: bytes = b"") -> None:
        data = self._framed(tail)
        if self._chunked and not self._no_body:
            data += b"0\r\n\r\n"
        self._write(data)
        self._finished = True

    async def abort(self) -> None:
        """The worker broke mid-response: the client must not take a partial body as whole."""
        self._keep_alive = False
        if self.transport is not None:
            self.transport.abort()
        self.client_gone = True

    def _framed(self, chunk: bytes) -> bytes:
        head, self._head = self._head, b""
        if not chunk or self._no_body:
            return head
        if self._chunked:
            return b"%s%x\r\n%s\r\n" % (head, len(chunk), chunk)
        return head + chunk if head else chunk

    def _write(self, data: bytes) -> None:
        if data and not self.client_gone and self.transport is not None:
            self.transport.write(data)

    # ---------------------------------------------------------------- flow control, closing

    def hold_reading(self, holder: object) -> None:
        if not self._held and self.transport is not None and not self.client_gone:
            self.transport.pause_reading()
        self._held.add(holder)

    def release_reading(self, holder: object) -> None:
        if holder in self._held:
            self._held.discard(holder)
            if not self._held and self.transport is not None and not self.client_gone:
                self.transport.resume_reading()

    def _stop_reading(self) -> None:
        self.closing = True
        self.hold_reading("closing")

    def _refuse(self, status: int, reason: str, text: str = "") -> None:
        """A request the front cannot parse: answered here (no worker sees it), then closed."""
        body = (text or reason).encode() + b"\n"
        self._stop_reading()
        self._queue.clear()
        if self._serving is None:
            self._write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                        % (status, reason.encode(), len(body), body))
            self._close()

    def close_when_idle(self) -> None:
        """Shutdown: an idle connection closes now, a busy one after its response."""
        self.closing = True
        if self._serving is None:
            self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    @property
    def serving(self) -> asyncio.Task[None] | None:
        return self._serving

    def close_if_idle_since(self, cutoff: float) -> None:
        """Keep-alive timeout: nothing served and nothing read since `cutoff` (a client that
        went quiet, or one trickling a request head)."""
        if self._serving is None and not self._queue and self.last_read < cutoff:
            self._close()


class Front:
    """Listens on host:port and hands every request to the pool (which queues when all workers
    are busy: waiting for a worker is the backpressure)."""

    def __init__(self, pool: WorkerPool, *, host: str = "127.0.0.1", port: int = 8000,
                 shutdown_timeout: float = 30.0,
                 keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self.shutdown_timeout = shutdown_timeout
        self.connections: set[ClientConnection] = set()
        self.keep_alive_timeout = keep_alive_timeout
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: ClientConnection(self),
                                                    self.host, self.port, reuse_address=True)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise FrontStartError(f"port {self.port} on {self.host} is already in use") from exc
            raise FrontStartError(f"cannot listen on {self.host}:{self.port}: "
                                  f"{exc.strerror or exc}") from exc
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.create_task(self._close_idle_connections())

    async def _close_idle_connections(self) -> None:
        """One sweep every few seconds rather than a timer per request."""
        while True:
            await asyncio.sleep(min(10.0, self.keep_alive_timeout / 2))
            cutoff = time.monotonic() - self.keep_alive_timeout
            for connection in list(self.connections):
                connection.close_if_idle_since(cutoff)

    async def stop(self) -> None:
        """Stop accepting, close idle keep-alive connections (busy ones after their response),
        and let in-flight requests finish, for up to shutdown_timeout."""
        if self._server is None:
            return
        self._server.close()
        self._server = None
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.close_when_idle()
        busy = [c.serving for c in self.connections if c.serving is not None]
        if busy:
            await asyncio.wait(busy, timeout=self.shutdown_timeout)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
