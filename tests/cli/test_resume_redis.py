"""flux resume with Redis: an INCR done before the failure is not applied twice (issue 8)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from flux_server.client import FluxClient
from tests.services import RedisServer
from tests.support import Cli, ServerProcess, record_failure

pytestmark = pytest.mark.deno

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "resume"


async def test_resume_does_not_repeat_a_durable_incr(
        redis_plain: RedisServer, flux_server_process: ServerProcess,
        tmp_path: Path) -> None:
    key = f"visits:{uuid.uuid4().hex[:8]}"
    env = {"REDIS_URL": redis_plain.url()}
    original = await record_failure(FIXTURES / "counter.ts", flux_server_process, env,
                                    f"/count?key={key}", tmp_path)
    r = aioredis.Redis.from_url(redis_plain.url())
    assert await r.get(key) == b"1"
    cli = Cli(flux_server_process.listen, {**os.environ, **env})

    refused = await cli.run("resume", original[:8], "--app", str(FIXTURES / "counter_fixed.ts"))
    assert refused.returncode == 1
    assert "--yes" in refused.stderr and "Traceback" not in refused.stderr
    assert await r.get(key) == b"1"

    missing = Cli(flux_server_process.listen, {k: v for k, v in os.environ.items()
                                               if k != "REDIS_URL"})
    nourl = await missing.run("resume", original, "--yes")
    assert nourl.returncode == 1 and "REDIS_URL is not set" in nourl.stderr

    doc = await cli.json("resume", original[:8], "--app", str(FIXTURES / "counter_fixed.ts"),
                         "--yes")
    assert doc["execution_id"] == original
    assert doc["original"]["status"] == 500
    assert doc["replay"] == {"status": 200, "body": {"key": key, "visits": 1}}
    assert await r.get(key) == b"1"  # the recorded INCR was answered, not applied again
    sources = [(x["request"]["command"], x["source"]) for x in doc["io"]]
    assert sources == [("INCR", "recorded"), ("GET", "live")]
    assert doc["live"] == [2]
    assert doc["outcome"] == "completed"

    resumed = await cli.json("trace", doc["resume_id"])
    assert resumed["mode"] == "resume" and resumed["parent_id"] == original
    assert [x["source"] for x in resumed["exchanges"]] == ["recorded", "live"]
    await r.aclose()


async def test_resume_asks_on_a_terminal_and_defaults_to_no(
        redis_auth: RedisServer, flux_server_process: ServerProcess, tmp_path: Path) -> None:
    import asyncio
    import pty
    import sys

    key = f"visits:{uuid.uuid4().hex[:8]}"
    url = redis_auth.url(user="flux", password="fluxpw")
    env = {"REDIS_URL": url}
    original = await record_failure(FIXTURES / "counter.ts", flux_server_process, env,
                                    f"/count?key={key}", tmp_path)
    primary, secondary = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flux_cli", "resume", original,
        "--app", str(FIXTURES / "counter_fixed.ts"),
        env={**os.environ, **env, "FLUX_SERVER": flux_server_process.listen},
        stdin=secondary, stdout=asyncio.subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    prompt = b""
    while b"Go ahead?" not in prompt:
        chunk = await asyncio.to_thread(os.read, primary, 1024)
        assert chunk, prompt
        prompt += chunk
    os.write(primary, b"\n")  # just Enter: the default is No
    await asyncio.wait_for(proc.wait(), 30)
    os.close(primary)
    text = prompt.decode()
    assert f"REDIS_URL: Redis at 127.0.0.1:{redis_auth.port}, database 0" in text
    assert "fluxpw" not in text
    assert proc.returncode == 1
    r = aioredis.Redis.from_url(url)
    assert await r.get(key) == b"1"
    await r.aclose()
    from flux_server.filters import ExecutionFilter
    from flux_server.records import Mode

    async with FluxClient(flux_server_process.listen) as client:
        runs = await client.list(ExecutionFilter(mode=Mode.RESUME), limit=1000)
    assert original not in {run.parent_id for run in runs.executions}  # nothing ran
