"""Redis resume proxy: live after the (here empty) durable prefix, and a live side that dies
ends the client's connection with an error instead of leaving it waiting."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from flux_proxy.model import Exchange
from flux_proxy.replay import ReplayBook
from flux_proxy.resp.proxy import RedisProxy
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


async def test_subscriptions_go_live_with_every_confirmation_and_message() -> None:
    """SUBSCRIBE answers once per channel and then messages arrive unasked: past the durable
    prefix the connection is a plain pipe to the live side, so each reaches the client in the
    server's order, none is taken for the reply to another command."""
    server = RedisServer().start()
    live: list[Exchange] = []
    proxy = RedisResumeProxy(ReplayBook([]), server.url(), live.append)
    await proxy.start()
    proxy.set_current_request("resumed")
    subscriber = aioredis.Redis(port=proxy.port, protocol=2)
    publisher = aioredis.Redis(port=server.port, protocol=2)
    pubsub = subscriber.pubsub()
    try:
        await asyncio.wait_for(pubsub.subscribe("a", "b"), 5)
        confirmations = [await asyncio.wait_for(pubsub.get_message(timeout=2), 5)
                         for _ in range(2)]
        assert [(m["type"], m["channel"]) for m in confirmations] == [
            ("subscribe", b"a"), ("subscribe", b"b")]
        assert await publisher.publish("b", "hello") == 1
        message = await asyncio.wait_for(pubsub.get_message(timeout=2), 5)
        assert message is not None and (message["channel"], message["data"]) == (b"b", b"hello")
        await pubsub.ping()
        pong = await asyncio.wait_for(pubsub.get_message(timeout=2), 5)
        assert pong is not None and pong["type"] == "pong"
    finally:
        await pubsub.aclose()
        await subscriber.aclose()
        await publisher.aclose()
        await proxy.close()
        server.stop()


async def test_resp3_pushes_are_not_taken_for_replies() -> None:
    """Client-side caching: an invalidation push from the live side, between replies, reaches
    the client as a push, and every command still gets its own reply."""
    server = RedisServer().start()
    handshake: list[Exchange] = []  # a RESP3 client's HELLO, recorded as the app's start-up
    recorder = RedisProxy(server.url(), handshake.append)
    await recorder.start()
    first = aioredis.Redis(port=recorder.port, protocol=3, single_connection_client=True)
    await first.ping()
    await first.aclose()
    await recorder.close()
    proxy = RedisResumeProxy(ReplayBook([], handshake), server.url(), lambda _x: None)
    await proxy.start()
    proxy.set_current_request("resumed")
    client = aioredis.Redis(port=proxy.port, protocol=3, single_connection_client=True)
    writer = aioredis.Redis(port=server.port, protocol=2)
    try:
        await client.set("k", "1")  # past the (empty) durable prefix: live from here on
        assert await asyncio.wait_for(client.execute_command("CLIENT", "TRACKING", "ON"), 5)
        assert await client.get("k") == b"1"  # now tracked
        # The client's own write invalidates its cached key: the server pushes the
        # invalidation right before the reply, and again for the other writer's.
        assert await asyncio.wait_for(client.set("k", "3"), 5)
        await writer.set("k", "2")
        await asyncio.sleep(0.2)
        for round_ in range(3):  # the pushes must not shift the replies
            assert await asyncio.wait_for(client.echo(f"e{round_}"), 5) == f"e{round_}".encode()
        assert await asyncio.wait_for(client.get("k"), 5) == b"2"
    finally:
        await client.aclose()
        await writer.aclose()
        await proxy.close()
        server.stop()
