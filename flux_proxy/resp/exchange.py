"""`RedisExchange`: the shared `Exchange`, with its semantic fields decoded on first read.

The proxy's hot path only keeps raw frames; `request` and `response` are derived from them
the first time anyone reads them (the sink, `to_json`, a test), never on the per-read path.
Setting them explicitly (pushes, failures) stores the given value as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from flux_proxy.model import Exchange, Lifetime, Protocol
from flux_proxy.resp.render import request_from_frame, response_from_frames

try:  # the hot path's constructor in C (setup.py builds it)
    from flux_proxy._scan import new_with_slots, slot_offsets
except ImportError:  # pragma: no cover - only without a compiler at install time
    new_with_slots = slot_offsets = None

_REQUEST = Exchange.__dict__["request"]  # the slot descriptors of the base dataclass
_RESPONSE = Exchange.__dict__["response"]


def _set_or_none(slot: Any, exchange: Exchange) -> Any:
    try:
        return slot.__get__(exchange)
    except AttributeError:  # not decoded yet
        return None


class RedisExchange(Exchange):
    """Built once per command on the proxy's hot path, so `__init__` sets only what varies:
    the protocol is a class constant, and `request`/`response` stay unset until first read."""

    __slots__ = ()
    protocol = Protocol.REDIS  # type: ignore[assignment]  # shadows the base slot: read-only

    def __init__(self, connection: int, seq: int, lifetime: Lifetime, request_id: str | None,
                 started_at: float, duration: float, client_frames: list[bytes],
                 server_frames: list[bytes], failed: bool = False,
                 request: dict[str, Any] | None = None,
                 response: dict[str, Any] | None = None) -> None:
        self.connection = connection
        self.seq = seq
        self.lifetime = lifetime
        self.request_id = request_id
        self.started_at = started_at
        self.duration = duration
        self.client_frames = client_frames
        self.server_frames = server_frames
        self.source = None
        self.failed = failed
        if request is not None:
            _REQUEST.__set__(self, request)
        if response is not None:
            _RESPONSE.__set__(self, response)

    @property  # type: ignore[override]
    def request(self) -> dict[str, Any]:
        try:
            return _REQUEST.__get__(self)  # type: ignore[no-any-return]
        except AttributeError:  # not read yet: derive it from the raw frame
            value = (request_from_frame(self.client_frames[0]) if self.client_frames
                     else {"command": "", "args": []})
            _REQUEST.__set__(self, value)
            return value

    @request.setter
    def request(self, value: dict[str, Any]) -> None:
        _REQUEST.__set__(self, value)

    @property  # type: ignore[override]
    def response(self) -> dict[str, Any]:
        try:
            return _RESPONSE.__get__(self)  # type: ignore[no-any-return]
        except AttributeError:
            value = response_from_frames(self.server_frames)
            _RESPONSE.__set__(self, value)
            return value

    @response.setter
    def response(self, value: dict[str, Any]) -> None:
        _RESPONSE.__set__(self, value)

    @property
    def undecoded(self) -> bool:
        """Neither semantic field was read or set yet: the raw frames say everything."""
        return _set_or_none(_REQUEST, self) is None and _set_or_none(_RESPONSE, self) is None

    def __eq__(self, other: object) -> bool:
        """Equal to any `Exchange` with the same fields (the base class compares classes)."""
        if not isinstance(other, Exchange):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name)
                   for name in Exchange.__dataclass_fields__)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the base dataclass


new_exchange: Callable[[int, int, Lifetime, str | None, float, float, list[bytes], list[bytes],
                        bool], RedisExchange] = RedisExchange
"""`RedisExchange(connection, seq, lifetime, request_id, started_at, duration, client_frames,
server_frames, failed)` for the session's per-reply loops: the same object, built in C when
the extension is there (a Python `__init__` was the largest single cost per exchange), and
untracked by the cyclic garbage collector, which walked every exchange the shipper still held
(it cannot be part of a cycle: see `flux_proxy._scan.new_with_slots`)."""

if new_with_slots is not None:
    new_exchange = partial(new_with_slots, RedisExchange, slot_offsets(RedisExchange, (
        "source", "connection", "seq", "lifetime", "request_id", "started_at", "duration",
        "client_frames", "server_frames", "failed")), None)
