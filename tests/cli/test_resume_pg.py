"""flux resume with Postgres: an autocommit INSERT done before the failure is not applied
twice, and the rest of the fixed handler runs live (issue 8)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.services import PgCluster
from tests.support import Cli, ServerProcess, record_failure

pytestmark = pytest.mark.deno

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "resume"


async def orders_of(pg: PgCluster, ref: str) -> int:
    conn = await asyncpg.connect(pg.url(), ssl=False)
    try:
        return await conn.fetchval("SELECT count(*) FROM resume_pg_orders WHERE ref = $1", ref)
    finally:
        await conn.close()


@pytest.mark.parametrize("app", ["pg_order", "pg_order_postgresjs"])
async def test_resume_does_not_repeat_a_durable_insert(
        pg: PgCluster, flux_server_process: ServerProcess, tmp_path: Path, app: str) -> None:
    """node-postgres (unnamed statements) and postgres.js (named ones, pipelined)."""
    ref = f"order-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(pg.url(), ssl=False)
    await conn.execute("CREATE TABLE IF NOT EXISTS resume_pg_orders (id serial, ref text)")
    await conn.close()
    env = {"DATABASE_URL": pg.url()}
    original = await record_failure(FIXTURES / f"{app}.ts", flux_server_process, env,
                                    f"/order?ref={ref}", tmp_path)
    assert await orders_of(pg, ref) == 1
    cli = Cli(flux_server_process.listen, {**os.environ, **env})

    doc = await cli.json("resume", original[:8], "--app", str(FIXTURES / f"{app}_fixed.ts"),
                         "--yes")
    assert doc["execution_id"] == original
    assert doc["original"]["status"] == 500
    assert doc["replay"] == {"status": 200, "body": {"ref": ref, "orders": 1}}
    assert await orders_of(pg, ref) == 1  # the recorded INSERT was answered, not run again
    sources = [(x["request"]["sql"].split()[0], x["source"]) for x in doc["io"]]
    assert sources == [("INSERT", "recorded"), ("SELECT", "live")]
    assert doc["live"] == [2]
    assert doc["outcome"] == "completed"

    resumed = await cli.json("trace", doc["resume_id"])
    assert resumed["mode"] == "resume" and resumed["parent_id"] == original
    assert [x["source"] for x in resumed["exchanges"]] == ["recorded", "live"]
