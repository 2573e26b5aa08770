"""The in-process fan-out behind Tail."""

from __future__ import annotations

from collections.abc import AsyncIterator

from flux_server.records import ExecutionSummary
from flux_server.store.base import SUBSCRIBER_QUEUE_LIMIT, Subscription, SummaryHub
from tests.server.factory import make_execution


async def test_a_lagging_tail_is_ended_without_slowing_the_others() -> None:
    hub = SummaryHub()
    slow, fast = hub.subscribe(), hub.subscribe()
    summaries = [ExecutionSummary.of(make_execution()) for _ in range(SUBSCRIBER_QUEUE_LIMIT)]
    hub.publish(summaries[: SUBSCRIBER_QUEUE_LIMIT // 2])
    received = [s async for s in _take(fast, SUBSCRIBER_QUEUE_LIMIT // 2)]
    hub.publish(summaries[SUBSCRIBER_QUEUE_LIMIT // 2:] + summaries[:1])  # one too many for slow
    assert slow.lagged and not fast.lagged
    assert hub.subscriber_count == 1
    got_by_slow = [s async for s in slow]  # ends, having kept what fitted
    assert 0 < len(got_by_slow) < SUBSCRIBER_QUEUE_LIMIT
    received += [s async for s in _take(fast, SUBSCRIBER_QUEUE_LIMIT // 2 + 1)]
    assert received == summaries + summaries[:1]
    fast.close()
    hub.publish(summaries[:1])
    assert hub.subscriber_count == 0
    hub.close()
    assert [s async for s in slow] == []  # an ended subscription stays ended


async def _take(subscription: Subscription, count: int) -> AsyncIterator[ExecutionSummary]:
    for _ in range(count):
        yield await anext(subscription)
