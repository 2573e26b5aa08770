"""Redis in resume mode: the durable prefix answered from the recording, the rest live.

Each client connection starts recorded. Start-up IO (no request tag) goes live command by
command, as any restart of the app would. During the request, a command that exactly matches
the next durable checkpoint is answered from the recording; the first one that does not (past
the prefix, a divergence, or a miss) switches the connection to live for good. Live commands go
through a record-mode `RedisProxy` on loopback, which holds the real credentials and records
them; the connection's session state (RESP3 via HELLO, the SELECTed database) is set up on the
live connection first, so the server sees the session the client believes it has.

Once a connection is live for good and every recorded answer before it has gone out, it is a
plain pipe to the live side: replies, (un)subscribe confirmations (one per channel), pub/sub
messages and RESP3 pushes reach the client in the server's order, and nothing has to count
them. Before that, a RESP3 push is passed on at once and never taken for a reply.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from flux_proxy.listener import ResumeListener
from flux_proxy.matcher import Divergence, MatchKind, key_of
from flux_proxy.model import ExchangeSink, Protocol
from flux_proxy.replay import ReplayBook
from flux_proxy.resp.codec import Frame, ProtocolError, RespParser, encode_command
from flux_proxy.resp.proxy import RedisProxy
from flux_proxy.resp.render import command_json
from flux_proxy.resp.replay import RedisReplaySession, _args_of, replay_error

LIVE_ONLY = frozenset({"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR"})


@dataclass
class _Slot:
    """One reply owed to the client, in command order."""

    data: bytes | None = None


@dataclass
class _SessionState:
    resp3: bool = False
    db: int = 0


class _LiveLink(asyncio.Protocol):
    """The resume connection's live side: a client of the local recording proxy."""

    def __init__(self, owner: _ResumeConnection) -> None:
        self.owner = owner
        self.parser = RespParser()
        self.transport: asyncio.Transport | None = None
        self.swallow = 0  # replies to our own session set-up commands

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.parser.feed(data)
        except ProtocolError as exc:
            self.owner.fail(f"live reply: {exc}")
            return
        for frame in frames:
            if self.swallow and not frame.is_push:
                self.swallow -= 1
                continue
            self.owner.live_frame(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.fail("the live Redis connection closed")


class _ResumeConnection(asyncio.Protocol):
    def __init__(self, proxy: RedisResumeProxy) -> None:
        self.proxy = proxy
        self.replay = RedisReplaySession(proxy.book, proxy.next_connection_id(), proxy.tag)
        self.parser = RespParser(client=True)
        self.state = _SessionState()
        self.transport: asyncio.Transport | None = None
        self.live_switched = False
        self.link: _LiveLink | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.outbox: list[bytes] = []  # live commands waiting for the link
        self.slots: collections.deque[_Slot] = collections.deque()
        self.waiting: collections.deque[_Slot] = collections.deque()  # slots owed by the link
        self.dead: str | None = None  # why the live side is gone, once it is
        self.piping = False  # live for good, nothing recorded left to send: a plain pipe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proxy.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.parser.feed(data)
        except ProtocolError as exc:
            self._write(replay_error(f"protocol error: {exc}"))
            self._close()
            return
        for frame in frames:
            self._route(frame)
        self._flush()

    def _route(self, frame: Frame) -> None:
        args = _args_of(frame)
        if not args:
            return
        request = command_json(args)
        command = request["command"]
        self._track_session(command, args)
        during_request = self.proxy.tag.current is not None
        if command in LIVE_ONLY and during_request:
            self.live_switched = True  # a subscription cannot be answered from a recording
        if self.live_switched or not during_request:
            if command in ("AUTH", "HELLO") and not self.live_switched and not during_request:
                self.slots.append(_Slot(self.replay.receive(frame.raw) or b"+OK\r\n"))
                return
            self._send_live(frame.raw)
            return
        if command in ("AUTH", "HELLO", "SELECT", "CLIENT", "INFO", "QUIT"):
            self.slots.append(_Slot(self.replay.receive(frame.raw)))
            return
        match = self.proxy.book.take(key_of(Protocol.REDIS, request), True)
        if match.kind is MatchKind.EXACT:
            assert match.checkpoint is not None
            answer = b"".join(match.checkpoint.server_frames)
            self.replay._note(request, match.checkpoint.response, frame.raw, answer, match, True)
            self.slots.append(_Slot(answer))
            return
        self.proxy.divergences.extend(match.divergences)
        self.live_switched = True
        self._send_live(frame.raw)

    def _track_session(self, command: str, args: list[bytes]) -> None:
        if command == "HELLO" and len(args) > 1:
            self.state.resp3 = args[1] == b"3"
        elif command == "SELECT" and len(args) > 1 and args[1].isdigit():
            self.state.db = int(args[1])

    def _send_live(self, raw: bytes) -> None:
        if self.dead is not None:
            self.slots.append(_Slot(replay_error(self.dead)))
            return
        if not self.piping:
            slot = _Slot()
            self.slots.append(slot)
            self.waiting.append(slot)
        if self.link is not None and self.link.transport is not None:
            self.link.transport.write(raw)
        else:
            self.outbox.append(raw)
            if self.connecting is None:
                self.connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, link = await loop.create_connection(lambda: _LiveLink(self), "127.0.0.1",
                                                   self.proxy.live.port)
        except OSError as exc:
            self.fail(f"cannot reach the live proxy: {exc}")
            return
        setup = []
        if self.state.resp3:
            setup.append(encode_command(b"HELLO", b"3"))
        if self.state.db:
            setup.append(encode_command(b"SELECT", str(self.state.db).encode()))
        link.swallow = len(setup)
        assert link.transport is not None
        link.transport.write(b"".join(setup) + b"".join(self.outbox))
        self.outbox.clear()
        self.link = link

    def live_frame(self, frame: Frame) -> None:
        """A frame from the live side: the next owed reply, or passed straight on."""
        if self.piping or frame.is_push or not self.waiting:
            self._write(frame.raw)
            return
        self.waiting.popleft().data = frame.raw
        self._flush()

    def fail(self, reason: str) -> None:
        """The live side is gone: what it owed, and everything after, is an error, and the
        client's connection closes (as with a real server that went away)."""
        self.dead = reason
        self.link = None
        self.outbox.clear()
        while self.waiting:
            self.waiting.popleft().data = replay_error(reason)
        self._flush()
        self._close()

    def _flush(self) -> None:
        out = []
        while self.slots and self.slots[0].data is not None:
            out.append(self.slots.popleft().data or b"")
        if out:
            self._write(b"".join(out))
        if self.live_switched and not self.piping and len(self.slots) == len(self.waiting):
            # Every answer still owed is the live side's, in its own order: let it through.
            self.piping = True
            self.slots.clear()
            self.waiting.clear()
        if self.replay.closed and not self.slots:
            self._close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.connections.discard(self)
        if self.link is not None and self.link.transport is not None:
            self.link.transport.close()
        if self.connecting is not None:
            self.connecting.cancel()


class RedisResumeProxy(ResumeListener):
    """A loopback listener that answers the durable prefix and goes live after it.

    `book` holds the durable prefix as its request checkpoints; `upstream` is the real URL
    with credentials; `sink` receives the live exchanges, recorded by the inner proxy.
    """

    def __init__(self, book: ReplayBook, upstream: str, sink: ExchangeSink,
                 host: str = "127.0.0.1") -> None:
        super().__init__(RedisProxy(upstream, sink), host)
        self.book = book
        self.divergences: list[Divergence] = []

    def connection(self) -> asyncio.Protocol:
        return _ResumeConnection(self)
