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
