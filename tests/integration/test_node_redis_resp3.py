"""node-redis@5 and @6 with `RESP: 3` under `flux serve`: HELLO 3 and CLIENT SETINFO sent in
one write at connect are the boot's session exchanges; maps come back as maps."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import ServedApp, serving
from tests.integration.redis_checks import calls, handshake
from tests.services import RedisServer

pytestmark = pytest.mark.deno

REPLAY_SKIP: tuple[str, ...] = ()  # paths not replayed by the last test

APPS = {5: "node_redis5_app.ts", 6: "node_redis6_app.ts"}


@pytest.fixture(scope="module", params=sorted(APPS), ids=lambda major: f"redis{major}")
async def node_redis(request: pytest.FixtureRequest,
                     redis_plain: RedisServer) -> AsyncIterator[tuple[int, ServedApp]]:
    async with serving(APPS[request.param], {"REDIS_URL": redis_plain.url()}) as app:
        yield request.param, app


async def test_resp3_commands_and_handshake(node_redis: tuple[int, ServedApp]) -> None:
    major, served = node_redis
    key = f"nr{major}:1"
    reply = await served.request("GET", "/commands?k=1")
    assert reply.json() == {"value": "resp3-value", "hash": {"a": "1", "b": "2"}}
    execution = await served.recorded(reply)
    assert execution.id == reply.execution_id
    assert calls(execution) == [
        ("SET", [key, "resp3-value"], "OK", None),
        ("GET", [key], "resp3-value", None),
        ("HSET", [f"{key}:h", "a", "1", "b", "2"], 2, None),
        ("HGETALL", [f"{key}:h"], {"a": "1", "b": "2"}, None),  # a RESP3 map
    ]
    assert {x.lifetime.value for x in execution.exchanges} == {"request"}

    boot = await served.boot(execution.boot_id)
    commands = handshake(boot)
    assert commands[0] == ("HELLO", ["3"])
    hello = boot.exchanges[0]
    assert hello.response["value"]["proto"] == 3 and hello.response["error"] is None
    assert commands.count(("CLIENT", ["SETINFO"])) == 2  # LIB-NAME and LIB-VER
    lib = {x.request["args"][1]: x.request["args"][2] for x in boot.exchanges
           if x.request["args"][:1] == ["SETINFO"]}
    assert lib["LIB-NAME"] == "node-redis" and lib["LIB-VER"].startswith(f"{major}.")
    assert {x.lifetime.value for x in boot.exchanges} == {"session"}


async def test_multi_exec(node_redis: tuple[int, ServedApp]) -> None:
    major, served = node_redis
    key = f"nr{major}:2:m"
    reply = await served.request("GET", "/multi?k=2")
    assert reply.json() == ["OK", 8]
    execution = await served.recorded(reply)
    assert calls(execution) == [("MULTI", [], "OK", None),
                                ("SET", [key, "7"], "QUEUED", None),
                                ("INCR", [key], "QUEUED", None),
                                ("EXEC", [], ["OK", 8], None)]


async def test_every_recorded_request_replays_byte_identical(
        node_redis: tuple[int, ServedApp]) -> None:
    """Runs last in this module: every request recorded above, replayed against its IO."""
    from tests.integration.conftest import replay_differences

    assert await replay_differences(node_redis[1], skip=REPLAY_SKIP) == []
