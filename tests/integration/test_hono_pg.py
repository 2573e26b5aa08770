"""Hono + npm:pg under `flux serve`: every query form node-postgres uses, recorded field by field.

One worker, so the crash test also shows the restarted worker serving the next request.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from tests.integration.conftest import ServedApp, console_lines, request_exchanges, serving
from tests.services import PgCluster

pytestmark = pytest.mark.deno

# /crash: the worker dies, there is no response to compare. /late: its unawaited query ends
# after the record has left, so the recording lacks it and replay rightly reports a stop.
REPLAY_SKIP = ("/crash", "/late")


@pytest.fixture(scope="module")
async def served(pg: PgCluster) -> AsyncIterator[ServedApp]:
    async with serving("hono_pg.ts", {"DATABASE_URL": pg.url()}) as app:
        yield app


def pg_calls(exchanges: list) -> list[tuple]:
    """(sql, params, command_tag, sqlstate, tx_status) of each Postgres exchange."""
    return [(x.request["sql"], x.request["params"], x.response["command_tag"],
             (x.response["error"] or {}).get("sqlstate"), x.response["tx_status"])
            for x in exchanges]


async def test_simple_query_is_recorded_with_its_result(served: ServedApp) -> None:
    reply = await served.request("GET", "/simple")
    assert (reply.status, reply.json()) == (200, {"one": 1, "two": "two"})
    assert uuid.UUID(reply.execution_id).version == 4
    execution = await served.recorded(reply)

    assert execution.id == reply.execution_id
    assert (execution.method, execution.path, execution.query) == ("GET", "/simple", "")
    assert execution.status == 200 and execution.outcome.value == "ok"
    assert execution.error is None
    assert execution.response_body == reply.body
    assert ("x-flux-execution-id", reply.execution_id) in execution.response_headers
    assert console_lines(execution) == [("log", "simple 1")]
    assert execution.upstreams == {"DATABASE_URL": served.runtime.upstreams["DATABASE_URL"]}

    [exchange] = execution.exchanges
    assert exchange.protocol.value == "postgres"
    assert exchange.lifetime.value == "request"
    assert exchange.request["sql"] == "SELECT 1 AS one, 'two' AS two"
    assert exchange.request["simple"] is True and exchange.request["params"] == []
    assert exchange.response["command_tag"] == "SELECT 1"
    assert [(c["name"], c["type_oid"]) for c in exchange.response["columns"]] == [
        ("one", 23), ("two", 25)]
    assert exchange.response["rows"] == [["1", "two"]]
    assert exchange.response["row_count"] == 1
    assert exchange.response["error"] is None and exchange.response["tx_status"] == "I"


async def test_unnamed_extended_query_keeps_its_parameters(served: ServedApp) -> None:
    reply = await served.request("GET", "/params?n=41")
    assert reply.json() == {"next": 42, "label": "p"}
    execution = await served.recorded(reply)
    assert execution.query == "n=41"
    [exchange] = execution.exchanges
    assert exchange.request["simple"] is False
    assert exchange.request["statement"] == ""  # the unnamed statement
    assert exchange.request["sql"] == "SELECT $1::int + 1 AS next, $2::text AS label"
    assert exchange.request["params"] == ["41", "p"]
    assert exchange.request["param_formats"] == [0, 0]
    assert exchange.response["rows"] == [["42", "p"]]
    assert exchange.response["command_tag"] == "SELECT 1"


async def test_named_statement_is_parsed_once_and_reused(served: ServedApp) -> None:
    first = await served.recorded(await served.request("GET", "/named/alice"))
    second = await served.recorded(await served.request("GET", "/named/bob"))
    sql = "SELECT name, balance FROM hono_accounts WHERE name = $1"
    for execution, name in ((first, "alice"), (second, "bob")):
        [exchange] = execution.exchanges
        assert exchange.request["statement"] == "account-by-name"
        assert exchange.request["sql"] == sql
        assert exchange.request["params"] == [name]
        assert exchange.response["rows"][0][0] == name
    # The second request sends only Bind/Execute/Sync: its SQL comes from the session state.
    parse = ord("P")
    assert any(frame[0] == parse for frame in first.exchanges[0].client_frames)
    assert not any(frame[0] == parse for frame in second.exchanges[0].client_frames)
    assert first.exchanges[0].connection == second.exchanges[0].connection


async def test_committed_transaction_is_recorded_in_order(served: ServedApp) -> None:
    reply = await served.request("POST", "/transfer",
                                 json={"from": "alice", "to": "bob", "amount": 30})
    assert (reply.status, reply.json()) == (200, {"moved": 30})
    execution = await served.recorded(reply)
    assert execution.method == "POST"
    assert execution.to_json()["request"]["body"] == {"from": "alice", "to": "bob",
                                                      "amount": 30}
    debit = "UPDATE hono_accounts SET balance = balance - $1 WHERE name = $2"
    credit = "UPDATE hono_accounts SET balance = balance + $1 WHERE name = $2"
    assert pg_calls(execution.exchanges) == [
        ("BEGIN", [], "BEGIN", None, "T"),
        (debit, ["30", "alice"], "UPDATE 1", None, "T"),
        (credit, ["30", "bob"], "UPDATE 1", None, "T"),
        ("COMMIT", [], "COMMIT", None, "I"),
    ]
    assert [x.seq for x in execution.exchanges] == sorted(x.seq for x in execution.exchanges)
    assert console_lines(execution) == [("log", "moved 30 from alice to bob")]


async def test_failed_statement_and_rollback_carry_the_sqlstate(served: ServedApp) -> None:
    reply = await served.request("POST", "/overdraw")
    assert (reply.status, reply.json()) == (409, {"refused": "23514"})
    execution = await served.recorded(reply)
    assert execution.status == 409 and execution.outcome.value == "ok"  # a 4xx is ok
    debit = "UPDATE hono_accounts SET balance = balance - $1 WHERE name = $2"
    assert pg_calls(execution.exchanges) == [
        ("BEGIN", [], "BEGIN", None, "T"),
        (debit, ["1000000", "bob"], None, "23514", "E"),
        ("ROLLBACK", [], "ROLLBACK", None, "I"),
    ]
    failed = execution.exchanges[1]
    assert failed.failed
    assert "hono_accounts_balance_check" in failed.response["error"]["message"]
    assert console_lines(execution) == [("warn", "overdraw refused: 23514")]


async def test_insert_returning_uses_the_recorded_uuid_and_clock(served: ServedApp) -> None:
    reply = await served.request("POST", "/items", json={"name": "widget"})
    assert reply.status == 201
    item = reply.json()
    execution = await served.recorded(reply)
    [exchange] = execution.exchanges
    assert exchange.request["sql"] == (
        "INSERT INTO hono_items (id, name, created_at) VALUES ($1, $2, $3) RETURNING id, name")
    item_id, name, created_at = exchange.request["params"]
    assert (item_id, name) == (item["id"], "widget")
    assert datetime.fromisoformat(created_at) == datetime.fromisoformat(item["created_at"])
    assert exchange.response["command_tag"] == "INSERT 0 1"
    assert exchange.response["rows"] == [[item["id"], "widget"]]
    # What the handler observed of entropy and the clock is what went over the wire.
    assert [(d.kind, d.value) for d in execution.determinism] == [
        ("random_uuid", item["id"]),
        ("date_now", int(datetime.fromisoformat(item["created_at"]).timestamp() * 1000)),
    ]


async def test_thrown_error_is_a_500_with_its_stack(served: ServedApp) -> None:
    reply = await served.request("GET", "/throw")
    assert reply.status == 500
    execution = await served.recorded(reply)
    assert execution.status == 500 and execution.outcome.value == "error"
    assert execution.error is not None
    assert (execution.error.name, execution.error.message) == ("TypeError", "hono route failed")
    assert execution.error.stack.startswith("TypeError: hono route failed\n")
    assert "hono_pg.ts:" in execution.error.stack
    assert execution.exchanges == []
    # Hono catches the throw and logs it: that log line is the request's error.
    [(level, text)] = console_lines(execution)
    assert level == "error" and text.startswith("TypeError: hono route failed")


async def test_boot_record_holds_the_start_up_io(served: ServedApp) -> None:
    execution = await served.recorded(await served.request("GET", "/simple"))
    assert execution.boot_id
    boot = await served.boot(execution.boot_id)
    assert boot.id == execution.boot_id
    assert boot.worker_id == execution.worker_id == "w0"
    assert boot.app_path.endswith("tests/fixtures/apps/hono_pg.ts")
    startup, *statements = boot.exchanges
    assert startup.lifetime.value == "session"
    assert startup.request["startup"]["user"] == "postgres"
    assert startup.request["startup"]["database"] == "flux_test"
    assert "password" not in startup.request["startup"]
    assert [x.request["sql"].split("(")[0].strip() for x in statements] == [
        "CREATE TABLE IF NOT EXISTS hono_items",
        "CREATE TABLE IF NOT EXISTS hono_accounts",
        "INSERT INTO hono_accounts VALUES",
    ]
    assert [x.response["command_tag"] for x in statements][:2] in (
        ["CREATE TABLE", "CREATE TABLE"],)
    assert all(x.request_id is None for x in boot.exchanges)
    # Nothing of the boot leaks into a request, nor the other way round.
    assert not {(x.connection, x.seq) for x in boot.exchanges} & {
        (x.connection, x.seq) for x in execution.exchanges}


async def test_worker_crash_mid_request_is_a_502_error_and_the_next_request_is_served(
        served: ServedApp) -> None:
    await served.recorded(await served.request("GET", "/throw"))  # prints a stack first
    before = await served.recorded(await served.request("GET", "/simple"))
    reply = await served.request("GET", "/crash")
    assert reply.status == 502
    assert reply.body.startswith(b"flux: worker w0")
    crashed = await served.recorded(reply)
    assert crashed.id == reply.execution_id
    assert crashed.status == 502 and crashed.outcome.value == "error"
    assert crashed.error is not None and crashed.error.name == "WorkerCrashed"
    assert "exited with code 1" in crashed.error.message
    # What the worker printed for earlier requests is not quoted as this crash's cause.
    assert "TypeError" not in crashed.error.message + crashed.error.stack
    assert crashed.boot_id == before.boot_id  # it died in the process that served `before`

    after_reply = await served.request("GET", "/simple")
    assert (after_reply.status, after_reply.json()) == (200, {"one": 1, "two": "two"})
    after = await served.recorded(after_reply)
    assert after.boot_id and after.boot_id != before.boot_id
    assert request_exchanges(after)[0].request["sql"] == "SELECT 1 AS one, 'two' AS two"
    restarted = await served.boot(after.boot_id)  # the new process migrates again
    assert any("CREATE TABLE IF NOT EXISTS hono_items" in (x.request.get("sql") or "")
               for x in restarted.exchanges)


async def test_query_that_outlives_its_request_is_not_given_to_the_next_one(
        served: ServedApp) -> None:
    late = await served.request("GET", "/late")
    assert late.body == b"answered before the query ended"
    # One pg.Client: this request's query waits behind the sleeping one on the same connection.
    following = await served.recorded(await served.request("GET", "/simple"))
    assert [x.request["sql"] for x in following.exchanges] == ["SELECT 1 AS one, 'two' AS two"]
    slot = served.runtime.slots[0]
    assert slot.by_request == {}  # nothing left behind for an id nobody will take
    late_record = await served.recorded(late)
    in_record = [x.request["sql"] for x in late_record.exchanges]
    assert in_record in ([], ["SELECT pg_sleep(0.3) AS late"])  # only if not yet shipped
    if not in_record:  # the record had left: the exchange is counted and reported, not lost
        assert slot.late_dropped >= 1
    assert late.execution_id not in slot.taken  # shipped records are sealed


async def test_every_recorded_request_replays_byte_identical(served: ServedApp) -> None:
    """Runs last in this module: every request recorded above, replayed against its IO."""
    from tests.integration.conftest import replay_differences

    assert await replay_differences(served, skip=REPLAY_SKIP) == []
