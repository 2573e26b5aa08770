"""A real flux-server process, a fixture app served under the runtime, and the CLI as a user
runs it (a subprocess), so every command is tested against real records."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from flux_runtime.serve import Runtime, ServeOptions
from flux_server.client import FluxClient
from tests.services import PgCluster, RedisServer, free_port, wait_for_port

APP = Path(__file__).resolve().parent.parent / "fixtures" / "cli" / "app.ts"


@dataclass
class Cli:
    server: str
    env: dict[str, str]

    async def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`flux ARGS` in a subprocess; the event loop keeps serving meanwhile."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flux_cli", *args,
            env={**self.env, "FLUX_SERVER": self.server, "COLUMNS": "200"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())

    async def json(self, *args: str) -> object:
        result = await self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@dataclass
class ServerProcess:
    listen: str
    home: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "FLUX_HOME": str(self.home)}
        env.pop("DATABASE_URL", None)
        env.pop("FLUX_DATABASE_URL", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "flux_cli", "server", "--listen",
                                      self.listen], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(int(self.listen.rsplit(":", 1)[1]))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def flux_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(f"127.0.0.1:{free_port()}", tmp_path_factory.mktemp("flux-home"))
    server.start()
    yield server
    server.stop()


@dataclass
class Recorded:
    """Ids of real executions, one per failure kind."""

    cli: Cli
    base_url: str
    unique_violation: str
    throw_after_update: str
    slow: str
    wrongtype: str
    ok: str
    signup: str
    many: str


@pytest.fixture(scope="session")
async def recorded(pg: PgCluster, redis_plain: RedisServer,
                   flux_server_process: ServerProcess,
                   tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Recorded]:
    saved = dict(os.environ)
    os.environ.update(DATABASE_URL=pg.url(), REDIS_URL=redis_plain.url(),
                      FLUX_HOME=str(tmp_path_factory.mktemp("serve-home")))
    options = ServeOptions(app=str(APP), port=free_port(), workers=2,
                           server=flux_server_process.listen, echo_output=False)
    runtime = Runtime(options)
    try:
        await runtime.start()
        base = f"http://127.0.0.1:{runtime.front.port}"  # type: ignore[union-attr]
        ids: dict[str, str] = {}
        async with aiohttp.ClientSession() as http:
            for name, target in [("signup", "/signup?email=ada@example.com"),
                                 ("unique_violation", "/signup?email=ada@example.com"),
                                 ("throw_after_update", "/visit?email=ada@example.com"),
                                 ("slow", "/slow"), ("wrongtype", "/wrongtype"), ("ok", "/"),
                                 ("many", "/many")]:
                async with http.get(base + target) as response:
                    await response.read()
                    ids[name] = response.headers["x-flux-execution-id"]
        async with FluxClient(flux_server_process.listen) as client:
            for execution_id in ids.values():
                await wait_stored(client, execution_id)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    env = {**os.environ, "FLUX_SERVER": flux_server_process.listen}
    yield Recorded(Cli(flux_server_process.listen, env), base, **ids)
    await runtime.stop()


async def wait_stored(client: FluxClient, execution_id: str, timeout: float = 10.0) -> None:
    from flux_server.client import NotFound

    async with asyncio.timeout(timeout):
        while True:
            try:
                await client.get(execution_id)
                return
            except NotFound:
                await asyncio.sleep(0.1)
