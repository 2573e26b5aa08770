"""The one recording model shared by the Postgres and Redis proxies.

An `Exchange` is one request/response unit on one proxied connection (a simple Query up to
ReadyForQuery, an extended batch up to Sync, one Redis command and its reply, ...). The raw
frames are the source of truth; the semantic `request`/`response` dicts are derived from them
off the hot path, by the protocol module that produced the exchange.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Protocol(StrEnum):
    POSTGRES = "postgres"
    REDIS = "redis"


class Lifetime(StrEnum):
    """How long an exchange's answer stays valid in replay (DESIGN.md, "three lifetimes")."""

    SESSION = "session"  # startup, auth, HELLO, SELECT: answered on any number of connections
    CONNECTION = "connection"  # Parse/Describe/Close: answered from a per-SQL catalog
    REQUEST = "request"  # Execute, simple Query, Redis commands: each answer used once


class Source(StrEnum):
    RECORDED = "recorded"
    LIVE = "live"


@dataclass(slots=True)
class Exchange:
    """Compared by value (records round-trip through proto and JSON); nothing on the hot path
    compares exchanges, so lazily built semantic fields are only decoded where tests ask."""

    protocol: Protocol
    connection: int  # proxy-assigned connection id, unique per listener
    seq: int  # per-connection sequence number
    lifetime: Lifetime
    request_id: str | None  # the request tag current when the client sent it; None = boot
    started_at: float  # wall clock, seconds since the epoch
    duration: float  # seconds from the first client frame to the last server frame
    client_frames: list[bytes] = field(default_factory=list)  # raw, client -> server
    server_frames: list[bytes] = field(default_factory=list)  # raw, server -> client
    request: dict[str, Any] = field(default_factory=dict)  # {sql, params, ...} / {command, args}
    response: dict[str, Any] = field(default_factory=dict)  # {command_tag, ...} / {value, error}
    source: Source | None = None
    failed: bool = False  # the server answered an error, or the connection broke mid-exchange

    def to_json(self, base_time: float | None = None, frames: bool = False) -> dict[str, Any]:
        """The exchange JSON shape of DESIGN.md; `base_time` makes `offset_ms` relative."""
        base = self.started_at if base_time is None else base_time
        out: dict[str, Any] = {
            "seq": self.seq,
            "protocol": self.protocol.value,
            "connection": self.connection,
            "lifetime": self.lifetime.value,
            "offset_ms": round((self.started_at - base) * 1000, 3),
            "duration_ms": round(self.duration * 1000, 3),
            "request": self.request,
            "response": self.response,
        }
        if self.source is not None:
            out["source"] = self.source.value
        if frames:
            out["request_id"] = self.request_id
            out["started_at"] = self.started_at
            out["failed"] = self.failed
            out["frames"] = {
                "client": [base64.b64encode(f).decode() for f in self.client_frames],
                "server": [base64.b64encode(f).decode() for f in self.server_frames],
            }
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Exchange:
        """Inverse of `to_json(frames=True)`."""
        frames = doc.get("frames", {})
        return cls(
            protocol=Protocol(doc["protocol"]),
            connection=doc["connection"],
            seq=doc["seq"],
            lifetime=Lifetime(doc["lifetime"]),
            request_id=doc.get("request_id"),
            started_at=doc.get("started_at", 0.0),
            duration=doc["duration_ms"] / 1000,
            client_frames=[base64.b64decode(f) for f in frames.get("client", [])],
            server_frames=[base64.b64decode(f) for f in frames.get("server", [])],
            request=doc.get("request", {}),
            response=doc.get("response", {}),
            source=Source(doc["source"]) if doc.get("source") else None,
            failed=bool(doc.get("failed", (doc.get("response") or {}).get("error"))),
        )


ExchangeSink = Callable[[Exchange], None]
"""Where finished exchanges leave a proxy. Called on the event loop; must not block."""


class RequestTag:
    """The request a proxy listener is currently serving (one request at a time per worker).

    The runtime sets it before dispatching a request to the worker and clears it after; every
    exchange whose first client frame arrives while it is set belongs to that request.
    """

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: str | None = None

    def set_current_request(self, request_id: str | None) -> None:
        self.current = request_id
