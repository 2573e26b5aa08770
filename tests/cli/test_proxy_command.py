"""`flux proxy pg|redis`: the standalone recording proxy, driven by real clients."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from tests.services import PgCluster, RedisServer, free_port, wait_for_port


async def start_proxy(kind: str, upstream: str, record: Path) -> tuple[asyncio.subprocess.Process,
                                                                       int]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flux_cli", "proxy", kind, "--upstream", upstream,
        "--listen", f"127.0.0.1:{port}", "--record", str(record),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    await asyncio.to_thread(wait_for_port, port)
    return proc, port


async def stop(proc: asyncio.subprocess.Process) -> str:
    proc.terminate()
    _, err = await proc.communicate()
    return err.decode()


def recorded(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_redis_proxy_command_records_jsonl(redis_auth: RedisServer, tmp_path: Path) -> None:
    record = tmp_path / "redis.jsonl"
    proc, port = await start_proxy("redis", redis_auth.url(user="flux", password="fluxpw"),
                                   record)
    client = aioredis.Redis(port=port, username="flux")  # no password: the proxy holds it
    assert await client.set("proxy:k", "v")
    assert await client.get("proxy:k") == b"v"
    await client.aclose()
    await asyncio.sleep(0.2)
    err = await stop(proc)
    assert "fluxpw" not in err and "fluxpw" not in record.read_text()
    requests = [(x["request"]["command"], x["request"]["args"]) for x in recorded(record)
                if x["lifetime"] == "request"]
    assert requests == [("SET", ["proxy:k", "v"]), ("GET", ["proxy:k"])]
    assert all(x["frames"]["client"] and x["frames"]["server"] for x in recorded(record))


async def test_pg_proxy_command_records_jsonl(pg: PgCluster, tmp_path: Path) -> None:
    record = tmp_path / "pg.jsonl"
    user = pg.user("scramuser")
    proc, port = await start_proxy("pg", pg.url(user.name, user.password), record)
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user.name,
                                 database=pg.database, ssl=False)
    assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    await conn.close()
    await asyncio.sleep(0.2)
    err = await stop(proc)
    assert user.password not in err and user.password not in record.read_text()
    executes = [x for x in recorded(record) if x["request"].get("sql") == "SELECT $1::int + 1"
                and x["lifetime"] == "request"]  # the prepare is connection lifetime
    assert len(executes) == 1
    assert executes[0]["request"]["params"] == [41]  # asyncpg sends int4 in binary
    assert executes[0]["response"]["rows"] == [[42]]
    # fetchval executes with a row limit: PortalSuspended, so no command tag
    assert executes[0]["response"]["command_tag"] is None
    assert executes[0]["response"]["tx_status"] == "I"


async def test_proxy_command_refuses_a_wrong_kind_of_url(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flux_cli", "proxy", "pg", "--upstream", "redis://x",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 1 and err.decode().count("\n") == 1
