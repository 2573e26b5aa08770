"""The `flux serve` command itself, as a user runs it: its start-up lines, and a graceful
SIGTERM that finishes the request in flight and stores its record before exiting."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import psycopg
import pytest

from flux_proxy.urls import upstream_kind
from flux_server.client import FluxClient
from tests.integration.conftest import APPS, DENO_DIR, poll
from tests.services import PgCluster, free_port

pytestmark = pytest.mark.deno

FLUX = [sys.executable, "-m", "flux_cli"]


def serve_env(home: Path, **upstreams: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if upstream_kind(v) is None
           and k not in ("FLUX_SERVER", "FLUX_TOKEN", "FLUX_DATABASE_URL")}
    env.update(upstreams, FLUX_HOME=str(home), DENO_DIR=DENO_DIR, DENO_NO_UPDATE_CHECK="1")
    return env


async def sleeping_in_postgres(pg: PgCluster) -> None:
    """Returns once the app's pg_sleep is running: the request is then surely in flight."""
    async with await psycopg.AsyncConnection.connect(pg.url(), autocommit=True) as conn:
        async with asyncio.timeout(30):
            while not await (await conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(1)' "
                    "AND state = 'active'")).fetchone():
                await asyncio.sleep(0.02)


async def test_serve_prints_its_lines_and_sigterm_finishes_the_request_in_flight(
        pg: PgCluster, tmp_path: Path) -> None:
    app = APPS / "default_export_pg.ts"
    port, server = free_port(), f"127.0.0.1:{free_port()}"
    home = tmp_path / "home"
    process = await asyncio.create_subprocess_exec(
        *FLUX, "serve", str(app), "--port", str(port), "--workers", "2", "--server", server,
        env=serve_env(home, DATABASE_URL=pg.url()), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    try:
        embedded = (await asyncio.wait_for(process.stderr.readline(), 60)).decode().strip()
        assert embedded == (f"flux: no record server answered at {server}; started an embedded "
                            f"one (sqlite {home / 'flux.db'})")
        lines = []
        while not lines or not lines[-1].startswith("flux: serving"):
            lines.append((await asyncio.wait_for(process.stdout.readline(), 60)).decode())
        assert lines[-1].strip() == (
            f"flux: serving {app} on http://127.0.0.1:{port} (2 workers)")

        async with aiohttp.ClientSession() as http:
            slow = asyncio.ensure_future(http.get(f"http://127.0.0.1:{port}/slow"))
            await sleeping_in_postgres(pg)  # the request is in flight, inside its query
            process.send_signal(signal.SIGTERM)
            response = await slow
            assert (response.status, await response.read()) == (200, b"slept")
            execution_id = response.headers["x-flux-execution-id"]
            response.release()
        assert await asyncio.wait_for(process.wait(), 60) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    rest = (await process.stderr.read()).decode()
    assert "Traceback" not in rest

    # The embedded server is gone with the process; its store on disk has the record.
    reader = subprocess.Popen([sys.executable, "-m", "flux_server", "--listen", server],
                              env=serve_env(home), stderr=subprocess.PIPE, text=True)
    try:
        assert reader.stderr is not None
        assert reader.stderr.readline().startswith("flux-server: listening on")
        async with FluxClient(server) as records:
            stored = await poll(lambda: records.get(execution_id))
        assert (stored.path, stored.status, stored.response_body) == ("/slow", 200, b"slept")
        assert [x.request["sql"] for x in stored.exchanges] == ["SELECT pg_sleep(1)"]
    finally:
        reader.send_signal(signal.SIGTERM)
        reader.communicate(timeout=20)
