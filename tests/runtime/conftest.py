"""Real Deno apps under the real pool and front; npm packages cached across runs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from flux_runtime.front import Front
from flux_runtime.pool import PoolHooks, WorkerPool
from flux_server.records import Execution

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "runtime"
APPS = {
    "deno_serve": FIXTURES / "deno_serve_app.ts",
    "hono": FIXTURES / "hono_app.ts",
    "express": FIXTURES / "express_app.ts",
    "default_export": FIXTURES / "default_export_app.ts",
}
DENO_DIR = os.environ.get("FLUX_TEST_DENO_DIR", str(Path.home() / ".cache" / "flux" / "deno"))


@dataclass
class Served:
    """A pool and its front, with every hook call and execution they produced."""

    pool: WorkerPool
    front: Front
    client: aiohttp.ClientSession
    executions: dict[str, Execution] = field(default_factory=dict)
    events: list[tuple[str, Any]] = field(default_factory=list)

    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def record(self, execution_id: str, timeout: float = 15.0) -> Execution:
        """The execution for this id: the front records it just after the response ends."""
        async with asyncio.timeout(timeout):
            while execution_id not in self.executions:
                self.arrived.clear()
                await self.arrived.wait()
        return self.executions[execution_id]

    async def execution(self, response: aiohttp.ClientResponse) -> Execution:
        return await self.record(response.headers["x-flux-execution-id"])


@asynccontextmanager
async def serving(app: Path, **pool_args: Any) -> AsyncIterator[Served]:
    """Start `app` under a pool and a front on a free port; stop both afterwards."""
    served: Served | None = None
    events: list[tuple[str, Any]] = []  # until `served` exists

    def on_execution(execution: Execution) -> None:
        assert served is not None
        served.executions[execution.id] = execution
        events.append(("execution", execution.id))
        served.arrived.set()

    hooks = PoolHooks(
        worker_starting=lambda worker: events.append(("starting", (worker.id, worker.boot_id))),
        worker_ready=lambda worker: events.append(("ready", (worker.id, worker.boot_id))),
        before_dispatch=lambda worker, execution_id: events.append(
            ("before", (worker.id, execution_id))),
        after_completion=lambda worker, execution: events.append(
            ("after", (worker.id, execution.id))),
        on_execution=on_execution,
    )
    pool = WorkerPool(app, deno_dir=DENO_DIR, hooks=hooks, **pool_args)
    await pool.start()
    front = Front(pool, port=0)
    await front.start()
    client = aiohttp.ClientSession(auto_decompress=False)
    served = Served(pool=pool, front=front, client=client, events=events)
    try:
        yield served
    finally:
        await client.close()
        await front.stop()
        await pool.stop()


@pytest.fixture(scope="session")
def deno_dir() -> str:
    return DENO_DIR
