"""`PgExchange`: the shared `Exchange`, assembled in place and decoded lazily.

The session builds one object per exchange and fills it while frames arrive (no second object
at completion). Its semantic `request`/`response` are decoded from the raw frames the first
time either is read, so the proxy's hot path never decodes a field.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from flux_proxy.model import Exchange, Lifetime, Protocol
from flux_proxy.pg.codec import BACKEND_VALID, FRONTEND_VALID, split_whole
from flux_proxy.pg.semantic import ExchangeContext, StatementInfo, build_semantics

try:  # the fast path's constructor in C (setup.py builds it)
    from flux_proxy._scan import new_with_slots, slot_offsets
except ImportError:  # pragma: no cover - only without a compiler at install time
    new_with_slots = slot_offsets = None

_client_slot = Exchange.__dict__["client_frames"]  # the base dataclass's slot descriptors
_server_slot = Exchange.__dict__["server_frames"]
_request_slot = Exchange.__dict__["request"]
_response_slot = Exchange.__dict__["response"]

KIND_SIMPLE = "simple"
KIND_EXTENDED = "extended"
KIND_FUNCTION = "function"
KIND_SESSION = "session"


class PgExchange(Exchange):
    """Built once per exchange on the proxy's hot path, so `__init__` sets only what varies:
    the protocol is a class constant, and `request`/`response` stay unset until first read."""

    __slots__ = ("bind", "broken", "done", "has_execute", "kind", "last_at", "pending",
                 "sealed", "statement")
    protocol = Protocol.POSTGRES  # type: ignore[assignment]  # shadows the base slot: read-only

    def __init__(self, connection: int, seq: int, kind: str, request_id: str | None,
                 started_at: float, lifetime: Lifetime = Lifetime.REQUEST,
                 client_frames: list[bytes] | None = None) -> None:
        self.connection = connection
        self.seq = seq
        self.lifetime = lifetime
        self.request_id = request_id
        self.started_at = started_at
        self.duration = 0.0
        self.client_frames = [] if client_frames is None else client_frames
        self.server_frames = []
        self.source = None
        self.failed = False
        # Assembly state (see PgSession)
        self.kind = kind
        self.last_at = started_at
        self.pending = 0  # client messages still waiting for (the end of) their reply
        self.sealed = False  # no more client frames will join
        self.has_execute = False
        self.done = False
        # Session state this exchange used, snapshotted at completion
        self.statement: StatementInfo | None = None
        self.bind: bytes | None = None
        self.broken: str | None = None

    # A whole read taken by the session's fast path is kept as it came, one bytes object, and
    # split into frames the first time someone reads them.
    @property  # type: ignore[override]
    def client_frames(self) -> list[bytes]:
        frames = _client_slot.__get__(self)
        if type(frames) is bytes:
            frames = split_whole(frames, FRONTEND_VALID)
            _client_slot.__set__(self, frames)
        return frames  # type: ignore[no-any-return]

    @client_frames.setter
    def client_frames(self, value: list[bytes]) -> None:
        _client_slot.__set__(self, value)

    @property  # type: ignore[override]
    def server_frames(self) -> list[bytes]:
        frames = _server_slot.__get__(self)
        if type(frames) is bytes:  # b"" until the first reply frame
            frames = split_whole(frames, BACKEND_VALID) if frames else []
            _server_slot.__set__(self, frames)
        return frames  # type: ignore[no-any-return]

    @server_frames.setter
    def server_frames(self, value: list[bytes]) -> None:
        _server_slot.__set__(self, value)

    def _decode(self) -> None:
        context = ExchangeContext(self.kind, self.statement, self.bind, self.broken)
        request, response = build_semantics(self.client_frames, self.server_frames, context)
        _request_slot.__set__(self, request)
        _response_slot.__set__(self, response)

    def _decoded(self) -> bool:
        try:
            _response_slot.__get__(self)
        except AttributeError:
            return False
        return True

    @property
    def undecoded(self) -> bool:
        """Neither semantic field was read or set yet: the raw frames and the session state
        say everything."""
        return not self._decoded()

    @property  # type: ignore[override]
    def request(self) -> dict[str, Any]:
        try:
            return _request_slot.__get__(self)  # type: ignore[no-any-return]
        except AttributeError:  # not read yet: decode both from the raw frames
            self._decode()
            return _request_slot.__get__(self)  # type: ignore[no-any-return]

    @request.setter
    def request(self, value: dict[str, Any]) -> None:
        if not self._decoded():
            self._decode()  # a later decode must not overwrite this assignment
        _request_slot.__set__(self, value)

    @property  # type: ignore[override]
    def response(self) -> dict[str, Any]:
        try:
            return _response_slot.__get__(self)  # type: ignore[no-any-return]
        except AttributeError:
            self._decode()
            return _response_slot.__get__(self)  # type: ignore[no-any-return]

    @response.setter
    def response(self, value: dict[str, Any]) -> None:
        if not self._decoded():
            self._decode()
        _response_slot.__set__(self, value)


def rebuild_pg_exchange(connection: int, seq: int, kind: str, request_id: str | None,
                         started_at: float, lifetime: Lifetime, duration: float,
                         client: bytes | list[bytes], server: bytes | list[bytes],
                         source: Any, failed: bool, statement: StatementInfo | None,
                         bind: bytes | None, broken: str | None) -> PgExchange:
    """A finished exchange from its recorded parts (another process's copy of one)."""
    ex = PgExchange(connection, seq, kind, request_id, started_at, lifetime)
    ex.duration, ex.source, ex.failed = duration, source, failed
    _client_slot.__set__(ex, client)
    _server_slot.__set__(ex, server)
    ex.statement, ex.bind, ex.broken = statement, bind, broken
    ex.done = ex.sealed = True
    return ex


def _whole_exchange(connection: int, seq: int, kind: str, request_id: str | None,
                    started_at: float, last_at: float, client_frames: list[bytes] | bytes,
                    has_execute: bool) -> PgExchange:
    ex = PgExchange(connection, seq, kind, request_id, started_at)
    ex.last_at = last_at
    _client_slot.__set__(ex, client_frames)
    ex.has_execute = has_execute
    ex.pending = 1
    ex.sealed = True
    return ex


whole_exchange: Callable[[int, int, str, str | None, float, float, list[bytes] | bytes, bool],
                         PgExchange] = _whole_exchange
"""The exchange of a read that is one whole Query or extended batch (its frames, or the read
itself): its client frames are all in, and one reply (up to ReadyForQuery) is pending. The
same object as `PgExchange(...)` with `pending = 1` and `sealed = True`, but built in C when
the extension is there: it is the one object the proxy makes per transaction, and a Python
`__init__` was a fifth of the session's cost. The C one is also left out of the cyclic garbage
collector's walks (an exchange holds bytes, numbers and lists of them: it cannot be part of a
cycle), which the shipper's queue of unsent exchanges otherwise paid for at every collection.
Arguments: connection, seq, kind, request_id, started_at, last_at (= started_at),
client_frames, has_execute."""

if new_with_slots is not None:
    whole_exchange = partial(  # the constant slots first, then the arguments above
        new_with_slots, PgExchange, slot_offsets(PgExchange, (
            "lifetime", "duration", "server_frames", "source", "failed", "pending", "sealed",
            "done", "statement", "bind", "broken", "connection", "seq", "kind", "request_id",
            "started_at", "last_at", "client_frames", "has_execute")),
        Lifetime.REQUEST, 0.0, b"", None, False, 1, True, False, None, None, None)


def recorded_client(ex: PgExchange) -> bytes | list[bytes]:
    """The client side as recorded: a whole read (bytes) kept by the fast path, or frames."""
    return _client_slot.__get__(ex)  # type: ignore[no-any-return]


recorded_server: Callable[[PgExchange], bytes | list[bytes]] = _server_slot.__get__
"""The server side as recorded, unsplit (b"" until the first reply frame)."""
