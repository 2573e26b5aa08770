"""`flux-server` as real processes: the command line, and two servers sharing one Postgres."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flux_server.client import FluxClient
from flux_server.filters import ExecutionFilter
from tests.server.conftest import fresh_database
from tests.server.factory import make_execution, make_failed_execution
from tests.services import PgCluster, free_port

SERVER = [sys.executable, "-m", "flux_server"]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLUX_TOKEN", "FLUX_DATABASE_URL", "DATABASE_URL", "FLUX_SERVER")}
    env["FLUX_HOME"] = str(tmp_path / "home")
    env.update(extra)
    return env


@contextmanager
def running_server(args: list[str], env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Starts `flux-server ARGS`; yields (address, its start-up line); SIGTERMs it after."""
    port = free_port()
    process = subprocess.Popen([*SERVER, "--listen", f"127.0.0.1:{port}", *args], env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline().strip()
        assert line.startswith("flux-server: listening on"), line
        yield f"127.0.0.1:{port}", line
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=20)
        assert process.returncode == 0, rest
        assert "Traceback" not in rest


async def test_tail_on_one_server_sees_what_another_ingests(pg: PgCluster,
                                                           tmp_path: Path) -> None:
    url = await fresh_database(pg)
    env = clean_env(tmp_path)
    with running_server(["--database-url", url], env) as (first, line), \
            running_server([], clean_env(tmp_path, DATABASE_URL=url)) as (second, _):
        assert "postgres" in line and "flux_server_" in line and "@" not in line
        async with FluxClient(first) as tailing, FluxClient(second) as ingesting:
            stream = tailing.tail(ExecutionFilter(outcome=None, status_class="5xx"))
            await stream.started()
            crash = make_failed_execution("x" * 100_000, status=502)  # a huge error, too
            assert (await ingesting.record_batch([make_execution(), crash])).executions == 2
            async with asyncio.timeout(10):
                summary = await anext(stream)
            assert summary.id == crash.id and summary.error_message == "x" * 100_000
            assert await tailing.get(crash.id[:8]) == crash
            assert (await tailing.record_batch([crash])).executions == 0  # idempotent across
            stream.cancel()


async def test_sqlite_is_the_default_store(tmp_path: Path) -> None:
    with running_server(["--retention", "7d"], clean_env(tmp_path)) as (address, line):
        assert f"sqlite {tmp_path / 'home' / 'flux.db'}" in line and "retention 7d" in line
        async with FluxClient(address) as client:
            await client.record_batch([make_execution()])
    assert (tmp_path / "home" / "flux.db").exists()


def run_failing(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run([*SERVER, *args], env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


def test_command_line_errors_are_one_line(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    assert "FLUX_TOKEN" in run_failing(["--listen", "0.0.0.0:50051"], env)
    assert "HOST:PORT" in run_failing(["--listen", "nonsense"], env)
    assert "7d" in run_failing(["--retention", "forever"], env)
    assert "postgres://" in run_failing(["--database-url", "mysql://u:pw@h/db"], env)
    with running_server([], env) as (address, _):
        assert "cannot listen on" in run_failing(["--listen", address], env)
