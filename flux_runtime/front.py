"""The HTTP front: aiohttp accepts client requests and streams each one through a worker."""

from __future__ import annotations

import errno
import sys
import uuid

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from flux_runtime.pool import WorkerPool
from flux_runtime.relay import EXECUTION_HEADER, IncomingRequest

READ_CHUNK = 64 * 1024


class FrontStartError(RuntimeError):
    """The front could not listen (port in use, ...); the message is one line."""


class RelayedResponse(web.StreamResponse):
    """A StreamResponse that adds nothing the app did not send.

    aiohttp fills in `Server` and a default `Content-Type` when preparing headers; the client
    must see the app's headers, so those are removed again unless the app sent them.
    """

    # Headers leave with the first body bytes: one send instead of two for small responses.
    _send_headers_immediately = False

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        super().__init__(status=status, reason=reason or None)
        sent = {name.lower() for name, _ in headers}
        self._added_by_aiohttp = [name for name in ("Server", "Content-Type")
                                  if name.lower() not in sent]
        for name, value in headers:
            self.headers.add(name, value)

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        for name in self._added_by_aiohttp:
            self.headers.popall(name, None)


class ClientSink:
    """Streams the worker's response to the client; a client that went away is not an error of
    the app, so the rest of the response is still read from the worker (and recorded)."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None
        self.started = False
        self.client_gone = False

    async def start(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self.started = True
        self.response = RelayedResponse(status, reason, headers)
        try:
            await self.response.prepare(self.request)
        except (ConnectionError, ClientConnectionResetError):
            self.client_gone = True

    async def write(self, chunk: bytes) -> None:
        if self.client_gone or self.response is None:
            return
        try:
            await self.response.write(chunk)
        except (ConnectionError, ClientConnectionResetError):
            self.client_gone = True

    async def finish(self, tail: bytes = b"") -> None:
        if self.client_gone or self.response is None:
            return
        try:
            await self.response.write_eof(tail)
        except (ConnectionError, ClientConnectionResetError):
            self.client_gone = True

    async def abort(self) -> None:
        """The worker broke mid-response: the client must not take a partial body as whole."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        self.client_gone = True


class Front:
    """Listens on host:port and hands every request to the pool (which queues when all workers
    are busy: waiting for a worker is the backpressure)."""

    def __init__(self, pool: WorkerPool, *, host: str = "127.0.0.1", port: int = 8000,
                 shutdown_timeout: float = 30.0) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self.shutdown_timeout = shutdown_timeout
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        server = web.Server(self._handle, max_line_size=65536, max_field_size=65536)
        self._runner = web.ServerRunner(server, shutdown_timeout=self.shutdown_timeout,
                                        handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await self._site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            if exc.errno == errno.EADDRINUSE:
                raise FrontStartError(f"port {self.port} on {self.host} is already in use") from exc
            raise FrontStartError(f"cannot listen on {self.host}:{self.port}: "
                                  f"{exc.strerror or exc}") from exc
        if self.port == 0:
            sockets = self._site._server.sockets if self._site._server else ()  # type: ignore[union-attr]
            if sockets:
                self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting, close idle keep-alive connections (busy ones after their response),
        and let in-flight requests finish, for up to shutdown_timeout."""
        if self._runner is None:
            return
        await self._runner.cleanup()
        self._runner = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/%d.%d 100 Continue\r\n\r\n" % request.version)
        body = request.content.iter_chunked(READ_CHUNK) if request.body_exists else None
        sink = ClientSink(request)  # type: ignore[arg-type]
        peer = request.transport.get_extra_info("peername") if request.transport else None
        remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else None
        execution_id = str(uuid.uuid4())
        try:
            await self.pool.serve(IncomingRequest(method=request.method, path=path, query=query,
                                                  headers=headers, body=body, remote=remote),
                                  sink, execution_id=execution_id)
        except Exception as exc:  # a bug in Flux or in a hook: still one clear answer
            sys.stderr.write(f"flux: internal error serving {request.method} {path} "
                             f"({execution_id}): {type(exc).__name__}: {exc}\n")
            if sink.response is None:
                return web.Response(status=500, text=f"flux: internal error: {exc}\n",
                                    headers={EXECUTION_HEADER: execution_id})
        assert sink.response is not None
        return sink.response
