"""Postgres in replay mode: a loopback listener that answers from the recording only.

There is no upstream: the real database is never dialled. `PgReplaySession` (sans-IO, see
replay_session.py) does the work; this module owns the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from flux_proxy.model import Lifetime, Protocol, RequestTag
from flux_proxy.pg.replay_catalog import PgCatalog
from flux_proxy.pg.replay_session import PgReplaySession
from flux_proxy.replay import ReplayBook

__all__ = ["PgReplayProxy", "PgReplaySession"]


class _ReplayConnection(asyncio.Protocol):
    def __init__(self, proxy: PgReplayProxy, session: PgReplaySession) -> None:
        self.proxy = proxy
        self.session = session
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proxy.connections.add(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        answer = self.session.receive(data)
        if answer:
            self.transport.write(answer)
        if self.session.closed:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.connections.discard(self)


class PgReplayProxy:
    """A loopback listener answering Postgres clients from a ReplayBook."""

    def __init__(self, book: ReplayBook, upstream_var: str = "", host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.book = book
        self.upstream_var = upstream_var
        self.host = host
        self.port = port
        self.tag = RequestTag()
        self.catalog = PgCatalog(book.exchanges_of(Protocol.POSTGRES, Lifetime))
        self.connections: set[_ReplayConnection] = set()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None

    def set_current_request(self, request_id: str | None) -> None:
        self.tag.set_current_request(request_id)

    def session(self) -> PgReplaySession:
        """A new client connection's sans-IO session."""
        return PgReplaySession(self.book, self.catalog, next(self._ids), self.tag)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ReplayConnection(self, self.session()), self.host, self.port)
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
