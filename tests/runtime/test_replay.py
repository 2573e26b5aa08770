"""Replay mode: recorded time and randomness come back in order, under restricted permissions."""

from __future__ import annotations

import json

import pytest

from flux_runtime.pool import WorkerPool
from flux_runtime.worker import WorkerSlotSettings
from flux_server.records import DeterminismEntry, Mode
from tests.runtime.conftest import APPS, DENO_DIR, serving


@pytest.mark.parametrize("app", sorted(APPS))
async def test_replay_feeds_back_the_recorded_values(app: str) -> None:
    async with serving(APPS[app], workers=1) as recorded:
        async with recorded.client.get(recorded.front.url + "/entropy") as response:
            original_body = await response.read()
            original = await recorded.execution(response)
        async with recorded.client.get(recorded.front.url + "/hello?name=ada") as response:
            hello_body = await response.read()
            hello = await recorded.execution(response)

    replay = WorkerPool(APPS[app], workers=1, mode=Mode.REPLAY, deno_dir=DENO_DIR)
    await replay.start()
    try:
        again = await replay.execute("GET", "/entropy", determinism=original.determinism)
        assert again.body == original_body
        assert again.execution.determinism == original.determinism
        assert again.execution.mode is Mode.REPLAY
        assert again.report is not None and again.report.replayed
        assert again.report.fallbacks == {} and again.report.unused == {}

        again = await replay.execute("GET", "/hello?name=ada", determinism=hello.determinism)
        assert again.body == hello_body
    finally:
        await replay.stop()


async def test_replay_reports_a_log_that_runs_out_or_is_left_over() -> None:
    recorded_uuid = "0b8f4a2e-9a51-4c3e-8f6b-1d2c3b4a5f60"
    log = [DeterminismEntry("random_uuid", recorded_uuid), DeterminismEntry("date_now", 0),
           DeterminismEntry("math_random", 0.25), DeterminismEntry("math_random", 0.5)]
    replay = WorkerPool(APPS["hono"], workers=1, mode=Mode.REPLAY, deno_dir=DENO_DIR)
    await replay.start()
    try:
        result = await replay.execute("GET", "/hello?name=x", determinism=log[:1])
        payload = json.loads(result.body)
        assert payload["id"] == recorded_uuid
        assert result.report is not None
        assert result.report.fallbacks == {"date_now": 1, "math_random": 1}  # real values used
        assert payload["at"] != "1970-01-01T00:00:00.000Z"

        result = await replay.execute("GET", "/hello?name=x", determinism=log)
        payload = json.loads(result.body)
        assert (payload["at"], payload["lucky"]) == ("1970-01-01T00:00:00.000Z", 0.25)
        assert result.report is not None
        assert result.report.fallbacks == {} and result.report.unused == {"math_random": 1}

        # without a log, nothing is replayed: real values, and no fallback noise
        result = await replay.execute("GET", "/hello?name=x")
        assert result.report is not None and not result.report.replayed
        assert result.report.fallbacks == {}
    finally:
        await replay.stop()


async def test_record_mode_keeps_the_permissions_the_user_chose() -> None:
    pool = WorkerPool(APPS["deno_serve"], workers=1, deno_dir=DENO_DIR,
                      deno_args=["--allow-read"])  # the shim still gets its ports and FLUX_*
    await pool.start()
    try:
        result = await pool.execute("GET", "/sandbox")
        assert json.loads(result.body) == {
            "write": "NotCapable", "net": "NotCapable", "run": "NotCapable"}
        hello = await pool.execute("GET", "/hello?name=p")
        assert hello.execution.console[0].text == "hello p"
    finally:
        await pool.stop()


async def test_replay_worker_cannot_write_run_or_reach_other_hosts() -> None:
    async with serving(APPS["deno_serve"], workers=1) as recorded, \
            recorded.client.get(recorded.front.url + "/sandbox") as response:
        assert json.loads(await response.read()) == {
            "write": "allowed", "net": "ConnectionRefused", "run": "allowed"}

    replay = WorkerPool(APPS["deno_serve"], workers=1, mode=Mode.REPLAY, deno_dir=DENO_DIR,
                        deno_args=["-A", "--allow-write"])  # the user's grants do not apply
    await replay.start()
    try:
        command = replay.workers[0].command(1234, WorkerSlotSettings(net_allow=["127.0.0.1:5"]))
        assert "-A" not in command and "--allow-write" not in command
        port = replay.workers[0].port
        assert f"--allow-net=127.0.0.1:{port},127.0.0.1:1234,127.0.0.1:5" in command
        result = await replay.execute("GET", "/sandbox")
        assert json.loads(result.body) == {
            "write": "NotCapable", "net": "NotCapable", "run": "NotCapable"}
    finally:
        await replay.stop()

