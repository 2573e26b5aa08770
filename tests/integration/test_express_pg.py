"""express@4 on node:http + npm:pg under `flux serve`: the app's listen(3000) is overridden,
and an error express catches and logs is the request's error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import ServedApp, console_lines, serving
from tests.services import PgCluster

pytestmark = pytest.mark.deno

REPLAY_SKIP: tuple[str, ...] = ()  # paths not replayed by the last test


@pytest.fixture(scope="module")
async def served(pg: PgCluster) -> AsyncIterator[ServedApp]:
    async with serving("express_pg.ts", {"DATABASE_URL": pg.url()}) as app:
        yield app


async def test_create_and_read_a_todo(served: ServedApp) -> None:
    created = await served.request("POST", "/todos", json={"title": "write tests"})
    assert created.status == 201
    todo = created.json()
    assert todo["title"] == "write tests" and todo["done"] is False
    execution = await served.recorded(created)
    assert execution.id == created.execution_id
    assert (execution.method, execution.path, execution.status) == ("POST", "/todos", 201)
    assert execution.to_json()["request"]["body"] == {"title": "write tests"}
    assert execution.to_json()["response"]["body"] == todo
    assert console_lines(execution) == [("log", f"created todo {todo['id']}")]
    [insert] = execution.exchanges
    assert insert.request["sql"] == (
        "INSERT INTO express_todos (title) VALUES ($1) RETURNING id, title, done")
    assert insert.request["params"] == ["write tests"]
    assert insert.response["rows"] == [[str(todo["id"]), "write tests", "f"]]
    assert insert.response["command_tag"] == "INSERT 0 1"
    assert [c["name"] for c in insert.response["columns"]] == ["id", "title", "done"]

    read = await served.request("GET", f"/todos/{todo['id']}")
    assert read.json() == todo
    [select] = (await served.recorded(read)).exchanges
    assert select.request["params"] == [str(todo["id"])]
    assert select.response["row_count"] == 1


async def test_not_found_is_a_404_with_an_empty_result(served: ServedApp) -> None:
    reply = await served.request("GET", "/todos/999999")
    assert (reply.status, reply.json()) == (404, {"error": "no such todo"})
    execution = await served.recorded(reply)
    assert execution.status == 404 and execution.outcome.value == "ok"
    [select] = execution.exchanges
    assert (select.response["command_tag"], select.response["rows"]) == ("SELECT 0", [])


async def test_sql_error_caught_by_express_is_the_request_error(served: ServedApp) -> None:
    reply = await served.request("GET", "/bad-sql")
    assert reply.status == 500
    execution = await served.recorded(reply)
    assert execution.outcome.value == "error"
    [failed] = execution.exchanges
    assert failed.request["sql"] == "SELECT * FROM no_such_table"
    assert failed.response["error"]["sqlstate"] == "42P01"
    assert failed.response["error"]["message"] == 'relation "no_such_table" does not exist'
    assert failed.response["tx_status"] == "I"
    assert execution.error is not None
    assert execution.error.message == 'relation "no_such_table" does not exist'
    assert "express_pg.ts:" in execution.error.stack
    [(level, text)] = console_lines(execution)
    assert level == "error" and 'relation "no_such_table" does not exist' in text


async def test_boot_record_holds_the_migration(served: ServedApp) -> None:
    execution = await served.recorded(await served.request("GET", "/todos/1"))
    boot = await served.boot(execution.boot_id)
    assert [x.lifetime.value for x in boot.exchanges] == ["session", "request"]
    assert boot.exchanges[1].request["sql"].startswith(
        "CREATE TABLE IF NOT EXISTS express_todos")
    assert boot.exchanges[1].response["command_tag"] == "CREATE TABLE"


async def test_every_recorded_request_replays_byte_identical(served: ServedApp) -> None:
    """Runs last in this module: every request recorded above, replayed against its IO."""
    from tests.integration.conftest import replay_differences

    assert await replay_differences(served, skip=REPLAY_SKIP) == []
