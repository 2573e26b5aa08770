"""ioredis@5 (RESP2) and ioredis@6 (RESP3 by default) under `flux serve`, field by field.

The request exchanges are the same commands and replies whatever protocol the driver
negotiated; the negotiation (HELLO 3, CLIENT SETINFO, the INFO ready check) is in the boot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import ServedApp, console_lines, serving
from tests.integration.redis_checks import calls, handshake
from tests.services import RedisServer

pytestmark = pytest.mark.deno

REPLAY_SKIP: tuple[str, ...] = ()  # paths not replayed by the last test

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
APPS = {5: "ioredis5_app.ts", 6: "ioredis6_app.ts"}


@pytest.fixture(scope="module", params=sorted(APPS), ids=lambda major: f"ioredis{major}")
async def ioredis(request: pytest.FixtureRequest,
                  redis_plain: RedisServer) -> AsyncIterator[tuple[int, ServedApp]]:
    async with serving(APPS[request.param], {"REDIS_URL": redis_plain.url()}) as app:
        yield request.param, app


async def test_plain_commands_and_the_boot_handshake(ioredis: tuple[int, ServedApp]) -> None:
    major, served = ioredis
    key = f"io{major}:1"
    reply = await served.request("GET", "/plain?k=1")
    assert reply.json() == {"value": "plain-value"}
    execution = await served.recorded(reply)
    assert execution.id == reply.execution_id
    assert calls(execution) == [("SET", [key, "plain-value"], "OK", None),
                                ("GET", [key], "plain-value", None)]
    assert {x.lifetime.value for x in execution.exchanges} == {"request"}
    assert {x.protocol.value for x in execution.exchanges} == {"redis"}

    boot = await served.boot(execution.boot_id)
    commands = handshake(boot)
    if major >= 6:
        assert commands[0] == ("HELLO", ["3"])
        assert boot.exchanges[0].response["value"]["proto"] == 3
    else:
        assert ("HELLO", ["3"]) not in commands
    assert ("CLIENT", ["SETINFO"]) in commands and ("INFO", []) in commands
    [ping] = [x for x in boot.exchanges if x.lifetime.value == "request"]
    assert (ping.request["command"], ping.response["value"]) == ("PING", "PONG")
    assert all(x.request_id is None for x in boot.exchanges)


async def test_pipeline_is_three_exchanges_on_one_connection(
        ioredis: tuple[int, ServedApp]) -> None:
    major, served = ioredis
    key = f"io{major}:2:p"
    reply = await served.request("GET", "/pipeline?k=2")
    assert reply.json() == [[None, "OK"], [None, 2], [None, "2"]]
    execution = await served.recorded(reply)
    assert calls(execution) == [("SET", [key, "1"], "OK", None),
                                ("INCR", [key], 2, None),
                                ("GET", [key], "2", None)]
    assert len({x.connection for x in execution.exchanges}) == 1
    assert [x.seq for x in execution.exchanges] == sorted(x.seq for x in execution.exchanges)


async def test_multi_exec(ioredis: tuple[int, ServedApp]) -> None:
    major, served = ioredis
    key = f"io{major}:3:m"
    reply = await served.request("GET", "/multi?k=3")
    assert reply.json() == [[None, "OK"], [None, 15]]
    execution = await served.recorded(reply)
    assert calls(execution) == [("MULTI", [], "OK", None),
                                ("SET", [key, "10"], "QUEUED", None),
                                ("INCRBY", [key, "5"], "QUEUED", None),
                                ("EXEC", [], ["OK", 15], None)]


async def test_wrongtype_error_is_recorded_on_its_exchange(
        ioredis: tuple[int, ServedApp]) -> None:
    major, served = ioredis
    key = f"io{major}:4:list"
    reply = await served.request("GET", "/wrongtype?k=4")
    assert (reply.status, reply.json()) == (409, {"error": WRONGTYPE})
    execution = await served.recorded(reply)
    assert calls(execution) == [("DEL", [key], 0, None),
                                ("LPUSH", [key, "x"], 1, None),
                                ("INCR", [key], None, WRONGTYPE)]
    assert execution.exchanges[-1].failed
    assert not any(x.failed for x in execution.exchanges[:-1])
    # A string logged with console.error is not an Error: the request stays ok.
    assert console_lines(execution) == [("error", f"redis said: {WRONGTYPE}")]
    assert execution.outcome.value == "ok" and execution.error is None


async def test_hash_reply_shape_follows_the_negotiated_protocol(
        ioredis: tuple[int, ServedApp]) -> None:
    major, served = ioredis
    reply = await served.request("GET", "/hash?k=5")
    assert reply.json() == {"a": "1", "b": "2"}
    execution = await served.recorded(reply)
    [_, hgetall] = execution.exchanges
    assert hgetall.request == {"command": "HGETALL", "args": [f"io{major}:5:h"]}
    expected = {"a": "1", "b": "2"} if major >= 6 else ["a", "1", "b", "2"]  # map vs array
    assert hgetall.response == {"value": expected, "error": None}


async def test_every_recorded_request_replays_byte_identical(
        ioredis: tuple[int, ServedApp]) -> None:
    """Runs last in this module: every request recorded above, replayed against its IO."""
    from tests.integration.conftest import replay_differences

    assert await replay_differences(ioredis[1], skip=REPLAY_SKIP) == []
