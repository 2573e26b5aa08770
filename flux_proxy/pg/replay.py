"""Postgres in replay mode: a loopback listener that answers from the recording only.

There is no upstream: the real database is never dialled. `PgReplaySession` (sans-IO, see
replay_session.py) does the work; this module owns the sockets.
"""

from __future__ import annotations

import asyncio

from flux_proxy.listener import LoopbackListener, SessionConnection
from flux_proxy.model import Lifetime, Protocol
from flux_proxy.pg.replay_catalog import PgCatalog
from flux_proxy.pg.replay_session import PgReplaySession
from flux_proxy.replay import ReplayBook

__all__ = ["PgReplayProxy", "PgReplaySession"]


class PgReplayProxy(LoopbackListener):
    """A loopback listener answering Postgres clients from a ReplayBook."""

    def __init__(self, book: ReplayBook, upstream_var: str = "", host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(host, port)
        self.book = book
        self.upstream_var = upstream_var
        self.catalog = PgCatalog(book.exchanges_of(Protocol.POSTGRES, Lifetime))

    def session(self) -> PgReplaySession:
        """A new client connection's sans-IO session."""
        return PgReplaySession(self.book, self.catalog, self.next_connection_id(), self.tag)

    def connection(self) -> asyncio.Protocol:
        return SessionConnection(self, self.session())
