"""Per-connection Redis session state and exchange building, sans-IO (mitmproxy style).

The proxy feeds complete client commands and complete server frames (raw bytes from the
scanners) together with a timestamp; the session decides what goes upstream, what goes back
to the client, and which exchanges are finished. It never touches a socket or a clock, so it
is tested with plain byte strings.

Correlation is FIFO: Redis answers commands in order. The exceptions it handles:

* out-of-band frames: RESP3 pushes (`>`: pub/sub messages, invalidations) and, in RESP2
  subscribe mode, `message`/`pmessage`/`smessage` arrays. Each becomes its own exchange with no
  client frame and the request `{"command": "(push)", "args": []}`;
* (un)subscribe commands, answered by one confirmation per channel (RESP2 arrays or RESP3
  pushes); the command's exchange keeps all its confirmations;
* commands the proxy answers itself: AUTH and the AUTH inside HELLO (the proxy logged in
  upstream with the real credentials), and everything once the upstream refused the login;
* commands without a reply (`*0`, empty inline lines) and MONITOR output.

Only the hot path (`client_commands` / `server_frames` for ordinary commands) is kept lean:
the command name is read from the frame header and nothing is decoded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from enum import IntEnum

from flux_proxy.model import Exchange, Lifetime, RequestTag
from flux_proxy.resp.codec import ProtocolError, decode_command, decode_reply, encode_command
from flux_proxy.resp.exchange import RedisExchange, new_exchange
from flux_proxy.resp.render import password_positions
from flux_proxy.resp.values import Attribute, Push

PUSH_COMMAND = "(push)"


class Kind(IntEnum):
    """What the session must do about a command beyond relaying it."""

    PLAIN = 0
    AUTH = 1
    HELLO = 2
    SELECT = 3
    CLIENT = 4
    INFO = 5
    MULTI = 6
    EXEC = 7
    DISCARD = 8
    WATCH = 9
    UNWATCH = 10
    SUBSCRIBE = 11  # any of the six (un)subscribe commands
    RESET = 12
    MONITOR = 13
    BLOCKING = 14


_SUBSCRIBE_COMMANDS = {
    b"SUBSCRIBE": b"subscribe", b"PSUBSCRIBE": b"psubscribe", b"SSUBSCRIBE": b"ssubscribe",
    b"UNSUBSCRIBE": b"unsubscribe", b"PUNSUBSCRIBE": b"punsubscribe",
    b"SUNSUBSCRIBE": b"sunsubscribe",
}
_CONFIRMATIONS = frozenset(_SUBSCRIBE_COMMANDS.values())
_MESSAGES = frozenset((b"message", b"pmessage", b"smessage"))
BLOCKING_COMMANDS = frozenset((b"BLPOP", b"BRPOP", b"BRPOPLPUSH", b"BLMOVE", b"BLMPOP",
                               b"BZPOPMIN", b"BZPOPMAX", b"BZMPOP", b"XREAD", b"XREADGROUP",
                               b"WAIT", b"WAITAOF"))
SESSION_CLIENT_SUBCOMMANDS = frozenset((b"SETINFO", b"SETNAME", b"MAINT_NOTIFICATIONS"))

KINDS: dict[bytes, Kind] = {
    b"AUTH": Kind.AUTH, b"HELLO": Kind.HELLO, b"SELECT": Kind.SELECT, b"CLIENT": Kind.CLIENT,
    b"INFO": Kind.INFO, b"MULTI": Kind.MULTI, b"EXEC": Kind.EXEC, b"DISCARD": Kind.DISCARD,
    b"WATCH": Kind.WATCH, b"UNWATCH": Kind.UNWATCH, b"RESET": Kind.RESET,
    b"MONITOR": Kind.MONITOR,
    **{name: Kind.SUBSCRIBE for name in _SUBSCRIBE_COMMANDS},
    **{name: Kind.BLOCKING for name in BLOCKING_COMMANDS},
}

_KIND_BY_SPELLING: dict[bytes, Kind] = {}  # command name as sent -> kind, for the hot path


def kind_of(name: bytes) -> Kind:
    """The kind of a command name in any letter case (cached per spelling)."""
    kind = _KIND_BY_SPELLING.get(name)
    if kind is None:
        kind = KINDS.get(name.upper(), Kind.PLAIN)
        if len(_KIND_BY_SPELLING) < 4096:
            _KIND_BY_SPELLING[name] = kind
            if kind == Kind.PLAIN:
                _PLAIN_SPELLINGS.add(name)
    return kind


OK = b"+OK\r\n"
UPSTREAM_LOST = "ERR flux: upstream connection lost"
CLIENT_GONE = "flux: client disconnected before the reply"


def command_name(frame: bytes) -> bytes | None:
    """The upper-cased command name, read from the frame header without decoding the rest;
    None for a command without arguments (`*0`, an empty line), which gets no reply."""
    if frame[0] == 42:  # *
        first = frame.find(b"\r\n")
        second = frame.find(b"\r\n", first + 2)
        if second < 0:
            return None
        return frame[second + 2:second + 2 + int(frame[first + 3:second])].upper()
    try:
        args = decode_command(frame)
    except ProtocolError:  # unbalanced quotes: the server answers an error
        return frame.split(None, 1)[0].upper() if frame.strip() else b""
    return args[0].upper() if args else None


def _error_frame(text: str) -> bytes:
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"


def _first_element(frame: bytes) -> bytes | None:
    """`message` from `*3\\r\\n$7\\r\\nmessage...` (or a push); None if not such a frame."""
    first = frame.find(b"\r\n")
    if frame[first + 2:first + 3] not in (b"$", b"+"):
        return None
    second = frame.find(b"\r\n", first + 2)
    if frame[first + 2:first + 3] == b"+":
        return frame[first + 3:second].lower()
    length = frame[first + 3:second]
    if not length.isdigit():
        return None
    return frame[second + 2:second + 2 + int(length)].lower()


_Plain = tuple[int, bytes, float, "str | None"]
"""An ordinary command awaiting its reply, kept as a tuple on the hot path:
(seq, client frame, started_at, request_id)."""


class _Pending:
    """A command that needs more than FIFO relaying (or the proxy's own reply), or an
    ordinary one turned into this form by a slow path."""

    __slots__ = ("args", "client_frame", "close_after", "confirm", "kind", "lifetime",
                 "replies", "replies_left", "request_id", "seq", "started_at", "synthetic")

    def __init__(self, seq: int, client_frame: bytes, started_at: float,
                 request_id: str | None, lifetime: Lifetime, kind: Kind = Kind.PLAIN) -> None:
        self.seq = seq
        self.client_frame = client_frame
        self.started_at = started_at
        self.request_id = request_id
        self.lifetime = lifetime
        self.kind = kind
        self.args: list[bytes] | None = None
        self.synthetic: bytes | None = None  # the proxy's own reply, sent in FIFO order
        self.close_after = False  # close the client once this reply is out
        self.confirm: bytes | None = None  # (un)subscribe confirmation name expected
        self.replies_left = 1
        self.replies: list[bytes] = []


class _Run:
    """Ordinary commands that arrived in one read (a pipeline): one queue entry for all of
    them, so the client side of the hot path does no per-command work."""

    __slots__ = ("frames", "next", "request_id", "seq", "started_at")

    def __init__(self, seq: int, frames: list[bytes], started_at: float,
                 request_id: str | None) -> None:
        self.seq = seq  # of frames[0]
        self.frames = frames
        self.next = 0  # index of the first command still waiting for its reply
        self.started_at = started_at
        self.request_id = request_id

    def split_first(self) -> _Pending:
        """The next command waiting in this run, in the full form (slow paths)."""
        entry = _Pending(self.seq + self.next, self.frames[self.next], self.started_at,
                         self.request_id, Lifetime.REQUEST)
        self.next += 1
        return entry


_Entry = _Pending | _Plain | _Run


def _as_pending(entries: Iterable[_Entry]) -> list[_Pending]:
    """Queue entries in the full form, one per command (slow paths only)."""
    full: list[_Pending] = []
    for entry in entries:
        if type(entry) is tuple:
            seq, frame, started_at, request_id = entry
            full.append(_Pending(seq, frame, started_at, request_id, Lifetime.REQUEST))
        elif type(entry) is _Run:
            while entry.next < len(entry.frames):
                full.append(entry.split_first())
        else:
            full.append(entry)  # type: ignore[arg-type]
    return full


_PLAIN_SPELLINGS: set[bytes] = set()  # command names as sent that are known to be PLAIN


class RespSession:
    """State of one proxied client connection; see the module docstring."""

    def __init__(self, connection_id: int, tag: RequestTag, finished: list[Exchange],
                 reauth: list[bytes] | None = None) -> None:
        self.connection_id = connection_id
        self.tag = tag
        self.finished = finished  # finished exchanges are appended here (shared per listener)
        self.reauth = reauth or []  # the proxy's own login, replayed after RESET
        self.upstream_out: list[bytes] = []  # bytes to send upstream, in order
        self.client_out: list[bytes] = []  # bytes to send to the client, in order
        self.close_client = False  # the client connection must close after client_out
        # Session state, as the server sees it.
        self.protocol = 2
        self.db = 0
        self.in_multi = False
        self.watching = False
        self.monitor = False
        self.channels: set[bytes] = set()  # predicted at send time, like drivers do
        self.patterns: set[bytes] = set()
        self.shard_channels: set[bytes] = set()
        self.upstream_error: str | None = None  # set when the upstream refused our login
        self.awaiting_login = True  # until `upstream_ready`: our own answers must wait too
        self._close_when_told = False
        self.replies_on = True  # False after CLIENT REPLY OFF / SKIP: the server stays silent
        self._skip_one = False
        self._pending: deque[_Entry] = deque()
        self._pubsub_pending = 0
        self._slow_replies = False  # RESP2 subscribe mode or MONITOR: classify each reply
        self._seq = 0
        self._saw_request_command = False
        self._broken = False

    # -- state queries --------------------------------------------------------------------

    @property
    def subscribed(self) -> bool:
        return bool(self.channels or self.patterns or self.shard_channels)

    @property
    def blocked(self) -> bool:
        """The oldest outstanding command is a blocking one (BLPOP, XREAD BLOCK, WAIT...)."""
        head = self._pending[0] if self._pending else None
        return isinstance(head, _Pending) and head.kind == Kind.BLOCKING

    @property
    def outstanding(self) -> int:
        """Commands still waiting for their reply."""
        return sum(len(e.frames) - e.next if type(e) is _Run else 1 for e in self._pending)

    # -- client side ----------------------------------------------------------------------

    def client_commands(self, frames: list[bytes], now: float,
                        names: list[bytes | None] | None = None) -> bool:
        """Complete commands from the client, in order (raw frames from CommandScanner, and
        optionally its `names`, which saves reading each name again).

        True when every frame went to `upstream_out` unchanged and nothing else was queued,
        so the caller may forward the bytes it received as they are."""
        if self._broken:
            return False
        if (names is not None and self.upstream_error is None and self.replies_on
                and _PLAIN_SPELLINGS.issuperset(names)):
            # Ordinary commands (the usual shape): one queue entry, for one command or for a
            # whole pipeline.
            if len(frames) == 1:
                self._seq += 1
                self._pending.append((self._seq, frames[0], now, self.tag.current))
            else:
                self._pending.append(_Run(self._seq + 1, frames, now, self.tag.current))
                self._seq += len(frames)
            self.upstream_out += frames
            self._saw_request_command = True
            return True
        verbatim = True
        pending = self._pending
        queue = pending.append
        send = self.upstream_out.append
        seq = self._seq
        request_id = self.tag.current
        relaying = self.upstream_error is None and self.replies_on
        kinds = _KIND_BY_SPELLING
        for frame, spelling in zip(frames, names or [None] * len(frames), strict=True):
            if spelling is None and frame[0] == 42:  # `*N\r\n$L\r\nNAME...`: NAME in place
                first = frame.find(b"\r\n")
                second = frame.find(b"\r\n", first + 2)
                if second > 0:
                    spelling = frame[second + 2:second + 2 + int(frame[first + 3:second])]
            if spelling is not None and relaying:
                kind = kinds.get(spelling)
                if kind is None:
                    kind = kind_of(spelling)
                if kind == 0:
                    seq += 1
                    queue((seq, frame, now, request_id))
                    send(frame)
                    continue
            verbatim = False
            if seq != self._seq:  # the plain commands before this one, as the slow path sees
                self._seq = seq
                self._saw_request_command = True
            name = command_name(frame)
            kind = KINDS.get(name, Kind.PLAIN) if name is not None else Kind.PLAIN
            if kind == Kind.PLAIN and name is not None and relaying:
                seq += 1
                queue((seq, frame, now, request_id))
                send(frame)
                continue
            self._special_command(frame, name, kind, now, request_id)
            seq = self._seq
            relaying = self.upstream_error is None and self.replies_on
        if seq != self._seq:
            self._seq = seq
            self._saw_request_command = True
        return verbatim

    def _special_command(self, frame: bytes, name: bytes | None, kind: Kind, now: float,
                         request_id: str | None) -> None:
        if name is None:  # `*0`, `*-1`, an empty line: the server skips it without a reply
            if self.upstream_error is None:
                self.upstream_out.append(frame)
            return
        try:
            args = decode_command(frame)
        except ProtocolError:  # the scanner accepted it, so only inline quoting can fail
            args = [name]
        lifetime = Lifetime.REQUEST
        handshake_client = (kind == Kind.CLIENT and len(args) > 1
                            and args[1].upper() in SESSION_CLIENT_SUBCOMMANDS)
        if kind in (Kind.AUTH, Kind.HELLO, Kind.SELECT) or handshake_client:
            lifetime = Lifetime.SESSION
        elif kind == Kind.INFO and not self._saw_request_command:
            lifetime = Lifetime.SESSION  # the ready check of ioredis and friends
        if lifetime == Lifetime.REQUEST:
            self._saw_request_command = True
        record_frame = frame
        if kind in (Kind.AUTH, Kind.HELLO) and password_positions(name.decode(), args):
            redacted = list(args)
            for index in password_positions(name.decode(), args):
                redacted[index] = b"<redacted>"
            record_frame = encode_command(*redacted)
        self._seq += 1
        entry = _Pending(self._seq, record_frame, now, request_id, lifetime, kind)
        entry.args = args

        if self.upstream_error is not None:
            self._answer(entry, _error_frame(self.upstream_error), now)
            if self._close_when_told:
                self.close_client = True
            return
        if self._silenced(entry, kind, args, frame, now):
            return
        if kind == Kind.AUTH:
            self._answer(entry, OK, now)
            return
        upstream_frame = frame
        if kind == Kind.HELLO:
            upstream_frame = self._hello_without_auth(args)
        elif kind == Kind.SUBSCRIBE:
            self._expect_confirmations(entry, name, args)
        elif kind == Kind.MULTI:
            self.in_multi = True
        elif kind in (Kind.EXEC, Kind.DISCARD):
            self.in_multi = False
            self.watching = False
        elif kind == Kind.WATCH:
            self.watching = True
        elif kind == Kind.UNWATCH:
            self.watching = False
        elif kind == Kind.RESET:
            self._reset_state()
        self._pending.append(entry)
        self.upstream_out.append(upstream_frame)
        if kind == Kind.RESET and self.reauth:
            # RESET logs the connection out upstream: log in again, invisibly to the client.
            for command in self.reauth:
                internal = _Pending(0, command, now, None, Lifetime.SESSION)
                internal.kind = Kind.RESET
                internal.synthetic = b""  # marks an internal command: reply swallowed
                self._pending.append(internal)
                self.upstream_out.append(command)

    def _silenced(self, entry: _Pending, kind: Kind, args: list[bytes], frame: bytes,
                  now: float) -> bool:
        """CLIENT REPLY OFF / SKIP: commands the server will not answer are relayed and
        recorded at once, with no server frames. True when `entry` was one of them."""
        mode = args[2].upper() if kind == Kind.CLIENT and len(args) > 2 and \
            args[1].upper() == b"REPLY" else None
        if mode == b"ON":
            self.replies_on, self._skip_one = True, False
            return False
        if mode in (b"OFF", b"SKIP"):
            self.replies_on = False
            self._skip_one = mode == b"SKIP" or self._skip_one
        elif self.replies_on:
            return False
        elif self._skip_one:
            self.replies_on, self._skip_one = True, False
        if kind != Kind.AUTH:
            self.upstream_out.append(self._hello_without_auth(args) if kind == Kind.HELLO
                                     else frame)
        self._finish(entry, [], now, failed=False)
        return True

    @staticmethod
    def _hello_without_auth(args: list[bytes]) -> bytes:
        kept = list(args[:2])
        i = 2
        while i < len(args):
            option = args[i].upper()
            if option == b"AUTH":
                i += 3
            elif option == b"SETNAME":
                kept += args[i:i + 2]
                i += 2
            else:
                kept.append(args[i])
                i += 1
        return encode_command(*kept)

    def _expect_confirmations(self, entry: _Pending, name: bytes, args: list[bytes]) -> None:
        channels = args[1:]
        target = (self.channels if name in (b"SUBSCRIBE", b"UNSUBSCRIBE") else
                  self.patterns if name in (b"PSUBSCRIBE", b"PUNSUBSCRIBE") else
                  self.shard_channels)
        if name.startswith(b"UN") or name.startswith(b"PUN") or name.startswith(b"SUN"):
            entry.replies_left = len(channels) or max(1, len(target))
            if channels:
                target.difference_update(channels)
            else:
                target.clear()
        else:
            entry.replies_left = max(1, len(channels))
            target.update(channels)
        entry.confirm = _SUBSCRIBE_COMMANDS[name]
        self._pubsub_pending += 1
        self._update_mode()

    def _reset_state(self) -> None:
        self.protocol = 2
        self.db = 0
        self.in_multi = self.watching = self.monitor = False
        self.channels.clear()
        self.patterns.clear()
        self.shard_channels.clear()
        self._update_mode()

    def _update_mode(self) -> None:
        self._slow_replies = self.monitor or (
            self.protocol == 2 and (self._pubsub_pending > 0 or self.subscribed))

    def _answer(self, entry: _Pending, reply: bytes, now: float) -> None:
        """Answer `entry` ourselves, after every reply still owed before it."""
        entry.synthetic = reply
        if self._pending or (self.awaiting_login and self.upstream_error is None):
            self._pending.append(entry)
        else:
            self._emit_synthetic(entry, now)

    def _emit_synthetic(self, entry: _Pending, now: float) -> None:
        if entry.seq == 0:  # internal (re-login after RESET): nothing to tell anyone
            return
        assert entry.synthetic is not None
        self.client_out.append(entry.synthetic)
        self._finish(entry, [entry.synthetic], now)
        if entry.close_after:
            self.close_client = True

    def client_protocol_error(self, error: ProtocolError, now: float) -> None:
        """The client sent bytes that are not RESP: answer like redis-server, then close."""
        self._broken = True
        entry = _Pending(0, b"", now, self.tag.current, Lifetime.REQUEST)
        entry.synthetic = _error_frame(f"ERR Protocol error: {error}")
        entry.close_after = True
        if self._pending:
            self._pending.append(entry)
        else:
            self.client_out.append(entry.synthetic)
            self.close_client = True

    # -- server side ----------------------------------------------------------------------

    def server_frames(self, frames: list[bytes], now: float) -> bool:
        """Complete frames from the upstream, in order (raw frames from ReplyScanner).

        True when `client_out` got exactly these frames, unchanged and nothing else."""
        pending = self._pending
        out = self.client_out
        emit = out.append
        record = self.finished.append
        connection_id = self.connection_id
        request_lifetime = Lifetime.REQUEST
        verbatim = True
        i, n = 0, len(frames)
        while i < n:
            frame = frames[i]
            first = frame[0]
            if first == 62 or first == 124 or self._slow_replies or not pending:
                verbatim = False
                self._special_frame(frame, now)
                i += 1
                continue
            entry = pending[0]
            kind = type(entry)
            if kind is _Run:
                # The replies to as much of the pipeline as this read holds, in one loop.
                commands = entry.frames
                index = entry.next
                stop = min(len(commands), index + n - i)
                seq, request_id = entry.seq, entry.request_id
                started_at = entry.started_at
                duration = now - started_at
                begin = i
                while index < stop:
                    frame = frames[i]
                    first = frame[0]
                    if first == 62 or first == 124:  # a push: the outer loop's business
                        break
                    record(new_exchange(
                        connection_id, seq + index, request_lifetime, request_id, started_at,
                        duration, [commands[index]], [frame], first == 45 or first == 33))
                    index += 1
                    i += 1
                out += frames[begin:i]
                entry.next = index
                if index == len(commands):
                    pending.popleft()
                    if pending and type(pending[0]) is _Pending and self._drain_synthetic(now):
                        verbatim = False
                continue
            i += 1
            if kind is tuple:
                pending.popleft()
                seq, client_frame, started_at, request_id = entry
                emit(frame)
                record(new_exchange(
                    connection_id, seq, request_lifetime, request_id, started_at,
                    now - started_at, [client_frame], [frame], first == 45 or first == 33))
                if pending and type(pending[0]) is _Pending and self._drain_synthetic(now):
                    verbatim = False
                continue
            verbatim = False
            if entry.synthetic is not None or entry.confirm is not None:
                self._special_frame(frame, now)
                continue
            pending.popleft()
            emit(frame)
            self._finish(entry, [frame], now)
            if entry.kind:
                self._after_reply(entry, frame)
            self._drain_synthetic(now)
        return verbatim

    def _head(self) -> _Pending | None:
        """The oldest outstanding command, in its full form (slow paths only)."""
        if not self._pending:
            return None
        head = self._pending[0]
        if type(head) is tuple:
            head = self._pending[0] = _as_pending([head])[0]
        elif type(head) is _Run:
            first = head.split_first()
            if head.next == len(head.frames):
                self._pending[0] = first
            else:
                self._pending.appendleft(first)
            head = first
        return head  # type: ignore[return-value]

    def _drain_synthetic(self, now: float) -> bool:
        """Send the proxy's own replies now at the head of the queue; True if any."""
        pending = self._pending
        drained = False
        while pending and type(pending[0]) is _Pending and pending[0].synthetic is not None:
            entry = pending.popleft()
            assert isinstance(entry, _Pending)
            if entry.seq == 0 and entry.kind == Kind.RESET:
                pending.appendleft(entry)  # an internal command still waiting for its reply
                break
            drained = True
            if entry.seq == 0 and entry.close_after:
                self.client_out.append(entry.synthetic)
                self.close_client = True
                continue
            self._emit_synthetic(entry, now)
        return drained

    def _special_frame(self, frame: bytes, now: float) -> None:
        """Replies that need a look inside: pushes, subscribe mode, MONITOR, internal ones."""
        is_push = frame[0] == 62
        if frame[0] == 124:  # an attribute: what matters is the value it annotates
            try:
                value = decode_reply(frame)
                is_push = isinstance(value, Attribute) and isinstance(value.value, Push)
            except ProtocolError:
                is_push = False
        head = self._head()
        if is_push or (self.protocol == 2 and frame[0] == 42 and self._slow_replies):
            name = _first_element(frame)
            if head is not None and head.confirm is not None and name == head.confirm:
                self._confirmation(head, frame, now)
                return
            if is_push or name in _MESSAGES:
                self._push(frame, now)
                return
        if self.monitor and frame[0] == 43 and frame[1:2].isdigit():
            self._push(frame, now)  # a MONITOR line
            return
        if head is None:
            self._push(frame, now)  # nothing asked for it: keep it, flagged as out-of-band
            return
        entry = self._pending.popleft()
        assert isinstance(entry, _Pending)
        if entry.seq == 0 and entry.kind == Kind.RESET:  # our own re-login after RESET
            self._drain_synthetic(now)
            return
        if entry.confirm is not None:  # an error instead of confirmations
            self._pubsub_pending -= 1
            self._update_mode()
        self.client_out.append(frame)
        entry.replies.append(frame)
        self._finish(entry, entry.replies, now)
        if entry.kind:
            self._after_reply(entry, frame)
        self._drain_synthetic(now)

    def _confirmation(self, head: _Pending, frame: bytes, now: float) -> None:
        self.client_out.append(frame)
        head.replies.append(frame)
        head.replies_left -= 1
        if head.replies_left > 0:
            return
        self._pending.popleft()
        self._pubsub_pending -= 1
        self._update_mode()
        self._finish(head, head.replies, now)
        self._drain_synthetic(now)

    def _push(self, frame: bytes, now: float) -> None:
        self.client_out.append(frame)
        self._seq += 1
        self.finished.append(RedisExchange(
            self.connection_id, self._seq, Lifetime.REQUEST, self.tag.current, now, 0.0, [],
            [frame], request={"command": PUSH_COMMAND, "args": []}))

    def _after_reply(self, entry: _Pending, frame: bytes) -> None:
        """State that only changes once the server said yes."""
        ok = frame[0] not in (45, 33)
        args = entry.args or []
        if entry.kind == Kind.HELLO and ok and len(args) > 1 and args[1] in (b"2", b"3"):
            self.protocol = int(args[1])
            self._update_mode()
        elif entry.kind == Kind.SELECT and frame == OK and len(args) > 1 and args[1].isdigit():
            self.db = int(args[1])
        elif entry.kind == Kind.MONITOR and ok:
            self.monitor = True
            self._update_mode()

    def _finish(self, entry: _Pending, server_frames: list[bytes], now: float,
                failed: bool | None = None, error: str | None = None) -> None:
        if failed is None:
            failed = any(f[:1] in (b"-", b"!") for f in server_frames)
        exchange = RedisExchange(
            self.connection_id, entry.seq, entry.lifetime, entry.request_id, entry.started_at,
            now - entry.started_at, [entry.client_frame], list(server_frames), failed)
        if error is not None:
            exchange.response = {"value": None, "error": error}
        self.finished.append(exchange)

    # -- connection events ----------------------------------------------------------------

    def upstream_ready(self, now: float) -> None:
        """The proxy's own login upstream succeeded: answers held back for it can go."""
        self.awaiting_login = False
        self._drain_synthetic(now)

    def upstream_refused(self, error: str, now: float, close: bool = False) -> None:
        """The upstream rejected the proxy's login (or could not be reached): every command,
        queued or future, is answered with the upstream's error text. With `close`, the
        client connection closes once it has been told (at its first command if need be)."""
        self.upstream_error = error
        self._close_when_told = close
        self.upstream_out.clear()
        waiting = _as_pending(self._pending)
        self._pending.clear()
        for entry in waiting:
            if entry.seq == 0:
                if entry.close_after:
                    self.client_out.append(entry.synthetic or b"")
                    self.close_client = True
                continue
            self._answer(entry, _error_frame(error), now)
        if close and waiting:
            self.close_client = True

    def upstream_lost(self, now: float, reason: str = UPSTREAM_LOST) -> None:
        """The upstream connection broke: every outstanding command fails cleanly, and the
        client connection closes (its server-side state is gone)."""
        waiting = _as_pending(self._pending)
        self._pending.clear()
        for entry in waiting:
            if entry.seq == 0:
                continue
            if entry.synthetic is not None and not self.awaiting_login:
                self._emit_synthetic(entry, now)
                continue
            reply = _error_frame(reason)
            self.client_out.append(reply)
            self._finish(entry, [*entry.replies, reply], now, failed=True, error=reason)
        self.close_client = True

    def client_lost(self, now: float) -> None:
        """The client went away: what it was still waiting for is recorded as failed."""
        waiting = _as_pending(self._pending)
        self._pending.clear()
        for entry in waiting:
            if entry.seq == 0 or entry.synthetic is not None:
                continue
            self._finish(entry, entry.replies, now, failed=True, error=CLIENT_GONE)
