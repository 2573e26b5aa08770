"""The loopback listener every proxy shares, in record, replay and resume mode: a request tag,
connection ids, and a close that drops the clients it still has (a replay must not wait on an
idle pool; a recording proxy's clients close their upstream connections as they go)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Protocol as TypingProtocol

from flux_proxy.model import RequestTag


class TrackedConnection(TypingProtocol):
    transport: asyncio.Transport | None


class LoopbackListener:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.tag = RequestTag()
        self.connections: set[TrackedConnection] = set()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None

    def set_current_request(self, request_id: str | None) -> None:
        self.tag.set_current_request(request_id)

    def next_connection_id(self) -> int:
        return next(self._ids)

    def connection(self) -> asyncio.Protocol:
        """A protocol object for one new client connection."""
        raise NotImplementedError

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None


class SansIOSession(TypingProtocol):
    closed: bool

    def receive(self, data: bytes) -> bytes: ...


class SessionConnection(asyncio.Protocol):
    """One client of a replay listener: bytes into the sans-IO session, its answers back."""

    def __init__(self, listener: LoopbackListener, session: SansIOSession) -> None:
        self.listener = listener
        self.session = session
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.listener.connections.add(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        answer = self.session.receive(data)
        if answer:
            self.transport.write(answer)
        if self.session.closed:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)


class ProxyListener(TypingProtocol):
    """What the runtime needs of any proxy, in any mode: its port, the request tag, and a
    lifecycle."""

    @property
    def port(self) -> int: ...

    def set_current_request(self, request_id: str | None) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class ResumeListener(LoopbackListener):
    """A resume proxy: answers what the recording can, and sends the rest through `live`, a
    record-mode proxy that holds the real credentials and records what goes live."""

    def __init__(self, live: ProxyListener, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.live = live

    def set_current_request(self, request_id: str | None) -> None:
        super().set_current_request(request_id)
        self.live.set_current_request(request_id)

    async def start(self) -> None:
        await self.live.start()
        await super().start()

    async def close(self) -> None:
        await super().close()
        await self.live.close()
