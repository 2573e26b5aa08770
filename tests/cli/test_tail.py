"""flux tail: no backlog, one line per execution as it finishes, reconnects on its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from flux_server.client import FluxClient
from tests.cli.conftest import Recorded
from tests.services import free_port
from tests.support import ServerProcess

pytestmark = pytest.mark.deno


@contextlib.asynccontextmanager
async def tail(env: dict[str, str], *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flux_cli", "tail", *args, env={**env, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        await proc.wait()


async def first_line(stream: asyncio.StreamReader, timeout: float) -> str | None:
    try:
        return (await asyncio.wait_for(stream.readline(), timeout)).decode()
    except TimeoutError:
        return None


async def test_tail_json_prints_new_executions_only(recorded: Recorded) -> None:
    sent: list[str] = []
    async with tail(recorded.cli.env, "--json") as proc, aiohttp.ClientSession() as http:
        assert proc.stdout is not None
        line = None
        for attempt in range(20):  # until the subscription is in place
            async with http.get(f"{recorded.base_url}/?tail={attempt}") as response:
                sent.append(response.headers["x-flux-execution-id"])
            line = await first_line(proc.stdout, 1.0)
            if line:
                break
        assert line, "tail printed nothing"
        doc = json.loads(line)
        assert doc["id"] in sent  # never an execution from before tail started
        assert doc["id"] not in (recorded.signup, recorded.ok)
        assert doc["path"] == "/" and doc["status"] == 200 and doc["outcome"] == "ok"
        assert set(doc) == {"id", "started_at", "method", "path", "status", "outcome",
                            "duration_ms", "error_message"}


async def test_tail_human_shows_error_message_and_filters(recorded: Recorded) -> None:
    async with tail(recorded.cli.env, "--status", "error") as proc, \
            aiohttp.ClientSession() as http:
        assert proc.stdout is not None
        line = None
        failing: list[str] = []
        for _ in range(20):
            async with http.get(f"{recorded.base_url}/") as response:  # ok: filtered out
                await response.read()
            async with http.get(f"{recorded.base_url}/wrongtype") as response:
                failing.append(response.headers["x-flux-execution-id"][:8])
            line = await first_line(proc.stdout, 1.0)
            if line:
                break
        assert line is not None
        assert "GET /wrongtype" in line and "500" in line  # the ok requests were filtered out
        assert any(short in line for short in failing)
        second = await first_line(proc.stdout, 5.0)
        assert second is not None and "WRONGTYPE" in second


async def test_tail_reconnects_when_the_server_restarts(recorded: Recorded,
                                                        tmp_path_factory: pytest.TempPathFactory
                                                        ) -> None:
    server = ServerProcess(f"127.0.0.1:{free_port()}", tmp_path_factory.mktemp("tail-home"))
    server.start()
    async with FluxClient(recorded.cli.server) as source:
        execution = await source.get(recorded.slow)
    env = {**recorded.cli.env, "FLUX_SERVER": server.listen}
    try:
        async with tail(env, "--json") as proc:
            assert proc.stderr is not None and proc.stdout is not None
            await asyncio.sleep(1.0)
            server.stop()
            lost = await first_line(proc.stderr, 10.0)
            assert lost and "lost the server" in lost
            server.start()
            back = await first_line(proc.stderr, 15.0)
            assert back and "reconnected" in back
            async with FluxClient(server.listen) as target:
                await target.record_batch([execution])
            line = await first_line(proc.stdout, 5.0)
            assert line and json.loads(line)["id"] == recorded.slow
    finally:
        server.stop()
