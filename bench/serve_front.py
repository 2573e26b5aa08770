"""wrk against a trivial app: bare `deno run` vs through the Flux front and pool.

    .venv/bin/python bench/serve_front.py [--duration 5] [--connections 32] [--workers 1,2,4]
                                          [--wait-ms 0] [--app APP.ts]

The front and pool run in this process, on the loop every `flux` command runs
(`flux_cli.loop.run`: uvloop, the tuned garbage collector).

Prints one table: requests/s, p50 and p99 latency, and the ratio to bare Deno, per worker
count. Needs `wrk` (apt-get install wrk). Speed is measured here only, never in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._wrk import Figures, wrk
from flux_runtime.deno import deno_binary, deno_dir
from flux_runtime.front import Front
from flux_runtime.pool import WorkerPool
from flux_runtime.worker import free_port

TRIVIAL_APP = """
const port = Number(Deno.env.get("PORT") ?? "8000");
const waitMs = Number(Deno.env.get("WAIT_MS") ?? "0");
Deno.serve({ port, hostname: "127.0.0.1", onListen() {} }, async () => {
  // WAIT_MS > 0 stands in for a handler that waits on a database
  if (waitMs > 0) await new Promise((resolve) => setTimeout(resolve, waitMs));
  return new Response("ok", { headers: { "content-type": "text/plain" } });
});
"""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bare(app: Path, duration: int, connections: int, wait_ms: int) -> Figures:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "WAIT_MS": str(wait_ms)}
    if directory := deno_dir(os.environ.get("FLUX_TEST_DENO_DIR")):
        env["DENO_DIR"] = directory
    process = await asyncio.create_subprocess_exec(
        deno_binary(), "run", "-A", str(app), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        return await wrk("bare deno run", f"http://127.0.0.1:{port}/", duration, connections)
    finally:
        process.terminate()
        await process.wait()


async def through_flux(app: Path, workers: int, duration: int, connections: int,
                       wait_ms: int) -> Figures:
    env = {**os.environ, "PORT": "1", "WAIT_MS": str(wait_ms)}
    pool = WorkerPool(app, workers=workers, env=env,
                      deno_dir=os.environ.get("FLUX_TEST_DENO_DIR"))
    await pool.start()
    front = Front(pool, port=0)
    await front.start()
    try:
        before = cpu_seconds()
        figures = await wrk(f"flux, {workers} worker(s)", front.url + "/", duration, connections)
        figures.flux_cpu_us = (cpu_seconds() - before) / max(figures.requests, 1) * 1e6
        return figures
    finally:
        await front.stop()
        await pool.stop()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        app = Path(args.app) if args.app else Path(scratch) / "trivial.ts"
        if not args.app:
            app.write_text(TRIVIAL_APP)
        base = await bare(app, args.duration, args.connections, args.wait_ms)
        rows = [base]
        for workers in (int(n) for n in args.workers.split(",")):
            rows.append(await through_flux(app, workers, args.duration, args.connections,
                                           args.wait_ms))
    loop = "uvloop (flux_cli/loop.py)"
    load = os.getloadavg()[0]
    kind = f"Deno.serve, handler waits {args.wait_ms} ms" if args.wait_ms else "trivial Deno.serve"
    print(f"app: {args.app or kind}; wrk -t2 -c{args.connections} "
          f"-d{args.duration}s; event loop: {loop}; cores: {os.cpu_count()}; "
          f"load average at the end: {load:.1f}")
    print(f"{'':24} {'req/s':>9} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} {'flux CPU/req':>13}"
          "  errors")
    for row in rows:
        ratio = row.requests_per_second / max(base.requests_per_second, 1e-9)
        cpu = "" if row.flux_cpu_us != row.flux_cpu_us else f"{row.flux_cpu_us:.0f} us"
        print(f"{row.label:24} {row.requests_per_second:9.0f} {ratio:6.2f} {row.p50_ms:8.2f} "
              f"{row.p99_ms:8.2f} {cpu:>13}  {row.errors}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--wait-ms", type=int, default=0,
                        help="the built-in app waits this long per request (IO stand-in)")
    parser.add_argument("--app", help="a Deno app to use instead of the trivial one")
    from flux_cli.loop import run

    run(main(parser.parse_args()))
