"""An `export default { fetch }` app + npm:pg under `flux serve` (no listen call at all)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import ServedApp, console_lines, serving
from tests.services import PgCluster

pytestmark = pytest.mark.deno

REPLAY_SKIP: tuple[str, ...] = ()  # paths not replayed by the last test


@pytest.fixture(scope="module")
async def served(pg: PgCluster) -> AsyncIterator[ServedApp]:
    async with serving("default_export_pg.ts", {"DATABASE_URL": pg.url()}) as app:
        yield app


async def test_query_with_parameters(served: ServedApp) -> None:
    reply = await served.request("GET", "/sum?a=2&b=40")
    assert reply.json() == {"sum": 42}
    execution = await served.recorded(reply)
    assert execution.id == reply.execution_id
    assert (execution.path, execution.query, execution.status) == ("/sum", "a=2&b=40", 200)
    assert console_lines(execution) == [("info", "sum 2+40")]
    [exchange] = execution.exchanges
    assert exchange.request["sql"] == "SELECT $1::int + $2::int AS sum"
    assert exchange.request["params"] == ["2", "40"]
    assert exchange.response["rows"] == [["42"]]


async def test_uncaught_sql_error_is_a_500_with_sqlstate_and_stack(served: ServedApp) -> None:
    reply = await served.request("GET", "/divide")
    assert reply.status == 500
    execution = await served.recorded(reply)
    assert execution.outcome.value == "error"
    assert execution.error is not None and execution.error.message == "division by zero"
    assert "default_export_pg.ts:" in execution.error.stack
    [exchange] = execution.exchanges
    assert exchange.request["params"] == ["0"]
    assert exchange.response["error"]["sqlstate"] == "22012"
    assert exchange.response["command_tag"] is None and exchange.failed


async def test_boot_record_holds_the_warm_up_query(served: ServedApp) -> None:
    reply = await served.request("GET", "/nowhere")
    assert reply.status == 404 and reply.body == b"not found"
    execution = await served.recorded(reply)
    assert execution.exchanges == [] and execution.outcome.value == "ok"
    boot = await served.boot(execution.boot_id)
    [startup, warm] = boot.exchanges
    assert startup.lifetime.value == "session"
    assert warm.request["sql"] == "SELECT current_database() AS db"
    assert warm.response["rows"] == [["flux_test"]]


async def test_every_recorded_request_replays_byte_identical(served: ServedApp) -> None:
    """Runs last in this module: every request recorded above, replayed against its IO."""
    from tests.integration.conftest import replay_differences

    assert await replay_differences(served, skip=REPLAY_SKIP) == []
