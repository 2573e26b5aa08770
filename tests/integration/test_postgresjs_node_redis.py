"""Plain Deno.serve + postgres.js + node-redis@4 under `flux serve` with 4 workers.

postgres.js is the demanding Postgres driver (named statements described with Flush and no
Sync, fetch_types, pipelining on one connection); with 4 workers the same app also carries the
attribution-under-load test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.integration.conftest import ServedApp, console_lines, request_exchanges, serving
from tests.services import PgCluster, RedisServer

pytestmark = pytest.mark.deno

REPLAY_SKIP: tuple[str, ...] = ()  # paths not replayed by the last test

WORKERS = 4


@pytest.fixture(scope="module")
async def served(pg: PgCluster, redis_plain: RedisServer) -> AsyncIterator[ServedApp]:
    env = {"DATABASE_URL": pg.url(), "REDIS_URL": redis_plain.url()}
    async with serving("deno_serve_postgresjs_redis.ts", env, workers=WORKERS) as app:
        yield app


def by_protocol(exchanges: list, protocol: str) -> list:
    return [x for x in exchanges if x.protocol.value == protocol]


async def test_named_statement_is_described_on_its_connection_then_executed(
        served: ServedApp) -> None:
    reply = await served.request("GET", "/prepared?n=3")
    assert reply.json() == {"n": 3, "label": "label"}
    execution = await served.recorded(reply)
    assert execution.id == reply.execution_id
    sql = "SELECT $1::int AS n, $2::text AS label"
    executed = request_exchanges(execution)
    assert [(x.request["sql"], x.request["params"]) for x in executed] == [(sql, ["3", "label"])]
    [run] = executed
    assert run.request["statement"]  # postgres.js names every prepared statement
    assert run.response["rows"] == [["3", "label"]]
    assert run.response["command_tag"] == "SELECT 1"
    # Parse/Describe/Flush, once per connection: connection lifetime, same statement name.
    # This is the module's first request, so its worker has never prepared this SQL.
    [describe] = [x for x in execution.exchanges if x.lifetime.value == "connection"]
    assert describe.request["sql"] == sql
    assert describe.request["statement"] == run.request["statement"]
    assert describe.response["rows"] == []
    assert [c["name"] for c in describe.response["columns"]] == ["n", "label"]
    assert describe.connection == run.connection and describe.seq < run.seq
    assert ord("H") in {frame[0] for frame in describe.client_frames}  # Flush, no Sync
    assert ord("S") not in {frame[0] for frame in describe.client_frames}


async def test_prepare_false_uses_the_unnamed_statement(served: ServedApp) -> None:
    reply = await served.request("GET", "/unprepared?n=21")
    assert reply.json() == {"doubled": 42}
    execution = await served.recorded(reply)
    [run] = request_exchanges(execution)
    assert run.request["sql"] == "SELECT $1::int * 2 AS doubled"
    assert run.request["statement"] == ""
    assert run.request["params"] == ["21"]
    assert run.response["rows"] == [["42"]]


async def test_sql_begin_is_one_transaction(served: ServedApp) -> None:
    reply = await served.request("GET", "/begin?n=5")
    note = reply.json()
    assert note["body"] == "note 5"
    execution = await served.recorded(reply)
    calls = [(x.request["sql"].strip().lower().split()[0], x.response["tx_status"])
             for x in request_exchanges(execution)]
    assert calls == [("begin", "T"), ("insert", "T"), ("select", "T"), ("commit", "I")]
    insert = request_exchanges(execution)[1]
    assert insert.request["sql"] == (
        "INSERT INTO pjs_notes (body) VALUES ($1) RETURNING id, body")
    assert insert.request["params"] == ["note 5"]
    assert insert.response["rows"] == [[str(note["id"]), "note 5"]]
    assert insert.response["command_tag"] == "INSERT 0 1"


async def test_pipelined_queries_on_one_connection_are_separate_exchanges(
        served: ServedApp) -> None:
    reply = await served.request("GET", "/pipeline?n=10")
    assert reply.json() == [10, 11, 12]
    execution = await served.recorded(reply)
    executed = request_exchanges(execution)
    assert [(x.request["sql"], x.request["params"], x.response["rows"]) for x in executed] == [
        ("SELECT $1::int AS v", ["10"], [["10"]]),
        ("SELECT $1::int AS v", ["11"], [["11"]]),
        ("SELECT $1::int AS v", ["12"], [["12"]]),
    ]
    assert len({x.connection for x in executed}) == 1  # max: 1
    assert [x.seq for x in executed] == sorted(x.seq for x in executed)


async def test_node_redis_commands_and_replies(served: ServedApp) -> None:
    reply = await served.request("GET", "/redis?n=1")
    assert reply.json() == {"value": "v1", "count": 1, "hash": {"a": "1", "b": "2"},
                            "missing": None}
    execution = await served.recorded(reply)
    assert by_protocol(execution.exchanges, "postgres") == []
    calls = [(x.request["command"], x.request["args"], x.response["value"],
              x.response["error"]) for x in execution.exchanges]
    assert calls == [
        ("SET", ["nr4:1", "v1"], "OK", None),
        ("GET", ["nr4:1"], "v1", None),
        ("INCR", ["nr4:1:count"], 1, None),
        ("HSET", ["nr4:1:hash", "a", "1", "b", "2"], 2, None),
        ("HGETALL", ["nr4:1:hash"], ["a", "1", "b", "2"], None),  # RESP2: a flat array
        ("GET", ["nr4:1:missing"], None, None),
    ]
    assert {x.lifetime.value for x in execution.exchanges} == {"request"}


async def test_thrown_error_is_a_500_with_its_stack(served: ServedApp) -> None:
    reply = await served.request("GET", "/throw?n=2")
    assert reply.status == 500
    execution = await served.recorded(reply)
    assert execution.outcome.value == "error" and execution.status == 500
    assert execution.error is not None
    assert (execution.error.name, execution.error.message) == ("RangeError", "deno route failed 2")
    assert "deno_serve_postgresjs_redis.ts:" in execution.error.stack


async def test_boot_record_holds_migration_fetch_types_and_redis_handshake(
        served: ServedApp) -> None:
    execution = await served.recorded(await served.request("GET", "/prepared?n=1"))
    boot = await served.boot(execution.boot_id)
    assert boot.worker_id == execution.worker_id
    pg_boot = by_protocol(boot.exchanges, "postgres")
    startups = [x for x in pg_boot if x.lifetime.value == "session"]
    assert [x.request["startup"]["application_name"] for x in startups] == ["postgres.js"] * 2
    fetch_types = [x for x in pg_boot if "pg_catalog.pg_type" in (x.request.get("sql") or "")]
    assert len(fetch_types) == 2  # one per postgres() instance
    assert {x.lifetime.value for x in fetch_types} == {"connection"}
    assert all(x.response["row_count"] > 100 for x in fetch_types)
    statements = [x.request["sql"].strip() for x in pg_boot if x.lifetime.value == "request"]
    assert statements == [
        "begin", "SELECT pg_advisory_xact_lock(4242)",
        "CREATE TABLE IF NOT EXISTS pjs_notes (id serial PRIMARY KEY, body text NOT NULL)",
        "commit", "SELECT 1 AS warm"]
    redis_boot = by_protocol(boot.exchanges, "redis")
    assert redis_boot and {x.lifetime.value for x in redis_boot} == {"session"}
    assert {(x.request["command"], x.request["args"][0]) for x in redis_boot} <= {
        ("CLIENT", "SETINFO"), ("SELECT", "0")}


async def test_attribution_under_load(served: ServedApp, redis_plain: RedisServer) -> None:
    """50 concurrent requests over 4 workers: each record holds exactly its own IO and logs."""
    count = 50
    direct = aioredis.from_url(redis_plain.url())
    try:
        await direct.mset({f"key:{n}": f"value-{n}" for n in range(count)})
    finally:
        await direct.aclose()

    replies = await asyncio.gather(*(served.request("GET", f"/attr?n={n}")
                                     for n in range(count)))
    assert [r.json() for r in replies] == [{"n": n, "value": f"value-{n}"}
                                           for n in range(count)]
    executions = await asyncio.gather(*(served.recorded(r) for r in replies))
    assert len({e.worker_id for e in executions}) > 1  # the load really was spread

    for n, (reply, execution) in enumerate(zip(replies, executions, strict=True)):
        assert execution.id == reply.execution_id
        assert execution.query == f"n={n}"
        assert console_lines(execution) == [("log", f"attr {n}")]
        own = [(x.protocol.value, x.request.get("sql") or x.request.get("command"),
                x.request.get("params") or x.request.get("args"))
               for x in request_exchanges(execution)]
        assert own == [("postgres", "SELECT $1::int AS n", [str(n)]),
                       ("redis", "GET", [f"key:{n}"])], f"request {n}"
        answers = [x.response.get("rows") or x.response.get("value")
                   for x in request_exchanges(execution)]
        assert answers == [[[str(n)]], f"value-{n}"]
        # Anything else it holds is that worker's one-off Describe of the same statement.
        others = [x for x in execution.exchanges if x.lifetime.value != "request"]
        assert all(x.request["sql"] == "SELECT $1::int AS n" for x in others)
    described = sum(x.lifetime.value == "connection" for e in executions for x in e.exchanges)
    assert described <= WORKERS


async def test_every_recorded_request_replays_byte_identical(served: ServedApp) -> None:
    """Runs last in this module: every request recorded above, replayed against its IO."""
    from tests.integration.conftest import replay_differences

    assert await replay_differences(served, skip=REPLAY_SKIP) == []
