"""The recording Postgres proxy: asyncio Protocol API on the hot path.

Per chunk received, each side writes the chunk through unchanged, then hands it to the
sans-IO `PgSession`: as it is when it is one whole query or reply (the usual case), else split
into frames by their 5-byte headers (which also catches garbage). Each direction has its own
flow control (pause the reader when the other side's write buffer is full), so one direction
never waits on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import sys
from collections.abc import Callable
from time import time as _now
from typing import IO

from flux_proxy.listener import LoopbackListener
from flux_proxy.model import Exchange, ExchangeSink
from flux_proxy.pg import messages as m
from flux_proxy.pg.auth import (
    Upstream,
    UpstreamConfig,
    UpstreamError,
    connect_upstream,
    error_response,
    send_cancel,
)
from flux_proxy.pg.codec import BACKEND_TYPES, FRONTEND_TYPES, FrameSplitter
from flux_proxy.pg.errors import ProtocolError
from flux_proxy.pg.frontdoor import Cancel, Greeting, Refuse, Reply, Start
from flux_proxy.pg.session import PgSession
from flux_proxy.urls import redact, split_listen

log = logging.getLogger("flux.pg.proxy")

_TERMINATE = m.Terminate().encode()
_GREETING, _CONNECTING, _RELAYING, _CLOSED = range(4)


def _not_connected(data: bytes) -> None:
    raise RuntimeError("no upstream yet")


class PgRecordProxy(LoopbackListener):
    """A listener: one upstream URL, any number of client connections, one exchange sink."""

    def __init__(self, upstream: str, sink: ExchangeSink, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        if not ipaddress.ip_address(host if host != "localhost" else "127.0.0.1").is_loopback:
            raise ValueError("the Postgres proxy listens on loopback only")
        super().__init__(host, port)
        self.upstream_url = upstream
        self.config = UpstreamConfig.from_url(upstream)
        self.sink = sink
        self.cancel_keys: dict[tuple[int, bytes], ClientConnection] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def connection(self) -> ClientConnection:
        return ClientConnection(self)

    async def start(self) -> PgRecordProxy:
        await super().start()
        return self

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await super().close()

    def emit(self, exchange: Exchange) -> None:
        """The sink must not take the connection down with it."""
        try:
            self.sink(exchange)
        except Exception:
            log.exception("exchange sink failed")

    def spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class ClientConnection(asyncio.Protocol):
    """The client-facing side of one proxied connection (and owner of its upstream)."""

    def __init__(self, proxy: PgRecordProxy) -> None:
        self.proxy = proxy
        self.id = proxy.next_connection_id()
        self.state = _GREETING
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.upstream_key: m.BackendKeyData | None = None
        self.proxy_key: tuple[int, bytes] | None = None
        self.greeting = Greeting()
        self.session = PgSession(self.id, proxy.emit, proxy.tag)
        # Hot path: bound methods looked up once.
        self._splitter = FrameSplitter(FRONTEND_TYPES, "frontend")
        self._split = self._splitter.feed
        self._record = self.session.client_frames
        self._record_read = self.session.client_read
        self._upstream_write: Callable[[bytes], object] = _not_connected
        self.buffered: list[bytes] = []
        self.startup_request_id: str | None = None

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proxy.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.state == _RELAYING:
            # Forward first (latency), then frame and record. Garbage reaches the upstream
            # only to be cut off with it.
            self._upstream_write(data)
            if not self._splitter.buffer and self._record_read(data, _now()):
                return  # one whole Query or batch, recorded as it came
            try:
                frames = self._split(data)
            except ProtocolError as exc:
                self._client_protocol_error(exc)
                return
            if frames:
                self._record(frames, _now())
        elif self.state == _GREETING:
            self._greet(data)
        elif self.state == _CONNECTING:
            self.buffered.append(data)  # uvloop: pause_reading here may not stop delivery

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = _CLOSED
        self.proxy.connections.discard(self)
        if self.proxy_key is not None:
            self.proxy.cancel_keys.pop(self.proxy_key, None)
        if self.upstream is not None and not self.upstream.is_closing():
            if was == _RELAYING:
                self.upstream.write(_TERMINATE)
            self.upstream.close()
        self.session.connection_lost("client disconnected", _now())

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    # ------------------------------------------------------------------ startup

    def _greet(self, data: bytes) -> None:
        if self.startup_request_id is None:
            self.startup_request_id = self.proxy.tag.current
        for action in self.greeting.receive(data):
            if isinstance(action, Reply):
                self.transport.write(action.data)  # type: ignore[union-attr]
            elif isinstance(action, Refuse):
                log.warning("pg proxy connection %d refused: %s", self.id, action.message)
                self._fail_client(error_response("FATAL", action.sqlstate, action.message))
            elif isinstance(action, Cancel):
                self._cancel(action.request)
            elif isinstance(action, Start):
                self.state = _CONNECTING
                if action.rest:
                    self.buffered.append(action.rest)
                # Bound what we buffer until the upstream exists (data may still arrive).
                self.transport.pause_reading()  # type: ignore[union-attr]
                self.proxy.spawn(self._connect(action.startup))

    def _cancel(self, request: m.CancelRequest) -> None:
        target = self.proxy.cancel_keys.get((request.process_id, request.secret_key))
        if target is not None and target.upstream_key is not None:
            self.proxy.spawn(send_cancel(self.proxy.config, target.upstream_key))
        self.transport.close()  # type: ignore[union-attr]

    async def _connect(self, startup: m.StartupMessage) -> None:
        started = _now()
        try:
            upstream = await connect_upstream(self.proxy.config, startup.params,
                                              startup.protocol)
        except UpstreamError as exc:
            log.warning("pg proxy connection %d: %s", self.id, exc)
            if self.state != _CLOSED:
                self._fail_client(exc.error_frame)
            self.session.record_startup([startup.raw], [exc.error_frame], started, _now(),
                                        failed=True, request_id=self.startup_request_id)
            return
        if self.state == _CLOSED:
            upstream.transport.close()
            return
        self._start_relay(startup, upstream, started)

    def _start_relay(self, startup: m.StartupMessage, upstream: Upstream,
                     started: float) -> None:
        result = upstream.result
        sent: list[bytes] = []
        if result.negotiate is not None:
            sent.append(result.negotiate)
        sent.append(m.AuthenticationOk().encode())
        sent += result.parameter_status
        sent += result.notices
        self.upstream_key = result.backend_key
        key_size = len(result.backend_key.secret_key) if result.backend_key else 4
        proxy_key = m.BackendKeyData(self.id, secrets.token_bytes(key_size))
        self.proxy_key = (proxy_key.process_id, proxy_key.secret_key)
        self.proxy.cancel_keys[self.proxy_key] = self
        sent.append(proxy_key.encode())
        sent.append(m.ReadyForQuery(result.tx_status).encode())
        self.transport.write(b"".join(sent))  # type: ignore[union-attr]
        self.session.tx_status = result.tx_status
        self.session.record_startup([startup.raw], sent, started, _now(),
                                    request_id=self.startup_request_id)
        side = UpstreamConnection(self, upstream.transport)
        upstream.transport.set_protocol(side)
        self.upstream = upstream.transport
        self._upstream_write = upstream.transport.write
        self.state = _RELAYING
        if upstream.leftover:
            side.data_received(upstream.leftover)
        self.transport.resume_reading()  # type: ignore[union-attr]
        buffered, self.buffered = self.buffered, []
        for chunk in buffered:
            if self.state != _RELAYING:
                break
            self.data_received(chunk)
        if self.state == _RELAYING and upstream.transport.is_closing():
            self.upstream_lost(None)

    # ------------------------------------------------------------------ failures

    def _fail_client(self, error_frame: bytes) -> None:
        """Send the client one ErrorResponse and close only this connection."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(error_frame)
            transport.close()

    def _client_protocol_error(self, exc: ProtocolError) -> None:
        log.warning("pg proxy connection %d: protocol error from client: %s", self.id, exc)
        frame = error_response("FATAL", "08P01", f"invalid frontend message: {exc}")
        self.session.connection_lost(f"protocol error from client: {exc}", _now(), frame)
        self.state = _CLOSED
        if self.upstream is not None:
            self.upstream.abort()
        self._fail_client(frame)

    def upstream_protocol_error(self, exc: ProtocolError) -> None:
        log.warning("pg proxy connection %d: protocol error from upstream: %s", self.id, exc)
        frame = error_response("FATAL", "08P01", f"invalid message from upstream: {exc}")
        self.session.connection_lost(f"protocol error from upstream: {exc}", _now(), frame)
        if self.upstream is not None:
            self.upstream.abort()
        self._fail_client(frame)

    def upstream_lost(self, exc: Exception | None) -> None:
        """The server went away: tell the client cleanly, record open exchanges as failed."""
        if self.state == _CLOSED:
            return
        if self.session.terminated and self.session.idle:
            self.transport.close()  # type: ignore[union-attr]  # the expected goodbye
            return
        reason = f"upstream connection lost{f': {exc}' if exc else ''}"
        frame = error_response("FATAL", "08006", reason)
        self.session.connection_lost(reason, _now(), frame)
        self._fail_client(frame)


