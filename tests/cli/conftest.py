"""A real flux-server process, a fixture app served under the runtime, and the CLI as a user
runs it (a subprocess), so every command is tested against real records."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from flux_runtime.serve import Runtime, ServeOptions
from flux_server.client import FluxClient
from tests.services import PgCluster, RedisServer, free_port
from tests.support import Cli, ServerProcess, drop_stray_upstreams, wait_stored

APP = Path(__file__).resolve().parent.parent / "fixtures" / "cli" / "app.ts"


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
    drop_stray_upstreams()
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
