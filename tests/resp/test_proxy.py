"""The Redis record proxy against real servers, driven by redis-py and raw sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from flux_proxy.model import Exchange, Lifetime, Protocol
from flux_proxy.resp.codec import RespParser, encode_command
from flux_proxy.resp.proxy import RedisProxy
from flux_proxy.resp.session import PUSH_COMMAND, UPSTREAM_LOST
from flux_proxy.resp.standalone import run_standalone
from tests.services import RedisServer, free_port


class Recorder:
    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []

    def __call__(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)

    def commands(self, name: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.request.get("command") == name]

    def one(self, name: str) -> Exchange:
        found = self.commands(name)
        assert len(found) == 1, [e.request for e in self.exchanges]
        return found[0]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        for _ in range(500):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"never happened; recorded: {[e.request for e in self.exchanges]}")


@contextlib.asynccontextmanager
async def proxy_for(url: str) -> AsyncIterator[tuple[RedisProxy, Recorder]]:
    recorder = Recorder()
    proxy = RedisProxy(url, recorder)
    await proxy.start()
    try:
        yield proxy, recorder
    finally:
        await proxy.close()


def client(proxy: RedisProxy, protocol: int = 2, **kwargs: object) -> aioredis.Redis:
    return aioredis.Redis(port=proxy.port, protocol=protocol, **kwargs)  # type: ignore[arg-type]


async def raw_roundtrip(port: int, payload: bytes, replies: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    parser = RespParser()
    frames: list[bytes] = []
    while len(frames) < replies:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, f"closed after {frames}"
        frames += [f.raw for f in parser.feed(chunk)]
    writer.close()
    return frames


@pytest.mark.parametrize("protocol", [2, 3])
async def test_commands_are_recorded_field_by_field(redis_plain, protocol):
    async with proxy_for(redis_plain.url()) as (proxy, rec):
        r = client(proxy, protocol)
        proxy.set_current_request("req-1")
        assert await r.set(f"k{protocol}", "v\xe9") is True
        assert await r.get(f"k{protocol}") == "v\xe9".encode()
        await r.hset(f"h{protocol}", mapping={"a": "1"})
        assert await r.hgetall(f"h{protocol}") == {b"a": b"1"}
        proxy.set_current_request(None)
        assert await r.get(f"missing{protocol}") is None
        with pytest.raises(aioredis.ResponseError):
            await r.lpush(f"k{protocol}", "x")
        await r.aclose()
        await rec.wait_for(lambda: len(rec.commands("LPUSH")) == 1)

    set_ex = rec.one("SET")
    assert set_ex.protocol is Protocol.REDIS
    assert set_ex.lifetime is Lifetime.REQUEST
    assert set_ex.request_id == "req-1"
    assert set_ex.request == {"command": "SET", "args": [f"k{protocol}", "v\xe9"]}
    assert set_ex.client_frames == [encode_command("SET", f"k{protocol}", "v\xe9")]
    assert set_ex.server_frames == [b"+OK\r\n"]
    assert set_ex.response == {"value": "OK", "error": None}
    assert set_ex.failed is False
    assert set_ex.duration >= 0 and set_ex.started_at > 0
    get_ex = rec.commands("GET")[0]
    assert get_ex.server_frames == [b"$3\r\nv\xc3\xa9\r\n"]
    assert get_ex.response == {"value": "v\xe9", "error": None}
    assert get_ex.seq == set_ex.seq + 1 and get_ex.connection == set_ex.connection
    hgetall = rec.one("HGETALL")
    if protocol == 3:
        assert hgetall.server_frames == [b"%1\r\n$1\r\na\r\n$1\r\n1\r\n"]
        assert hgetall.response["value"] == {"a": "1"}
        hello = rec.one("HELLO")
        assert hello.lifetime is Lifetime.SESSION
        assert hello.request == {"command": "HELLO", "args": ["3"]}
        assert hello.response["value"]["proto"] == 3
    else:
        assert hgetall.response["value"] == ["a", "1"]
        assert not rec.commands("HELLO")
    missing = rec.commands("GET")[1]
    assert missing.request_id is None
    assert missing.server_frames == [b"$-1\r\n" if protocol == 2 else b"_\r\n"]
    assert missing.response == {"value": None, "error": None}
    lpush = rec.one("LPUSH")
    assert lpush.failed is True
    assert lpush.response["value"] is None
    assert lpush.response["error"].startswith("WRONGTYPE")
    setinfo = [e for e in rec.commands("CLIENT") if e.request["args"][0] == "SETINFO"]
    assert setinfo and all(e.lifetime is Lifetime.SESSION for e in setinfo)
    seqs = [e.seq for e in rec.exchanges if e.connection == set_ex.connection]
    assert seqs == sorted(seqs) == list(range(1, len(seqs) + 1))


@pytest.mark.parametrize("protocol", [2, 3])
async def test_pipelines_and_transactions(redis_plain, protocol):
    async with proxy_for(redis_plain.url()) as (proxy, rec):
        r = client(proxy, protocol)
        pipe = r.pipeline(transaction=False)
        for i in range(100):
            pipe.set(f"p{i}", i).get(f"p{i}")
        results = await pipe.execute()
        assert results[1::2] == [str(i).encode() for i in range(100)]
        async with r.pipeline(transaction=True) as tx:
            assert await tx.incr("tx").incr("tx").get("tx").execute() == [1, 2, b"2"]
        other = client(proxy, protocol)
        async with r.pipeline(transaction=True) as tx:
            await tx.watch("watched")
            await other.set("watched", "changed")
            tx.multi()
            tx.set("watched", "mine")
            with pytest.raises(aioredis.WatchError):
                await tx.execute()
        await r.delete("tx")
        await other.aclose()
        await r.aclose()
        await rec.wait_for(lambda: len(rec.commands("DEL")) == 1)
    gets = rec.commands("GET")
    assert [g.response["value"] for g in gets[:100]] == [str(i) for i in range(100)]
    multi, exec_ok, exec_aborted = rec.commands("MULTI")[0], *rec.commands("EXEC")
    assert multi.response["value"] == "OK"
    queued = [e for e in rec.exchanges
              if e.connection == multi.connection and multi.seq < e.seq < exec_ok.seq]
    assert [q.request["command"] for q in queued] == ["INCRBY", "INCRBY", "GET"]
    assert all(q.response == {"value": "QUEUED", "error": None} for q in queued)
    assert exec_ok.response == {"value": [1, 2, "2"], "error": None}
    assert exec_aborted.response == {"value": None, "error": None}
    assert exec_aborted.server_frames == [b"*-1\r\n" if protocol == 2 else b"_\r\n"]
    assert rec.one("WATCH").response["value"] == "OK"


@pytest.mark.parametrize("protocol", [2, 3])
async def test_pubsub_confirmations_and_pushed_messages(redis_plain, protocol):
    async with proxy_for(redis_plain.url()) as (proxy, rec):
        r = client(proxy, protocol)
        publisher = client(proxy, protocol)
        pubsub = r.pubsub()
        await pubsub.subscribe("news", "sport")
        await pubsub.psubscribe("weather.*")
        for _ in range(3):
            assert (await pubsub.get_message(timeout=5))["type"] in ("subscribe", "psubscribe")
        proxy.set_current_request("req-pub")
        assert await publisher.publish("news", "hello") == 1
        assert await publisher.publish("weather.paris", "rain") == 1
        got = [await pubsub.get_message(timeout=5) for _ in range(2)]
        assert [m["data"] for m in got] == [b"hello", b"rain"]
        await pubsub.unsubscribe()
        await pubsub.punsubscribe()
        assert (await pubsub.get_message(timeout=5))["type"] == "unsubscribe"
        await pubsub.aclose()
        await publisher.set("after", "pubsub")
        await publisher.aclose()
        await r.aclose()
        await rec.wait_for(lambda: len(rec.commands("PUNSUBSCRIBE")) == 1)
    subscribe = rec.one("SUBSCRIBE")
    assert subscribe.request == {"command": "SUBSCRIBE", "args": ["news", "sport"]}
    assert len(subscribe.server_frames) == 2
    assert subscribe.response["value"] == [["subscribe", "news", 1], ["subscribe", "sport", 2]]
    assert subscribe.server_frames[0][:1] == (b">" if protocol == 3 else b"*")
    pushes = rec.commands(PUSH_COMMAND)
    assert [p.response["value"] for p in pushes] == [
        ["message", "news", "hello"], ["pmessage", "weather.*", "weather.paris", "rain"]]
    assert all(p.client_frames == [] and p.request_id == "req-pub" for p in pushes)
    assert all(p.connection == subscribe.connection for p in pushes)
    unsubscribe = rec.one("UNSUBSCRIBE")
    assert len(unsubscribe.server_frames) == 2  # one per channel still subscribed
    assert rec.one("PUNSUBSCRIBE").response["value"] == ["punsubscribe", "weather.*", 0]
    assert rec.one("SET").response["value"] == "OK"


async def test_blocking_command_waits_for_its_reply(redis_plain):
    async with proxy_for(redis_plain.url()) as (proxy, rec):
        r, pusher = client(proxy), client(proxy)
        await r.delete("queue")
        waiter = asyncio.ensure_future(r.blpop(["queue"], timeout=10))
        await rec.wait_for(lambda: any(c.session.blocked for c in proxy.connections))
        assert await pusher.rpush("queue", "job") == 1
        assert list(await waiter) == [b"queue", b"job"]
        await r.aclose()
        await pusher.aclose()
        await rec.wait_for(lambda: len(rec.commands("BLPOP")) == 1)
    blpop = rec.one("BLPOP")
    assert blpop.response == {"value": ["queue", "job"], "error": None}
    rpush = rec.one("RPUSH")
    assert blpop.started_at < rpush.started_at
    assert blpop.started_at + blpop.duration >= rpush.started_at


async def test_select_db_and_info_ready_check(redis_plain):
    direct = aioredis.Redis(port=redis_plain.port, db=5)
    await direct.delete("in-five")
    async with proxy_for(redis_plain.url(db=5)) as (proxy, rec):
        # What ioredis does on connect: INFO ready check, then commands; SELECT from the URL.
        frames = await raw_roundtrip(
            proxy.port, encode_command("INFO") + encode_command("SELECT", 5)
            + encode_command("SET", "in-five", "yes") + encode_command("INFO", "server"), 4)
        assert frames[1] == b"+OK\r\n" and frames[2] == b"+OK\r\n"
        await rec.wait_for(lambda: len(rec.exchanges) == 4)
    assert await direct.get("in-five") == b"yes"  # the proxy's upstream is on db 5
    await direct.aclose()
    info_check, select, _set, info_later = rec.exchanges
    assert info_check.lifetime is Lifetime.SESSION
    assert "redis_version" in info_check.response["value"]
    assert select.lifetime is Lifetime.SESSION
    assert select.request == {"command": "SELECT", "args": ["5"]}
    assert info_later.lifetime is Lifetime.REQUEST


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("user, password", [(None, "secret"), ("flux", "fluxpw")])
async def test_requirepass_and_acl_user_upstream(redis_auth, protocol, user, password):
    async with proxy_for(redis_auth.url(user=user, password=password, db=1)) as (proxy, rec):
        # The app's URL keeps the user but has no password; drivers may still send AUTH.
        r = client(proxy, protocol, username=user, password="ignored-by-proxy")
        assert await r.set("authed", "1") is True
        assert await r.acl_whoami() in ((user or "default"), (user or "default").encode())
        assert await r.client_getname() is None
        await r.aclose()
        await rec.wait_for(lambda: len(rec.commands("ACL")) == 1)
    auth = rec.commands("HELLO" if protocol == 3 else "AUTH")[0]
    assert auth.lifetime is Lifetime.SESSION
    assert "ignored-by-proxy" not in json.dumps(auth.to_json(frames=True))
    assert "<redacted>" in auth.request["args"]
    if protocol == 2:
        assert auth.server_frames == [b"+OK\r\n"]
    else:
        assert auth.response["value"]["proto"] == 3


@pytest.mark.parametrize("protocol", [2, 3])
async def test_wrong_upstream_password_shows_the_upstream_error(redis_auth, protocol):
    async with proxy_for(redis_auth.url(password="wrong")) as (proxy, rec):
        r = client(proxy, protocol, retry=Retry(NoBackoff(), 0))
        with pytest.raises(aioredis.RedisError, match="invalid username-password pair"):
            await r.get("anything")
        await r.aclose()
        frames = await raw_roundtrip(proxy.port, encode_command("PING"), 1)
        assert frames[0].startswith(b"-WRONGPASS invalid username-password pair")
        await rec.wait_for(lambda: bool(rec.commands("PING")))
    assert all(e.failed for e in rec.exchanges)
    assert rec.one("PING").response["error"].startswith("WRONGPASS")


async def test_upstream_dies_mid_command(redis_plain):
    server = RedisServer().start()
    try:
        async with proxy_for(server.url()) as (proxy, rec):
            r = client(proxy)
            await r.set("x", "1")
            waiter = asyncio.ensure_future(r.blpop(["never"], timeout=30))
            await rec.wait_for(lambda: any(c.session.blocked for c in proxy.connections))
            server._proc.kill()  # type: ignore[union-attr]
            with pytest.raises(aioredis.ResponseError, match="upstream connection lost"):
                await waiter
            await r.aclose()
            await rec.wait_for(lambda: len(rec.commands("BLPOP")) == 1)
            blpop = rec.one("BLPOP")
            assert blpop.failed is True
            assert blpop.response == {"value": None, "error": UPSTREAM_LOST}
            # The proxy stays up: once the server is back, new connections work.
            server._proc.wait()  # type: ignore[union-attr]
            server._proc = None
            server.start()
            r2 = client(proxy)
            assert await r2.ping() is True
            await r2.aclose()
    finally:
        server.stop()


async def test_upstream_unreachable_gives_a_clean_error():
    async with proxy_for(f"redis://127.0.0.1:{free_port()}/0") as (proxy, rec):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(encode_command("PING"))
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.startswith(b"-ERR flux: cannot connect to upstream")
        writer.close()
        await rec.wait_for(lambda: bool(rec.exchanges))
    assert rec.one("PING").failed


async def test_garbage_from_a_client_closes_only_that_connection(redis_plain):
    async with proxy_for(redis_plain.url()) as (proxy, rec):
        good = client(proxy)
        assert await good.set("g", "1") is True
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(encode_command("PING") + b"*1\r\n:5\r\n")
        data = await asyncio.wait_for(reader.read(), 5)  # read() returns at EOF: closed
        assert data == b"+PONG\r\n-ERR Protocol error: expected '$', got b':'\r\n"
        writer.close()
        assert await good.get("g") == b"1"
        await good.aclose()
        await rec.wait_for(lambda: len(rec.commands("GET")) == 1)
    assert rec.one("PING").response["value"] == "PONG"


async def test_client_disconnects_mid_pipeline(redis_plain):
    async with proxy_for(redis_plain.url()) as (proxy, rec):
        _reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(encode_command("SET", "mid", "1") + encode_command("BLPOP", "nothing", 30)
                     + encode_command("GET", "mid"))
        await rec.wait_for(lambda: any(c.session.blocked for c in proxy.connections))
        writer.close()
        await rec.wait_for(lambda: len(rec.exchanges) == 3)
        r = client(proxy)
        assert await r.get("mid") == b"1"
        await r.aclose()
    set_ex, blpop, get = rec.exchanges[:3]
    assert set_ex.failed is False
    assert blpop.failed and get.failed
    assert blpop.response["error"] == get.response["error"] == \
        "flux: client disconnected before the reply"


async def test_inline_commands_and_auth_answered_in_order(redis_plain):
    async with proxy_for(redis_plain.url()) as (proxy, rec):
        frames = await raw_roundtrip(
            proxy.port, b"PING\r\n" + encode_command("AUTH", "pw") + b"ECHO 'a b'\n\r\n"
            + encode_command("AUTH", "user", "pw") + encode_command("DBSIZE"), 5)
        assert frames[:4] == [b"+PONG\r\n", b"+OK\r\n", b"$3\r\na b\r\n", b"+OK\r\n"]
        await rec.wait_for(lambda: len(rec.exchanges) == 5)
    assert [e.request["command"] for e in rec.exchanges] == ["PING", "AUTH", "ECHO", "AUTH",
                                                            "DBSIZE"]
    assert rec.exchanges[2].request == {"command": "ECHO", "args": ["a b"]}
    assert rec.exchanges[3].request["args"] == ["user", "<redacted>"]
    assert [e.seq for e in rec.exchanges] == [1, 2, 3, 4, 5]


async def test_reset_logs_in_again(redis_auth):
    async with proxy_for(redis_auth.url(password="secret")) as (proxy, rec):
        frames = await raw_roundtrip(
            proxy.port, encode_command("SET", "r", "1") + encode_command("RESET")
            + encode_command("GET", "r"), 3)
        assert frames == [b"+OK\r\n", b"+RESET\r\n", b"$1\r\n1\r\n"]
        await rec.wait_for(lambda: len(rec.exchanges) == 3)
    assert [e.request["command"] for e in rec.exchanges] == ["SET", "RESET", "GET"]


async def test_tls_upstream(redis_tls):
    async with proxy_for(redis_tls.url(password="tlspw")) as (proxy, rec):
        for protocol in (2, 3):
            r = client(proxy, protocol)
            assert await r.set("over-tls", protocol) is True
            assert await r.get("over-tls") == str(protocol).encode()
            await r.aclose()
        await rec.wait_for(lambda: len(rec.commands("GET")) == 2)


async def test_run_standalone_writes_json_lines(redis_plain, tmp_path):
    path = tmp_path / "record.jsonl"
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(run_standalone(redis_plain.url(), "127.0.0.1:0", str(path),
                                                on_listening=listening.set_result))
    try:
        r = aioredis.Redis(port=await asyncio.wait_for(listening, 10))
        await r.set("standalone", "1")
        await r.aclose()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    exchanges = [Exchange.from_json(doc) for doc in lines]
    by_command = {e.request["command"]: e for e in exchanges}
    assert by_command["SET"].client_frames == [encode_command("SET", "standalone", "1")]
    assert by_command["SET"].server_frames == [b"+OK\r\n"]
    assert lines[0]["protocol"] == "redis" and "frames" in lines[0]


async def test_resp3_invalidation_push_is_not_taken_for_a_reply(redis_plain):
    async with proxy_for(redis_plain.url()) as (proxy, rec):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        parser = RespParser()

        async def read_frames(count: int) -> list[bytes]:
            frames: list[bytes] = []
            while len(frames) < count:
                frames += [f.raw for f in parser.feed(await asyncio.wait_for(reader.read(65536),
                                                                             5))]
            return frames

        writer.write(encode_command("HELLO", 3) + encode_command("CLIENT", "TRACKING", "ON")
                     + encode_command("SET", "tracked", "1") + encode_command("GET", "tracked"))
        assert (await read_frames(4))[1:] == [b"+OK\r\n", b"+OK\r\n", b"$1\r\n1\r\n"]
        other = client(proxy)
        await other.set("tracked", "2")  # the server pushes `invalidate` to the tracker
        writer.write(encode_command("GET", "tracked"))
        frames = await read_frames(2)
        assert frames[0].startswith(b">2\r\n$10\r\ninvalidate\r\n")
        assert frames[1] == b"$1\r\n2\r\n"
        writer.close()
        await other.aclose()
        await rec.wait_for(lambda: len(rec.commands("GET")) == 2)
    push = rec.one(PUSH_COMMAND)
    assert push.response["value"] == ["invalidate", ["tracked"]]
    last_get = rec.commands("GET")[-1]
    assert last_get.response == {"value": "2", "error": None}
    assert push.seq < last_get.seq or push.started_at <= last_get.started_at + last_get.duration


async def test_big_values_and_deep_pipelines_cross_read_boundaries(redis_plain):
    async with proxy_for(redis_plain.url()) as (proxy, rec):
        r = client(proxy, 3)
        big = bytes(range(256)) * 20_000  # 5 MB, with CRLF pairs inside
        assert await r.set("big", big) is True
        assert await r.get("big") == big
        pipe = r.pipeline(transaction=False)
        for i in range(5000):
            pipe.rpush("biglist", f"item-{i}\r\n")
        pipe.lrange("biglist", 0, -1)
        pipe.delete("biglist")
        results = await pipe.execute()
        assert results[-2] == [f"item-{i}\r\n".encode() for i in range(5000)]
        await r.aclose()
        await rec.wait_for(lambda: len(rec.commands("DEL")) == 1)
    gets = rec.commands("GET")
    assert gets[0].server_frames == [b"$%d\r\n%s\r\n" % (len(big), big)]
    assert gets[0].response["value"] == {"base64": base64.b64encode(big).decode()}
    pushes = rec.commands("RPUSH")
    assert len(pushes) == 5000 and [p.response["value"] for p in pushes[:3]] == [1, 2, 3]
    assert rec.one("LRANGE").response["value"][4999] == "item-4999\r\n"


async def test_client_reply_skip_against_a_real_server(redis_plain):
    async with proxy_for(redis_plain.url()) as (proxy, rec):
        frames = await raw_roundtrip(
            proxy.port, encode_command("CLIENT", "REPLY", "SKIP") + encode_command("SET", "q", 1)
            + encode_command("GET", "q") + encode_command("PING"), 2)
        assert frames == [b"$1\r\n1\r\n", b"+PONG\r\n"]
        await rec.wait_for(lambda: len(rec.exchanges) == 4)
    assert [len(e.server_frames) for e in sorted(rec.exchanges, key=lambda e: e.seq)] == \
        [0, 0, 1, 1]


async def test_node_redis_style_handshake_in_one_write(redis_auth):
    """redis@5/6 send HELLO 3 AUTH … SETNAME, CLIENT SETINFO twice and SELECT in one write."""
    async with proxy_for(redis_auth.url(user="flux", password="fluxpw")) as (proxy, rec):
        frames = await raw_roundtrip(
            proxy.port,
            encode_command("HELLO", 3, "AUTH", "flux", "", "SETNAME", "app")
            + encode_command("CLIENT", "SETINFO", "LIB-NAME", "node-redis")
            + encode_command("CLIENT", "SETINFO", "LIB-VER", "5.0.0")
            + encode_command("SELECT", 1) + encode_command("CLIENT", "GETNAME")
            + encode_command("ACL", "WHOAMI"), 6)
        assert frames[0].startswith(b"%")  # the real server's HELLO map, in RESP3
        assert frames[3] == b"+OK\r\n"
        assert frames[4] == b"$3\r\napp\r\n"
        assert frames[5] == b"$4\r\nflux\r\n"
        await rec.wait_for(lambda: len(rec.exchanges) == 6)
    lifetimes = [e.lifetime.value for e in rec.exchanges]
    assert lifetimes == ["session"] * 4 + ["request"] * 2
    hello = rec.exchanges[0]
    assert hello.request["args"] == ["3", "AUTH", "flux", "<redacted>", "SETNAME", "app"]
    assert hello.response["value"]["proto"] == 3
