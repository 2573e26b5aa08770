"""IO a worker does between requests (timers, keep-alives) belongs to its boot, never to a
request, and cannot grow without bound over a long-lived worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import ServedApp, serving
from tests.services import RedisServer

pytestmark = pytest.mark.deno


@pytest.fixture(scope="module")
async def served(redis_plain: RedisServer) -> AsyncIterator[ServedApp]:
    async with serving("keepalive_redis.ts", {"REDIS_URL": redis_plain.url()}) as app:
        yield app


async def test_timer_io_between_requests_goes_to_the_boot(served: ServedApp) -> None:
    for _ in range(5):
        reply = await served.request("GET", "/")
        assert reply.body == b"none"
        execution = await served.recorded(reply)
        calls = [(x.request["command"], *x.request["args"]) for x in execution.exchanges]
        # A tick that fires while the request is served is, by design, the request's IO.
        assert calls.count(("GET", "keepalive:missing")) == 1
        assert set(calls) <= {("GET", "keepalive:missing"), ("PING", "tick")}
    slot = served.runtime.slots[0]
    assert slot.boot is not None and slot.boot.id == execution.boot_id
    ticks = [x for x in slot.boot.exchanges if x.request["args"] == ["tick"]]
    assert ticks and all(x.request_id is None for x in ticks)

    # The stored boot record grows too: each execution ships the IO since the last one.
    await asyncio.sleep(0.3)  # more ticks between requests
    last = await served.recorded(await served.request("GET", "/"))
    shipped = slot.boot_shipped
    assert shipped > len(ticks)
    stored = await served.boot(last.boot_id)
    async with asyncio.timeout(10):
        while len(stored.exchanges) < shipped:  # the last part may still be on its way
            await asyncio.sleep(0.05)
            stored = await served.boot(last.boot_id)
    assert [(x.connection, x.seq) for x in stored.exchanges[:shipped]] == [
        (x.connection, x.seq) for x in slot.boot.exchanges[:shipped]]


async def test_boot_io_between_requests_is_capped(served: ServedApp) -> None:
    slot = served.runtime.slots[0]
    assert slot.boot is not None
    slot.boot_cap = len(slot.boot.exchanges) + 20
    async with asyncio.timeout(30):
        while slot.boot_dropped == 0:  # the 10 ms timer fills the rest of the cap
            await asyncio.sleep(0.05)
    assert len(slot.boot.exchanges) == slot.boot_cap
    reply = await served.request("GET", "/")
    assert reply.status == 200  # serving goes on
