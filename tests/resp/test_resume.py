"""Redis resume proxy: live after the (here empty) durable prefix, and a live side that dies
ends the client's connection with an error instead of leaving it waiting."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from flux_proxy.model import Exchange
from flux_proxy.replay import ReplayBook
from flux_proxy.resp.resume import RedisResumeProxy
from tests.services import RedisServer


async def test_live_side_dying_answers_an_error_and_never_hangs() -> None:
    server = RedisServer().start()
    live: list[Exchange] = []
    proxy = RedisResumeProxy(ReplayBook([]), server.url(), live.append)
    await proxy.start()
    proxy.set_current_request("resumed")
    client = aioredis.Redis(port=proxy.port, protocol=2, single_connection_client=True)
    try:
        assert await asyncio.wait_for(client.set("k", "v"), 5)  # past the prefix: live
        server.stop()
        for _ in range(4):  # each answered at once with an error: none waits forever
            with pytest.raises((redis.exceptions.ResponseError,
                                redis.exceptions.ConnectionError)):
                await asyncio.wait_for(client.get("k"), 5)
    finally:
        await client.aclose()
        await proxy.close()
        server.stop()
    assert [x.request["command"] for x in live if x.request_id == "resumed"][:1] == ["SET"]
