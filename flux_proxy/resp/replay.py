"""Redis in replay mode: every answer comes from the recording; no upstream exists.

`RedisReplaySession` is sans-IO (bytes in, bytes out) so it can be tested without sockets;
`RedisReplayProxy` is the small asyncio listener around it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from flux_proxy.listener import LoopbackListener, SessionConnection
from flux_proxy.matcher import Match, MatchKind, key_of
from flux_proxy.model import Exchange, Lifetime, Protocol, RequestTag
from flux_proxy.replay import ReplayBook
from flux_proxy.resp.codec import Frame, ProtocolError, RespParser, split_inline
from flux_proxy.resp.render import command_json, response_from_frames
from flux_proxy.resp.values import InlineCommand

OK = b"+OK\r\n"
HANDSHAKE = frozenset({"HELLO", "AUTH", "SELECT", "CLIENT", "INFO", "READONLY", "PING"})


def replay_error(message: str) -> bytes:
    return b"-FLUXREPLAY " + message.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"


def _args_of(frame: Frame) -> list[bytes]:
    value = frame.value
    if isinstance(value, InlineCommand):
        return split_inline(value.line)
    return [item.value for item in value.items]  # type: ignore[union-attr]


class RedisReplaySession:
    """One client connection of a replay run."""

    def __init__(self, book: ReplayBook, connection: int, tag: RequestTag) -> None:
        self.book = book
        self.connection = connection
        self.tag = tag
        self.parser = RespParser(client=True)
        self.resp3 = False
        self.seq = 0
        self.recorded_resp3 = any(
            x.request.get("command") == "HELLO" and x.request.get("args", [""])[:1] == ["3"]
            and not x.response.get("error")
            for x in book.exchanges_of(Protocol.REDIS, [Lifetime.SESSION]))
        self.closed = False

    def receive(self, data: bytes) -> bytes:
        """Answers to everything complete in `data`, in order (pipelines included)."""
        try:
            frames = self.parser.feed(data)
        except ProtocolError as exc:
            self.closed = True
            return replay_error(f"protocol error: {exc}")
        return b"".join(self._answer(frame) for frame in frames)

    def _answer(self, frame: Frame) -> bytes:
        args = _args_of(frame)
        if not args:
            return b""
        request = command_json(args)
        command = request["command"]
        if command == "QUIT":
            self.closed = True
            return OK
        if command in HANDSHAKE and (command != "PING" or self.tag.current is None):
            answer = self._handshake(command, request)
            if answer is not None:
                return answer
        if self.resp3 != self.recorded_resp3:
            return replay_error(
                f"this client speaks RESP{3 if self.resp3 else 2} but the recording is "
                f"RESP{3 if self.recorded_resp3 else 2}")
        during_request = self.tag.current is not None
        match = self.book.take(key_of(Protocol.REDIS, request), during_request)
        if match.kind is MatchKind.MISS:
            answer = replay_error(f"no recorded answer for {_describe(request)}"
                                  + ("" if during_request else " during start-up"))
            response: dict[str, Any] = {"value": None, "error": answer[1:-2].decode()}
        else:
            assert match.checkpoint is not None
            answer = b"".join(match.checkpoint.server_frames)
            response = match.checkpoint.response
        self._note(request, response, frame.raw, answer, match, during_request)
        return answer

    def _handshake(self, command: str, request: dict[str, Any]) -> bytes | None:
        """Session-lifetime commands, answered from the session recordings on any connection."""
        args = [str(a) for a in request["args"]]
        if command == "AUTH":
            return OK  # the recording proxy answered AUTH itself too
        if command == "HELLO":
            want3 = bool(args) and args[0] == "3"
            if want3 != self.recorded_resp3:
                return replay_error(
                    f"this client asks for RESP{3 if want3 else 2} but the recording is "
                    f"RESP{3 if self.recorded_resp3 else 2}")
            self.resp3 = want3
        recorded = self._recorded_session(command, args)
        if recorded is not None:
            return b"".join(recorded.server_frames)
        if command in ("SELECT", "CLIENT", "READONLY"):
            return OK
        return None

    def _recorded_session(self, command: str, args: list[str]) -> Exchange | None:
        candidates = [x for x in self.book.exchanges_of(Protocol.REDIS, [Lifetime.SESSION])
                      if x.request.get("command") == command]
        if command in ("CLIENT", "HELLO") and args:
            same = [x for x in candidates if [str(a) for a in x.request.get("args", [])][:1]
                    == args[:1]]
            candidates = same or candidates
        return candidates[0] if candidates else None

    def _note(self, request: dict[str, Any], response: dict[str, Any], client_raw: bytes,
              answer: bytes, match: Match, during_request: bool) -> None:
        self.seq += 1
        exchange = Exchange(protocol=Protocol.REDIS, connection=self.connection, seq=self.seq,
                            lifetime=Lifetime.REQUEST, request_id=self.tag.current,
                            started_at=time.time(), duration=0.0, client_frames=[client_raw],
                            server_frames=[answer], request=request,
                            response=response or response_from_frames([answer]),
                            failed=match.kind is MatchKind.MISS)
        self.book.answered(exchange, match, during_request)


def _describe(request: dict[str, Any]) -> str:
    args = " ".join(str(a) for a in request["args"])
    text = f"{request['command']} {args}".strip()
    return text if len(text) <= 120 else text[:117] + "..."


class RedisReplayProxy(LoopbackListener):
    """A loopback listener answering Redis clients from a ReplayBook."""

    def __init__(self, book: ReplayBook, upstream_var: str = "", host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(host, port)
        self.book = book
        self.upstream_var = upstream_var

    def connection(self) -> asyncio.Protocol:
        return SessionConnection(
            self, RedisReplaySession(self.book, self.next_connection_id(), self.tag))