class UpstreamConnection(asyncio.Protocol):
    """The server-facing side: relays bytes to the client and frames to the session."""

    __slots__ = ("_client_write", "_record", "_record_read", "_split", "_splitter", "client",
                 "client_transport", "transport")

    def __init__(self, client: ClientConnection, transport: asyncio.Transport) -> None:
        self.client = client
        self.client_transport: asyncio.Transport = client.transport  # type: ignore[assignment]
        self.transport = transport
        self._client_write = self.client_transport.write
        self._splitter = FrameSplitter(BACKEND_TYPES, "backend")
        self._split = self._splitter.feed
        self._record = client.session.server_frames
        self._record_read = client.session.server_read

    def data_received(self, data: bytes) -> None:
        self._client_write(data)
        if not self._splitter.buffer and self._record_read(data, _now()):
            return  # the whole reply to the one query outstanding, recorded as it came
        try:
            frames = self._split(data)
        except ProtocolError as exc:
            self.client.upstream_protocol_error(exc)
            return
        if frames:
            self._record(frames, _now())

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.state == _RELAYING:
            self.client.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.client_transport.pause_reading()

    def resume_writing(self) -> None:
        self.client_transport.resume_reading()


# ------------------------------------------------------------------------------------------
# Standalone


def jsonl_sink(stream: IO[str]) -> ExchangeSink:
    """One JSON line per exchange, with raw frames (the `--record FILE.jsonl` format)."""
    def sink(exchange: Exchange) -> None:
        stream.write(json.dumps(exchange.to_json(frames=True)) + "\n")
        stream.flush()
    return sink


async def run_standalone(upstream: str, listen: str, record_path: str | None,
                         on_listening: Callable[[int], None] | None = None) -> None:
    """Run a recording proxy until cancelled; with `record_path`, append JSON lines to it."""
    host, port = split_listen(listen)
    stream = open(record_path, "a", encoding="utf-8") if record_path else None  # noqa: SIM115
    sink: ExchangeSink = jsonl_sink(stream) if stream is not None else (lambda _ex: None)
    proxy = PgRecordProxy(upstream, sink, host, port)
    await proxy.start()
    if on_listening is not None:
        on_listening(proxy.port)
    else:
        print(f"flux: pg proxy on {host}:{proxy.port} -> {redact(upstream)}", file=sys.stderr,
              flush=True)
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        await proxy.close()
        if stream is not None:
            stream.close()
