"""Record a driver scenario through the real record proxy, then replay it with no server.

A scenario is `async def scenario(url, tag, variant) -> result`: it connects to `url`, does its
boot IO, calls `tag(REQUEST)` when "the request" starts and `tag(None)` when it ends, and
returns what the driver gave back, to compare the recorded run with the replayed one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from flux_proxy.model import Exchange
from flux_proxy.pg.proxy import PgRecordProxy
from flux_proxy.pg.replay import PgReplayProxy
from flux_proxy.replay import ReplayBook

REQUEST = "req-1"

Tag = Callable[[str | None], None]
Scenario = Callable[[str, Tag, str], Awaitable[Any]]


def url_of(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/flux_test?sslmode=disable"


@dataclass
class Recorded:
    result: Any
    exchanges: list[Exchange] = field(default_factory=list)

    def book(self) -> ReplayBook:
        """As the runtime builds it: the request's exchanges, and the boot record."""
        return ReplayBook([x for x in self.exchanges if x.request_id == REQUEST],
                          [x for x in self.exchanges if x.request_id is None])


async def record(upstream: str, scenario: Scenario, variant: str = "") -> Recorded:
    exchanges: list[Exchange] = []
    proxy = await PgRecordProxy(upstream, exchanges.append).start()
    try:
        result = await scenario(url_of(proxy.port), proxy.set_current_request, variant)
    finally:
        await proxy.close()
    return Recorded(result, exchanges)


@dataclass
class Replayed:
    result: Any
    book: ReplayBook


async def replay(book: ReplayBook, scenario: Scenario, variant: str = "") -> Replayed:
    proxy = PgReplayProxy(book, "DATABASE_URL")
    await proxy.start()
    try:
        result = await scenario(url_of(proxy.port), proxy.set_current_request, variant)
    finally:
        await proxy.close()
    return Replayed(result, book)
