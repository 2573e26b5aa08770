"""Real Deno apps under `flux serve`'s Runtime, with their records read back from the server.

Each test module starts one Runtime for its app (starting Deno workers is the slow part) and
shares it across its tests. The Runtime reads its upstreams and FLUX_HOME from `os.environ`,
so `serving()` sets exactly the app's variables for the Runtime's lifetime and puts the
environment back afterwards. npm packages are cached in one DENO_DIR across runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from flux_proxy.urls import upstream_kind
from flux_runtime.serve import Runtime, ServeOptions
from flux_server.client import FluxClient, NotFound, ServerUnavailable
from flux_server.records import BootRecord, Execution
from tests.services import free_port

APPS = Path(__file__).resolve().parent.parent / "fixtures" / "apps"
DENO_DIR = os.environ.get("FLUX_TEST_DENO_DIR", str(Path.home() / ".cache" / "flux" / "deno"))
RECORD_WAIT = 15.0  # seconds a finished request may take to reach the server (generous)


@dataclass(frozen=True)
class Reply:
    """What the HTTP client received."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def execution_id(self) -> str:
        return self.headers["x-flux-execution-id"]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ServedApp:
    """One app under a running Runtime, a client of its front and one of its record server."""

    runtime: Runtime
    http: aiohttp.ClientSession
    records: FluxClient
    home: Path

    @property
    def url(self) -> str:
        assert self.runtime.front is not None
        return self.runtime.front.url

    async def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.http.request(method, self.url + path, **kwargs) as response:
            body = await response.read()
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()},
                         body)

    async def execution(self, execution_id: str) -> Execution:
        """The stored record; the shipper sends it shortly after the response ends."""
        return await poll(lambda: self.records.get(execution_id))

    async def boot(self, boot_id: str) -> BootRecord:
        return await poll(lambda: self.records.get_boot(boot_id))

    async def recorded(self, reply: Reply) -> Execution:
        return await self.execution(reply.execution_id)


async def poll(fetch: Any, timeout: float = RECORD_WAIT) -> Any:
    """`fetch()` until the server has the record (NotFound until then; ServerUnavailable
    while a restarted server is not reachable yet)."""
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(NotFound, ServerUnavailable):
                return await fetch()
            await asyncio.sleep(0.05)


@contextlib.contextmanager
def app_environment(variables: dict[str, str], home: Path) -> Iterator[None]:
    """Exactly `variables` as upstreams (no stray URL from the machine), FLUX_HOME=`home`."""
    saved = dict(os.environ)
    for name, value in saved.items():
        if upstream_kind(value) is not None or name in ("FLUX_SERVER", "FLUX_TOKEN",
                                                                 "FLUX_DATABASE_URL"):
            del os.environ[name]
    os.environ.update(variables)
    os.environ["FLUX_HOME"] = str(home)
    os.environ["DENO_DIR"] = DENO_DIR
    os.environ["DENO_NO_UPDATE_CHECK"] = "1"
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.asynccontextmanager
async def serving(app: str, env: dict[str, str], *, workers: int = 1, sample: float = 1.0,
                  server: str | None = None, home: Path | None = None
                  ) -> AsyncIterator[ServedApp]:
    """`app` (a file in tests/fixtures/apps) under a Runtime on a free port.

    Without `server`, the Runtime is pointed at a free port where nothing answers, so it
    starts its embedded server there (SQLite under FLUX_HOME). FLUX_HOME is `home`, else a
    temporary directory.
    """
    address = server or f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="flux-it-") as tmp, \
            app_environment(env, home or Path(tmp)):
        runtime = Runtime(ServeOptions(app=str(APPS / app), port=0, workers=workers,
                                       server=address, sample=sample, echo_output=False))
        try:
            await runtime.start()
            async with aiohttp.ClientSession() as http, FluxClient(address) as records:
                yield ServedApp(runtime=runtime, http=http, records=records,
                                home=home or Path(tmp))
        finally:
            await runtime.stop()


def request_exchanges(execution: Execution) -> list[Any]:
    """The exchanges that belong to the request itself (not connection/session set-up)."""
    return [x for x in execution.exchanges if x.lifetime.value == "request"]


def console_lines(execution: Execution) -> list[tuple[str, str]]:
    return [(line.level, line.text) for line in execution.console]


async def replay_differences(served: ServedApp, skip: tuple[str, ...] = ()) -> list[str]:
    """Replays one recorded request per distinct target of this app, in-process, and lists
    every one whose replay was not completed with a byte-identical response."""
    from flux_runtime.replay import fetch_recording, replay
    from flux_runtime.report import ReplayOutcome

    page = await served.records.list(limit=1000)
    seen: set[tuple[str, str]] = set()
    problems: list[str] = []
    for summary in reversed(page.executions):  # oldest first, as they were served
        recording = await fetch_recording(served.records, summary.id)
        original = recording.execution
        target = (original.method, f"{original.path}?{original.query}")
        if original.mode.value != "record" or target in seen or original.path in skip:
            continue
        seen.add(target)
        report = await replay(recording)
        replayed = report.replayed
        same = (replayed.status, replayed.response_body) == (original.status,
                                                             original.response_body)
        if report.outcome is not ReplayOutcome.COMPLETED or not same:
            problems.append(f"{target}: {report.outcome.value}, status {original.status}->"
                            f"{replayed.status}, divergences {report.divergences}, "
                            f"stopped {report.stopped_at}, unused {len(report.unused)}, "
                            f"body {original.response_body[:80]!r} -> "
                            f"{replayed.response_body[:80]!r}")
    assert seen, "nothing was recorded to replay"
    return problems
