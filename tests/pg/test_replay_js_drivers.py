"""postgres.js and node-postgres under Deno, recorded, then replayed with the server stopped.

The client (replay_js_client.ts) runs in phases and the test tags the proxy for each, as the
runtime does for a worker: boot IO, an earlier request that prepares the statements, then the
request. Replays are `fresh`: a new worker whose earlier request never ran, so the drivers
parse and describe anew, under new statement names, what the recorded request only executed.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flux_proxy.matcher import MatchKind
from flux_proxy.model import Exchange
from flux_proxy.pg.proxy import PgRecordProxy
from flux_proxy.pg.replay import PgReplayProxy
from flux_proxy.replay import ReplayBook
from flux_runtime.deno import deno_binary
from tests.pg.replay_harness import REQUEST, url_of
from tests.services import PgCluster

CLIENT = Path(__file__).with_name("replay_js_client.ts")
DENO_DIR = os.environ.get("FLUX_TEST_DENO_DIR", str(Path.home() / ".cache" / "flux" / "deno"))
TAGS = {"boot": None, "earlier": "an-earlier-request", "request": REQUEST, "done": None}
DRIVERS = ("postgres.js", "node-postgres")


async def run_client(proxy: PgRecordProxy | PgReplayProxy, driver: str,
                     variant: str = "") -> Any:
    env = {**os.environ, "DATABASE_URL": url_of(proxy.port), "DENO_DIR": DENO_DIR,
           "DENO_NO_UPDATE_CHECK": "1"}
    process = await asyncio.create_subprocess_exec(
        deno_binary(), "run", "--allow-net=127.0.0.1", "--allow-env", "--allow-read",
        "--allow-sys", str(CLIENT), driver, variant, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env=env)
    assert process.stdin is not None and process.stdout is not None
    try:
        while line := (await asyncio.wait_for(process.stdout.readline(), 60)).decode():
            if line.startswith("PHASE "):
                proxy.set_current_request(TAGS[line.split()[1]])
                process.stdin.write(b"go\n")
                await process.stdin.drain()
            elif line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        raise AssertionError(f"the {driver} client ended without a result")
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.fixture(scope="module")
async def js_recordings() -> AsyncIterator[dict[str, tuple[Any, list[Exchange]]]]:
    cluster = PgCluster(tls=False, users=()).start()
    recorded: dict[str, tuple[Any, list[Exchange]]] = {}
    try:
        for driver in DRIVERS:
            exchanges: list[Exchange] = []
            proxy = await PgRecordProxy(cluster.url(sslmode="disable"), exchanges.append).start()
            try:
                recorded[driver] = (await run_client(proxy, driver), exchanges)
            finally:
                await proxy.close()
    finally:
        port = cluster.port
        cluster.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # no server to dial
    yield recorded


async def replay_client(recorded: list[Exchange], driver: str,
                        variant: str) -> tuple[Any, ReplayBook]:
    book = ReplayBook([x for x in recorded if x.request_id == REQUEST],
                      [x for x in recorded if x.request_id is None])
    proxy = PgReplayProxy(book, "DATABASE_URL")
    await proxy.start()
    try:
        return await run_client(proxy, driver, variant), book
    finally:
        await proxy.close()


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_fresh_worker_replays_the_request_identically(
        js_recordings: dict[str, tuple[Any, list[Exchange]]], driver: str) -> None:
    result, recorded = js_recordings[driver]
    mine = [x for x in recorded if x.request_id == REQUEST]
    cached = [x for x in mine if x.client_frames[0][:1] == b"B"]
    assert cached, "the recorded request executes a statement prepared before it"
    again, book = await replay_client(recorded, driver, "fresh")
    assert again == result
    assert book.stopped_at is None and book.unused() == []
    assert [d for r in book.replayed for d in r.match.divergences] == []
    replayed_names = {r.exchange.request.get("statement") for r in book.replayed}
    recorded_names = {x.request.get("statement") for x in mine}
    if driver == "postgres.js":  # random statement names, new on every connection
        assert replayed_names - {"", None} and not (replayed_names & recorded_names - {"", None})


async def test_postgres_js_with_a_changed_parameter_diverges_on_it(
        js_recordings: dict[str, tuple[Any, list[Exchange]]]) -> None:
    result, recorded = js_recordings["postgres.js"]
    again, book = await replay_client(recorded, "postgres.js", "fresh,changed")
    assert again == result  # the recorded answer
    [diverged] = [r for r in book.replayed if r.match.kind is MatchKind.DIVERGED]
    assert [(d.field, d.expected, d.actual) for d in diverged.match.divergences] == [
        ("param $1", "2", "3")]
    assert book.stopped_at is None


async def test_node_postgres_with_an_extra_query_stops_there_and_goes_on(
        js_recordings: dict[str, tuple[Any, list[Exchange]]]) -> None:
    result, recorded = js_recordings["node-postgres"]
    again, book = await replay_client(recorded, "node-postgres", "fresh,extra")
    extra = again.pop(1)
    assert extra["code"] == "FX001" and "SELECT v FROM js_rows WHERE id = $1" in extra["message"]
    assert again == result  # everything after the miss was still answered
    stopped = book.stopped_at
    assert stopped is not None and stopped.exchange.request["params"] == ["404"]
    assert book.unused() == []
