"""Recordings of a real app made against private Postgres and Redis servers, which are then
stopped: every replay here runs with no database at all."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from flux_runtime.serve import Runtime, ServeOptions
from flux_server.client import FluxClient
from tests.services import PgCluster, RedisServer, free_port
from tests.support import Cli, ServerProcess, drop_stray_upstreams, wait_stored

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "replay"
SHOP = FIXTURES / "shop.ts"

# Changed versions of the shop, each a one-line edit a developer could make: (old, new).
VARIANTS = {
    "diverged": ('[sku]);\n      return Response.json({ sku, qty',
                 '[sku.toUpperCase()]);\n      return Response.json({ sku, qty'),
    "extra_query": ('const sku = url.searchParams.get("sku") ?? "tea";',
                    'const sku = url.searchParams.get("sku") ?? "tea";\n'
                    '      await db.query("SELECT count(*) FROM replay_orders");'),
    "fetch": ('const sku = url.searchParams.get("sku") ?? "tea";',
              'const sku = url.searchParams.get("sku") ?? "tea";\n'
              '      await fetch("http://example.com/");'),
    "write": ('const sku = url.searchParams.get("sku") ?? "tea";',
              'const sku = url.searchParams.get("sku") ?? "tea";\n'
              '      await Deno.writeTextFile("/tmp/flux-replay-write-test.txt", sku);'),
}


class ConnectionCounter:
    """Listens where a stopped server was, and counts who dials it: the proof that replay
    never opens a connection to the real database."""

    def __init__(self, port: int) -> None:
        self.accepted = 0
        self._sock = socket.create_server(("127.0.0.1", port))
        self._sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self._sock.close()


@dataclass
class ShopRecording:
    cli: Cli
    ids: dict[str, str]
    bodies: dict[str, bytes]
    counters: list[ConnectionCounter] = field(default_factory=list)

    def variant(self, name: str, directory: Path) -> Path:
        old, new = VARIANTS[name]
        source = SHOP.read_text()
        assert old in source, f"variant {name} no longer applies to shop.ts"
        path = directory / f"shop_{name}.ts"
        path.write_text(source.replace(old, new))
        return path

    @property
    def dials(self) -> int:
        return sum(c.accepted for c in self.counters)


REQUESTS = [
    ("orders", "POST", "/orders", b'{"sku": "tea", "qty": 3}'),
    ("burst", "GET", "/burst", b""),
    ("transfer", "POST", "/transfer", b""),
    ("duplicate", "POST", "/duplicate", b""),
    ("price", "GET", "/price?sku=tea", b""),
]


@pytest.fixture(scope="session")
async def shop(flux_server_process: ServerProcess,
               tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ShopRecording]:
    cluster = PgCluster(users=(), tls=False).start()
    redis_server = RedisServer().start()
    saved = dict(os.environ)
    drop_stray_upstreams()
    os.environ.update(DATABASE_URL=cluster.url(), REDIS_URL=redis_server.url(),
                      FLUX_HOME=str(tmp_path_factory.mktemp("replay-home")))
    env = dict(os.environ)
    runtime = Runtime(ServeOptions(app=str(SHOP), port=free_port(), workers=2,
                                   server=flux_server_process.listen, echo_output=False))
    ids: dict[str, str] = {}
    bodies: dict[str, bytes] = {}
    try:
        await runtime.start()
        base = f"http://127.0.0.1:{runtime.front.port}"  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as http:
            for name, method, target, body in REQUESTS:
                headers = {"content-type": "application/json"} if body else {}
                async with http.request(method, base + target, data=body or None,
                                        headers=headers) as response:
                    bodies[name] = await response.read()
                    ids[name] = response.headers["x-flux-execution-id"]
        async with FluxClient(flux_server_process.listen) as client:
            for execution_id in ids.values():
                await wait_stored(client, execution_id)
    finally:
        await runtime.stop()
        os.environ.clear()
        os.environ.update(saved)
        cluster.stop()
        redis_server.stop()
    await asyncio.sleep(0.2)
    counters = [ConnectionCounter(cluster.port), ConnectionCounter(redis_server.port)]
    yield ShopRecording(Cli(flux_server_process.listen, env), ids, bodies, counters)
    for counter in counters:
        counter.close()
