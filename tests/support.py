"""Helpers for tests that run Flux as a user does: a flux-server process and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from flux_server.client import FluxClient, NotFound
from tests.services import wait_for_port


@dataclass
class Cli:
    server: str
    env: dict[str, str]

    async def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`flux ARGS` in a subprocess; the event loop keeps serving meanwhile."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flux_cli", *args,
            env={**self.env, "FLUX_SERVER": self.server, "COLUMNS": "200"},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
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


async def wait_stored(client: FluxClient, execution_id: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                await client.get(execution_id)
                return
            except NotFound:
                await asyncio.sleep(0.1)


async def record_failure(app: Path, server: ServerProcess, env: dict[str, str],
                         target: str, home: Path) -> str:
    """Serve `app` under the runtime with exactly the upstreams in `env`, send it `target`
    (which fails with a 500), and wait until the server has the record; its id."""
    import aiohttp

    from flux_runtime.serve import Runtime, ServeOptions
    from tests.services import free_port

    saved = dict(os.environ)
    drop_stray_upstreams()
    os.environ.update(env, FLUX_HOME=str(home))
    runtime = Runtime(ServeOptions(app=str(app), port=free_port(), workers=1,
                                   server=server.listen, echo_output=False))
    try:
        await runtime.start()
        assert runtime.front is not None
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{runtime.front.port}{target}") as response:
            assert response.status == 500
            execution_id = response.headers["x-flux-execution-id"]
        async with FluxClient(server.listen) as client:
            await wait_stored(client, execution_id)
    finally:
        await runtime.stop()
        os.environ.clear()
        os.environ.update(saved)
    return execution_id


def drop_stray_upstreams() -> None:
    """Remove every postgres:// or redis:// variable from os.environ, so a test's app gets
    exactly the upstreams the test gives it, whatever the machine's environment holds."""
    from flux_proxy.urls import upstream_kind

    for name, value in list(os.environ.items()):
        if upstream_kind(value) is not None:
            del os.environ[name]
