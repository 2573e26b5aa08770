"""`flux replay ID` wall time for a simple request, and where the time goes.

Records one request of bench/apps/replay_simple.ts (Deno.serve + npm:pg) against a throwaway
PostgreSQL, then times `flux replay ID --json` several times and prints the median, next to the
parts measured the same way in the same run: Python start with the CLI imported, Deno start
with the shim, and the app module's load (npm:pg) under bare Deno.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flux_runtime.deno import deno_binary, shim_path  # noqa: E402
from flux_runtime.serve import Runtime, ServeOptions  # noqa: E402
from flux_server.client import FluxClient  # noqa: E402
from tests.services import PgCluster, free_port  # noqa: E402
from tests.support import ServerProcess, wait_stored  # noqa: E402

APP = ROOT / "bench" / "apps" / "replay_simple.ts"
RUNS = int(os.environ.get("BENCH_RUNS", "7"))


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def median_of(cmd: list[str], env: dict[str, str]) -> float:
    return statistics.median(timed(cmd, env) for _ in range(RUNS))


async def record(cluster: PgCluster, server: ServerProcess, home: Path) -> str:
    os.environ.update(DATABASE_URL=cluster.url(), FLUX_HOME=str(home))
    runtime = Runtime(ServeOptions(app=str(APP), port=free_port(), workers=1,
                                   server=server.listen, echo_output=False))
    await runtime.start()
    try:
        import urllib.request

        url = f"http://127.0.0.1:{runtime.front.port}/"  # type: ignore[union-attr]
        with await asyncio.to_thread(urllib.request.urlopen, url) as response:
            execution_id = response.headers["x-flux-execution-id"]
        async with FluxClient(server.listen) as client:
            await wait_stored(client, execution_id)
    finally:
        await runtime.stop()
    return execution_id


def main() -> None:
    cluster = PgCluster(users=(), tls=False).start()
    home = Path(tempfile.mkdtemp(prefix="flux-bench-replay-"))
    server = ServerProcess(f"127.0.0.1:{free_port()}", home)
    server.start()
    try:
        execution_id = asyncio.run(record(cluster, server, home))
        env = {**os.environ, "FLUX_SERVER": server.listen}
        py = sys.executable
        replay = median_of([py, "-m", "flux_cli", "replay", execution_id, "--json"], env)
        python_cli = median_of([py, "-c", "import flux_cli.replay, flux_runtime.replay"], env)
        deno = deno_binary()
        empty = home / "empty.ts"
        empty.write_text("")
        deno_start = median_of([deno, "run", "-A", "--preload", str(shim_path()), str(empty)],
                               env)
        load = home / "load.ts"
        load.write_text('import "npm:pg@8";\n')
        module_load = median_of([deno, "run", "-A", str(load)], env)
    finally:
        server.stop()
        cluster.stop()
    rows = [
        ("flux replay ID (whole command)", replay),
        ("  Python start + CLI and runner imports", python_cli),
        ("  Deno start with the shim (empty app)", deno_start),
        ("  bare Deno loading the app's modules (npm:pg)", module_load),
        ("  the rest: record fetch, worker start, request, report",
         max(replay - python_cli - max(deno_start, module_load), 0.0)),
    ]
    print(f"median of {RUNS} runs each; ratio = share of the replay command")
    print(f"{'':55} {'seconds':>8} {'ratio':>6}")
    for name, seconds in rows:
        print(f"{name:55} {seconds:8.3f} {seconds / replay:6.2f}")
    print(f"target <= 1 s: {'met' if replay <= 1.0 else 'not met'}")


if __name__ == "__main__":
    main()
