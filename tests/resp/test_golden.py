"""Golden streams from a real redis-server: every captured byte parses and re-encodes exactly.

redis-py (RESP2 and RESP3) and a raw socket (DEBUG PROTOCOL for the types redis-py never asks
for, inline commands) talk to throwaway servers through a capturing relay."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from flux_proxy.resp.codec import RespParser, encode
from tests.resp.relay import CapturedConnection, CaptureRelay

DEBUG_TYPES = ["string", "integer", "double", "bignum", "null", "array", "set", "map", "attrib",
               "push", "verbatim", "true", "false"]


def assert_golden(conn: CapturedConnection) -> tuple[int, int]:
    counts = []
    for data, client in ((bytes(conn.client_to_server), True),
                         (bytes(conn.server_to_client), False)):
        parser = RespParser(client=client)
        frames = parser.feed(data)
        parser.eof()
        assert b"".join(f.raw for f in frames) == data
        for frame in frames:
            assert encode(frame.value) == frame.raw, frame
        counts.append(len(frames))
    return counts[0], counts[1]


async def drive_redis_py(port: int, protocol: int) -> None:
    r = aioredis.Redis(port=port, protocol=protocol)
    other = aioredis.Redis(port=port, protocol=protocol)
    key = f"golden{protocol}"
    await r.flushdb()
    await r.set(f"{key}:s", "value")
    await r.get(f"{key}:s")
    await r.get(f"{key}:missing")
    await r.set(f"{key}:bin", b"\x00\r\n\xff" * 100)
    await r.get(f"{key}:bin")
    await r.set(f"{key}:big", b"x" * 200_000)
    await r.get(f"{key}:big")
    await r.incr(f"{key}:n")
    await r.incrbyfloat(f"{key}:f", 1.5)
    await r.rpush(f"{key}:l", *range(20))
    await r.lrange(f"{key}:l", 0, -1)
    await r.hset(f"{key}:h", mapping={"a": 1, "b": "two"})
    await r.hgetall(f"{key}:h")
    await r.sadd(f"{key}:set", "x", "y")
    await r.smembers(f"{key}:set")
    await r.zadd(f"{key}:z", {"a": 1.5, "b": float("inf")})
    await r.zrange(f"{key}:z", 0, -1, withscores=True)
    await r.zscore(f"{key}:z", "a")
    await r.xadd(f"{key}:x", {"f": "v"})
    await r.xrange(f"{key}:x")
    await r.config_get("maxmemory*")
    await r.info()
    await r.client_list()
    await r.scan(0, count=100)
    await r.eval("return {1, 'two', {3, false}, redis.error_reply('nested')}", 0)
    await r.blpop([f"{key}:empty"], timeout=0.05)
    with contextlib.suppress(aioredis.ResponseError):
        await r.lpush(f"{key}:s", "wrongtype")
    pipe = r.pipeline(transaction=False)
    for i in range(50):
        pipe.set(f"{key}:p{i}", i).get(f"{key}:p{i}")
    await pipe.execute()
    async with r.pipeline(transaction=True) as tx:
        await tx.incr(f"{key}:n").lrange(f"{key}:l", 0, 2).hgetall(f"{key}:h").execute()
    async with r.pipeline(transaction=True) as tx:  # a WATCH that fails: EXEC answers null
        await tx.watch(f"{key}:w")
        await other.set(f"{key}:w", "changed")
        tx.multi()
        tx.set(f"{key}:w", "mine")
        with contextlib.suppress(aioredis.WatchError):
            await tx.execute()
    pubsub = r.pubsub()
    await pubsub.subscribe("chan-a", "chan-b")
    await pubsub.psubscribe("pat-*")
    await other.publish("chan-a", "hello")
    await other.publish("pat-1", "world")
    got = []
    while len(got) < 2:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        if message:
            got.append(message)
    await pubsub.unsubscribe()
    await pubsub.punsubscribe()
    await pubsub.aclose()
    await other.aclose()
    await r.aclose()


async def test_redis_py_streams_are_golden(redis_plain):
    for protocol in (2, 3):
        relay = await CaptureRelay(redis_plain.port).start()
        await drive_redis_py(relay.port, protocol)
        await asyncio.sleep(0.05)
        await relay.close()
        totals = [assert_golden(conn) for conn in relay.connections]
        assert len(relay.connections) >= 2
        assert sum(s for _, s in totals) > 100
        server_bytes = b"".join(bytes(c.server_to_client) for c in relay.connections)
        if protocol == 3:
            for marker in (b"\r\n%", b"\r\n~", b"\r\n,", b"\r\n>", b"\r\n_"):
                assert marker in b"\r\n" + server_bytes, marker
        else:
            assert b"$-1\r\n" in server_bytes and b"*-1\r\n" in server_bytes


async def raw_session(port: int, payload: bytes, replies: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    parser = RespParser()
    frames = []
    while len(frames) < replies:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, "server closed early"
        frames += parser.feed(chunk)
    writer.close()
    await writer.wait_closed()


async def test_every_resp3_type_from_debug_protocol_is_golden(redis_debug):
    relay = await CaptureRelay(redis_debug.port).start()
    commands = b"".join(b"DEBUG PROTOCOL %s\r\n" % t.encode() for t in DEBUG_TYPES)
    inline = b"PING\r\nSET inline 'quoted value'\nGET inline\r\n"
    # RESP2 first (how each type degrades), then the same after HELLO 3.
    await raw_session(relay.port, inline + commands, 3 + len(DEBUG_TYPES))
    # In RESP3 `push` sends the push frame and then its reply.
    await raw_session(relay.port, b"HELLO 3\r\n" + commands, 1 + len(DEBUG_TYPES) + 1)
    await relay.close()
    for conn in relay.connections:
        assert_golden(conn)
    resp3 = b"\r\n" + bytes(relay.connections[1].server_to_client)
    for marker in (b"\r\n(", b"\r\n|", b"\r\n=", b"\r\n#t", b"\r\n#f", b"\r\n,", b"\r\n>",
                   b"\r\n%", b"\r\n~", b"\r\n_"):
        assert marker in resp3, marker
