"""What replay proxies answer from: one recording, shared by every replay proxy of a run.

The book holds the request's checkpoints (each answered at most once, by the matcher), the
boot record's (answering the replay worker's own start-up IO, never counted as a divergence of
the request), and the session and connection exchanges that handshakes and statement catalogs
are answered from. Proxies report every exchange they answer back to the book, which is what
the replay report is built from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flux_proxy.matcher import Match, Matcher, MatchKind, RequestKey
from flux_proxy.model import Exchange, Lifetime, Protocol


@dataclass(slots=True)
class ReplayedExchange:
    """One exchange of the replayed run: what the client asked, and what answered it."""

    exchange: Exchange  # request as the client sent it now, response as answered
    match: Match
    during_request: bool  # False: the worker's start-up or idle IO, answered from boot

    @property
    def source(self) -> str:
        if self.match.kind is MatchKind.MISS:
            return "none"
        return "recorded" if self.during_request else "boot"


@dataclass
class ReplayBook:
    request_exchanges: list[Exchange]
    boot_exchanges: list[Exchange] = field(default_factory=list)
    request_id: str | None = None  # the replayed run's own id, once it is being served

    def __post_init__(self) -> None:
        self._request = Matcher(self.request_exchanges)
        self._boot = Matcher(self.boot_exchanges)
        self.replayed: list[ReplayedExchange] = []

    def exchanges_of(self, protocol: Protocol, lifetimes: Iterable[Lifetime]) -> list[Exchange]:
        """Recorded exchanges to build handshake answers and statement catalogs from: the
        boot record's first (the app's own start-up), then the request's."""
        wanted = set(lifetimes)
        return [x for x in (*self.boot_exchanges, *self.request_exchanges)
                if x.protocol is protocol and x.lifetime in wanted]

    def take(self, key: RequestKey, during_request: bool) -> Match:
        """The recorded answer for a request-lifetime exchange, by the matching cascade."""
        if during_request:
            return self._request.match(key)
        match = self._boot.match(key)
        if match.kind is MatchKind.DIVERGED:
            match.divergences = []  # start-up IO never counts as a divergence of the request
        return match

    def answered(self, exchange: Exchange, match: Match, during_request: bool) -> None:
        self.replayed.append(ReplayedExchange(exchange, match, during_request))

    @property
    def stopped_at(self) -> ReplayedExchange | None:
        return next((r for r in self.replayed
                     if r.during_request and r.match.kind is MatchKind.MISS), None)

    def unused(self) -> list[Exchange]:
        return self._request.unused()
