"""Postgres in resume mode: the durable prefix answered from the recording, the rest live.

`PgResumeSession` (sans-IO, see resume_session.py) decides, message by message, what the
recording answers and what the server must; this module owns the sockets. Live traffic goes
through a record-mode `PgRecordProxy` on loopback, which holds the real credentials and records
every live exchange into the sink, so each resumed client connection has at most one live
connection: a client of that proxy, opened the first time it is needed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from flux_proxy.listener import ResumeListener
from flux_proxy.matcher import Divergence
from flux_proxy.model import ExchangeSink, Lifetime, Protocol
from flux_proxy.pg import messages as m
from flux_proxy.pg.proxy import PgRecordProxy
from flux_proxy.pg.replay_catalog import PgCatalog
from flux_proxy.pg.resume_session import PgResumeSession
from flux_proxy.replay import ReplayBook

__all__ = ["PgResumeProxy", "PgResumeSession"]

log = logging.getLogger("flux.resume.pg")


class _LiveLink(asyncio.Protocol):
    """The live side of one resumed connection: a client of the local record proxy."""

    def __init__(self, owner: _ResumeConnection) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.owner.to_client(self.owner.session.live_received(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.live_lost()

    def pause_writing(self) -> None:
        self.owner.pause_client()

    def resume_writing(self) -> None:
        self.owner.resume_client()


class _ResumeConnection(asyncio.Protocol):
    def __init__(self, proxy: PgResumeProxy, session: PgResumeSession) -> None:
        self.proxy = proxy
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.link: _LiveLink | None = None
        self.connecting: asyncio.Task[None] | None = None
        # The cancel key this connection's greeting hands out, instead of the recorded one.
        self.key = (session.recorded.connection, secrets.token_bytes(4))
        session.recorded.backend_key = m.BackendKeyData(*self.key).encode()
        proxy.cancel_keys[self.key] = self

    # ------------------------------------------------------------------ client side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proxy.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.to_client(self.session.receive(data))
        cancel = self.session.recorded.cancel_request
        if cancel is not None:
            self.session.recorded.cancel_request = None
            self.proxy.cancel((cancel.process_id, cancel.secret_key))
        self._pump_live()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.connections.discard(self)
        self.proxy.cancel_keys.pop(self.key, None)
        if self.connecting is not None:
            self.connecting.cancel()
        if self.link is not None and self.link.transport is not None:
            self.link.transport.close()  # the record proxy says goodbye to the server

    def pause_writing(self) -> None:
        if self.link is not None and self.link.transport is not None:
            self.link.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.link is not None and self.link.transport is not None:
            self.link.transport.resume_reading()

    def pause_client(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_client(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def to_client(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if data:
            transport.write(data)
        if self.session.closed:
            transport.close()

    # ------------------------------------------------------------------ live side

    def _pump_live(self) -> None:
        if not self.session.live_link_wanted:
            return
        if self.link is not None and self.link.transport is not None:
            pending = self.session.take_live()
            if pending:
                self.link.transport.write(pending)
        elif self.connecting is None:
            self.connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, link = await loop.create_connection(lambda: _LiveLink(self), "127.0.0.1",
                                                   self.proxy.live.port)
        except OSError:
            self.live_lost()
            return
        if self.transport is None or self.transport.is_closing():
            link.transport.close()  # type: ignore[union-attr]  # the client left meanwhile
            return
        self.link = link
        self._pump_live()

    def live_lost(self) -> None:
        self.to_client(self.session.live_lost())
        if self.transport is not None:
            self.transport.close()


class PgResumeProxy(ResumeListener):
    """A loopback listener that answers the durable prefix and goes live after it.

    `book` holds the durable prefix as its request checkpoints (plus the session and connection
    exchanges greetings and statements are answered from); `upstream` is the real URL with
    credentials; `sink` receives the live exchanges, recorded by the inner record proxy.
    """

    def __init__(self, book: ReplayBook, upstream: str, sink: ExchangeSink,
                 host: str = "127.0.0.1") -> None:
        super().__init__(PgRecordProxy(upstream, sink), host)
        self.book = book
        self.catalog = PgCatalog(book.exchanges_of(Protocol.POSTGRES, Lifetime))
        self.divergences: list[Divergence] = []
        self.cancel_keys: dict[tuple[int, bytes], _ResumeConnection] = {}
        self._cancels: set[asyncio.Task[None]] = set()

    def cancel(self, key: tuple[int, bytes]) -> None:
        """A client cancels the query of the connection `key` names. A query answered from the
        recording is over already; a live one is cancelled through the recording proxy, which
        maps the live connection's key to the server's."""
        target = self.cancel_keys.get(key)
        if target is None or target.session.live_key is None:
            return
        process_id, secret = target.session.live_key
        request = m.CancelRequest(process_id, secret).encode()

        async def send() -> None:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.live.port)
            except OSError as exc:
                log.warning("pg resume: could not forward a cancel request: %s", exc)
                return
            writer.write(request)
            await writer.drain()
            writer.close()

        task = asyncio.ensure_future(send())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    def session(self) -> PgResumeSession:
        """A new client connection's sans-IO session."""
        return PgResumeSession(self.book, self.catalog, self.next_connection_id(), self.tag,
                               self.divergences)

    def connection(self) -> asyncio.Protocol:
        return _ResumeConnection(self, self.session())
