"""Records made while the record server is down are spooled under FLUX_HOME and arrive once it
is back: within the same `flux serve`, and from the next one after a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flux_server.client import FluxClient
from tests.integration.conftest import Reply, ServedApp, serving
from tests.services import PgCluster, free_port

pytestmark = pytest.mark.deno


class ServerProcess:
    """A real `flux-server` process (SQLite store) that can be killed and started again."""

    def __init__(self, home: Path) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.home = home
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("FLUX_TOKEN", "FLUX_DATABASE_URL", "DATABASE_URL", "FLUX_SERVER")}
        env["FLUX_HOME"] = str(self.home)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flux_server", "--listen", self.address], env=env,
            stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        assert line.startswith("flux-server: listening on"), line

    def kill(self) -> None:
        """As abrupt as a crash: no chance to finish anything."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=20)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.communicate(timeout=20)
            self.process = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "server-home")
    process.start()
    yield process
    process.stop()


async def spooled(served: ServedApp, minimum: int = 1) -> list[Path]:
    """The spool files, once the shipper has written at least `minimum`."""
    shipper = served.runtime.shipper
    assert shipper is not None
    async with asyncio.timeout(30):
        while len(shipper.spool.pending()) < minimum:
            await asyncio.sleep(0.05)
    return shipper.spool.pending()


async def stored_ids(address: str) -> list[str]:
    async with FluxClient(address) as client:
        page = await client.list(limit=1000)
    return [summary.id for summary in page.executions]


async def test_records_spooled_while_the_server_is_down_arrive_exactly_once(
        pg: PgCluster, server: ServerProcess, tmp_path: Path) -> None:
    env = {"DATABASE_URL": pg.url()}
    async with serving("default_export_pg.ts", env, server=server.address,
                       home=tmp_path / "serve-home") as served:
        assert served.runtime.embedded is None  # the real server answered at start
        before = await served.request("GET", "/sum?a=0&b=0")
        await served.recorded(before)

        server.kill()
        during: list[Reply] = [await served.request("GET", f"/sum?a={n}&b=1") for n in range(5)]
        during.append(await served.request("GET", "/divide"))
        assert [r.status for r in during] == [200] * 5 + [500]  # serving never depended on it
        files = await spooled(served)
        assert all(f.parent == tmp_path / "serve-home" / "spool" for f in files)

        server.start()
        stored = [await served.recorded(reply) for reply in during]
        assert [e.query for e in stored[:5]] == [f"a={n}&b=1" for n in range(5)]
        assert [x.request["params"] for e in stored[:5] for x in e.exchanges] == [
            [str(n), "1"] for n in range(5)]  # exchanges survive the spool
        assert stored[5].error is not None and stored[5].error.message == "division by zero"
        async with asyncio.timeout(30):
            while served.runtime.shipper.spool.pending():  # type: ignore[union-attr]
                await asyncio.sleep(0.05)

    ids = await stored_ids(server.address)
    expected = [before.execution_id, *(r.execution_id for r in during)]
    assert sorted(ids) == sorted(expected)  # each exactly once, nothing else


async def test_spool_left_by_a_stopped_serve_is_sent_by_the_next_one(
        pg: PgCluster, server: ServerProcess, tmp_path: Path) -> None:
    env = {"DATABASE_URL": pg.url()}
    home = tmp_path / "serve-home"
    async with serving("default_export_pg.ts", env, server=server.address, home=home) as served:
        server.kill()
        left = [await served.request("GET", f"/sum?a={n}&b=2") for n in range(3)]
        await spooled(served)
    # Stopped while the server was down: everything it recorded is on disk.
    assert list((home / "spool").glob("*.batch"))

    server.start()
    async with serving("default_export_pg.ts", env, server=server.address, home=home) as served:
        stored = [await served.recorded(reply) for reply in left]
        assert [e.query for e in stored] == [f"a={n}&b=2" for n in range(3)]
        async with asyncio.timeout(30):
            while list((home / "spool").glob("*.batch")):
                await asyncio.sleep(0.05)
    ids = await stored_ids(server.address)
    assert sorted(ids) == sorted(r.execution_id for r in left)
