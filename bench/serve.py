"""wrk against an app that does one Postgres query and one Redis GET per request: bare
`deno run` vs `flux serve` (record mode, embedded record server), measured in one run.

    .venv/bin/python bench/serve.py [--duration 5] [--connections 32] [--workers 1,2,4]
                                    [--default-workers 2]
    .venv/bin/python bench/serve.py --baseline REV [--rounds 6] [--duration 4]

`flux serve` runs as users run it: the `flux` command in its own process. Prints two tables:
throughput at --connections (per worker count, with the ratio to bare), and the latency one
request at a time (wrk -c1), where the difference to bare is what Flux adds to each request.

The throughput table also has the *prefork ceiling*: N bare `deno run` processes, each sent one
request at a time (one `wrk -c1` per process, run together). That is what a pool of N workers
serving one request at a time (DESIGN.md, "Attribution") could reach if Flux itself cost
nothing; `flux serve` is compared with it too.
`--baseline REV` compares instead: `flux serve` from git revision REV (a temporary worktree)
and from this tree, started alternately, round after round; on a shared machine whose speed
drifts, that is how a change is measured.

Needs `wrk` (apt-get install wrk), PostgreSQL and redis-server binaries (throwaway servers are
started here). Speed is measured here only, never in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._wrk import Figures, wrk
from flux_runtime.deno import deno_binary
from flux_server.client import FluxClient
from tests.services import PgCluster, RedisServer, free_port, wait_for_port

APP = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "apps" / "bench_pg_redis.ts"
FLUX = Path(sys.executable).parent / "flux"
DENO_DIR = os.environ.get("FLUX_TEST_DENO_DIR", str(Path.home() / ".cache" / "flux" / "deno"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def is_deno(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "deno"
    except OSError:
        return False


async def measured(label: str, url: str, duration: int, connections: int, pid: int,
                   flux: bool) -> Figures:
    """wrk, with the CPU the server side spent per request (contention-proof, unlike req/s)."""
    def sample() -> tuple[float, float]:
        # Deno processes are the app; any other child of flux (its record helper) is Flux
        children = descendants(pid)
        app = sum(cpu_seconds(child) for child in children if is_deno(child))
        own = cpu_seconds(pid) + sum(cpu_seconds(child) for child in children
                                     if not is_deno(child))
        return (own, app) if flux else (0.0, own + app)

    own_before, app_before = sample()
    figures = await wrk(label, url, duration, connections)
    own_after, app_after = sample()
    done = max(figures.requests, 1)
    if flux:
        figures.flux_cpu_us = (own_after - own_before) / done * 1e6
    figures.app_cpu_us = (app_after - app_before) / done * 1e6
    return figures


def app_env(database_url: str, redis_url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not v.startswith(("postgres://", "postgresql://", "redis://", "rediss://"))
           and k not in ("FLUX_SERVER", "FLUX_TOKEN", "FLUX_DATABASE_URL")}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, DENO_DIR=DENO_DIR,
               DENO_NO_UPDATE_CHECK="1", FLUX_HOME=str(home))
    return env


@asynccontextmanager
async def record_server(env: dict[str, str]) -> AsyncIterator[str | None]:
    """A separate `flux server` process (SQLite under FLUX_HOME); yields its address."""
    address = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        str(FLUX), "server", "--listen", address, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    try:
        line = (await process.stderr.readline()).decode()
        if not line.startswith("flux-server: listening"):
            raise RuntimeError(f"flux server did not start: {line!r}")
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        await process.communicate()


@asynccontextmanager
async def no_server() -> AsyncIterator[str | None]:
    yield None


@asynccontextmanager
async def bare(env: dict[str, str]) -> AsyncIterator[tuple[str, int]]:
    """The app under plain `deno run`; yields its URL and pid."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        deno_binary(), "run", "-A", str(APP), env={**env, "PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.to_thread(wait_for_port, port, 60.0)
        yield f"http://127.0.0.1:{port}/", process.pid
    finally:
        process.terminate()
        await process.wait()


@asynccontextmanager
async def flux_serve(env: dict[str, str], workers: int, sample: float = 1.0,
                     server: str | None = None, tree: Path | None = None,
                     ) -> AsyncIterator[tuple[str, str, int]]:
    """`flux serve APP --workers N` as its own process; yields its URL, server address, pid.

    Without `server` nothing answers at the address it is given, so it embeds its own. With
    `tree`, Flux's code comes from that source tree (the `--baseline` worktree).
    """
    port, server = free_port(), server or f"127.0.0.1:{free_port()}"
    command = [str(FLUX), "serve", str(APP), "--port", str(port), "--workers", str(workers),
               "--server", server, "--sample", str(sample)]
    if tree is not None:
        env = {**env, "PYTHONPATH": str(tree)}
    process = await asyncio.create_subprocess_exec(
        *command, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    stdout = process.stdout
    assert stdout is not None
    serving = asyncio.get_running_loop().create_future()

    async def read_output() -> None:
        """Until the serving line, then on and on: a full pipe would stall the workers."""
        async for raw in stdout:
            if raw.startswith(b"flux: serving") and not serving.done():
                serving.set_result(None)
        if not serving.done():
            serving.set_exception(RuntimeError("flux serve exited before serving"))

    reader = asyncio.create_task(read_output())
    try:
        await asyncio.wait_for(serving, 120)
        yield f"http://127.0.0.1:{port}/", server, process.pid
    finally:
        process.send_signal(signal.SIGINT)
        await process.wait()
        await reader


async def recorded_io(server: str) -> int:
    """Exchanges in the latest stored execution: proof that recording was on (expect 2)."""
    async with FluxClient(server) as client:
        for _ in range(100):
            page = await client.list(limit=1)
            if page.executions:
                return len((await client.get(page.executions[0].id)).exchanges)
            await asyncio.sleep(0.1)
    return 0


async def prefork_run(env: dict[str, str], args: argparse.Namespace, processes: int
                      ) -> Figures:
    """N bare processes, one request at a time each: the ceiling of one-at-a-time workers."""
    async with AsyncExitStack() as stack:
        started = [await stack.enter_async_context(bare(env)) for _ in range(processes)]
        await asyncio.gather(*(wrk("warm-up", url, 1, 1) for url, _ in started))
        before = sum(cpu_seconds(pid) for _, pid in started)
        runs = await asyncio.gather(*(wrk("prefork", url, args.duration, 1)
                                      for url, _ in started))
        spent = sum(cpu_seconds(pid) for _, pid in started) - before
    done = max(sum(run.requests for run in runs), 1)
    figures = Figures(f"prefork ceiling, {processes} proc.",
                      sum(run.requests_per_second for run in runs),
                      max(run.p50_ms for run in runs), max(run.p99_ms for run in runs),
                      " ".join(run.errors for run in runs if run.errors), done)
    figures.app_cpu_us = spent / done * 1e6
    return figures


async def bare_run(env: dict[str, str], args: argparse.Namespace, label: str,
                   alone: bool) -> tuple[Figures, Figures | None]:
    async with bare(env) as (url, pid):
        await wrk("warm-up", url, 1, args.connections)
        loaded = await measured(label, url, args.duration, args.connections, pid, flux=False)
        single = await measured(label, url, args.duration, 1, pid, flux=False) if alone else None
    return loaded, single


async def flux_run(env: dict[str, str], args: argparse.Namespace, workers: int,
                   server: str | None, label: str, io: dict[str, int],
                   connections: int | None = None) -> Figures:
    async with flux_serve(env, workers, args.sample, server) as (url, address,
                                                                              pid):
        await wrk("warm-up", url, 1, args.connections)
        figures = await measured(label, url, args.duration, connections or args.connections,
                                 pid, flux=True)
        if args.sample > 0:
            io[label] = await recorded_io(address)
    return figures


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """REVISION checked out in a temporary git worktree, its C extension built there."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="flux-baseline-") as parent:
        tree = Path(parent) / "tree"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", "--quiet",
                        str(tree), revision], check=True)
        try:
            subprocess.run([sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"],
                           cwd=tree, check=True, stdout=subprocess.DEVNULL)
            yield tree
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force",
                            str(tree)], check=False)


async def ab_main(args: argparse.Namespace) -> None:
    """`flux serve` from --baseline and from this tree, started alternately, round after
    round: on a machine whose speed drifts, only runs made in the same minutes compare."""
    workers = args.default_workers
    current = Path(__file__).resolve().parent.parent
    pg = PgCluster(tls=False).start()
    redis = RedisServer().start()
    runs: dict[str, list[Figures]] = {args.baseline: [], "this tree": []}
    try:
        with tempfile.TemporaryDirectory(prefix="flux-bench-") as home, \
                worktree(args.baseline) as baseline:
            env = app_env(pg.url(), redis.url(), Path(home))
            for _ in range(args.rounds):
                for label, tree in ((args.baseline, baseline), ("this tree", current)):
                    async with flux_serve(env, workers, args.sample, tree=tree) as (url, _, pid):
                        await wrk("warm-up", url, 1, args.connections)
                        runs[label].append(await measured(label, url, args.duration,
                                                          args.connections, pid, flux=True))
    finally:
        pg.stop()
        redis.stop()
    print(f"A/B: flux serve {APP.name}, {workers} worker(s), wrk -c{args.connections} "
          f"-d{args.duration}s, {args.rounds} alternating rounds; medians; flux = the flux "
          f"process and its record helper; load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"{'':28} {'req/s':>7} {'flux us':>8} {'deno us':>8}  req/s per round")
    medians = {}
    for label, figures in runs.items():
        rps = statistics.median(f.requests_per_second for f in figures)
        medians[label] = rps
        print(f"{label[:28]:28} {rps:7.0f} "
              f"{statistics.median(f.flux_cpu_us for f in figures):8.0f} "
              f"{statistics.median(f.app_cpu_us for f in figures):8.0f}  "
              + " ".join(f"{f.requests_per_second:.0f}" for f in figures))
    faster = sum(b.requests_per_second > a.requests_per_second
                 for a, b in zip(runs[args.baseline], runs["this tree"], strict=True))
    print(f"this tree / baseline: {medians['this tree'] / max(medians[args.baseline], 1e-9):.2f}"
          f" (faster in {faster} of {args.rounds} rounds)")


async def main(args: argparse.Namespace) -> None:
    counts = [int(n) for n in args.workers.split(",")]
    pg = PgCluster(tls=False).start()
    redis = RedisServer().start()
    io: dict[str, int] = {}
    ceilings: dict[int, float] = {}  # workers -> prefork ceiling req/s
    flux_rows: dict[str, int] = {}  # flux row label -> workers
    alone_flux: Figures | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="flux-bench-") as home:
            env = app_env(pg.url(), redis.url(), Path(home))
            base, alone_bare = await bare_run(env, args, "bare deno run", alone=True)
            rows = [base]
            separate = record_server(env) if args.separate_server else no_server()
            async with separate as given:
                for workers in counts:
                    ceiling = await prefork_run(env, args, workers)
                    ceilings[workers] = ceiling.requests_per_second
                    rows.append(ceiling)
                    label = f"flux serve, {workers} worker(s)"
                    flux_rows[label] = workers
                    rows.append(await flux_run(env, args, workers, given, label, io))
                    if workers == args.default_workers:
                        alone_flux = await flux_run(env, args, workers, given, label, {}, 1)
            # Bare again: on a shared machine the load can change between the first and last run.
            again, _ = await bare_run(env, args, "bare deno run (again)", alone=False)
            rows.append(again)
    finally:
        pg.stop()
        redis.stop()

    reference = (base.requests_per_second + again.requests_per_second) / 2
    where = "a separate flux server process" if args.separate_server else "its embedded server"
    print(f"app: {APP.name} (1 pg query + 1 Redis GET per request); flux serve in record "
          f"mode, --sample {args.sample:g}, shipping to {where}, event loop: "
          f"uvloop (flux_cli/loop.py); cores: {os.cpu_count()}; "
          f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"\nthroughput: wrk -c{args.connections} -d{args.duration}s; ratio to the mean of "
          "the two bare runs, and (flux rows) to the prefork ceiling with as many processes as "
          "workers; CPU per request of Flux (the flux process and its record helper) and of the "
          "Deno process(es)")
    print(f"{'':28} {'req/s':>7} {'ratio':>6} {'/ceil':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'flux us':>8} {'deno us':>8} {'io':>3}  errors")
    for row in rows:
        ratio = row.requests_per_second / max(reference, 1e-9)
        workers = flux_rows.get(row.label)
        to_ceiling = (f"{row.requests_per_second / ceilings[workers]:6.2f}"
                      if workers in ceilings else f"{'':6}")
        flux_cpu = "-" if row.flux_cpu_us != row.flux_cpu_us else f"{row.flux_cpu_us:.0f}"
        print(f"{row.label:28} {row.requests_per_second:7.0f} {ratio:6.2f} {to_ceiling} "
              f"{row.p50_ms:8.2f} {row.p99_ms:8.2f} {flux_cpu:>8} {row.app_cpu_us:8.0f} "
              f"{io.get(row.label, '-')!s:>3}  {row.errors}")
    if alone_flux is not None and alone_bare is not None:
        print(f"\nlatency one request at a time: wrk -c1 -d{args.duration}s")
        print(f"{'':28} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'flux us':>8} "
              f"{'deno us':>8}")
        for row in (alone_bare, alone_flux):
            flux_cpu = "-" if row.flux_cpu_us != row.flux_cpu_us else f"{row.flux_cpu_us:.0f}"
            print(f"{row.label:28} {row.requests_per_second:7.0f} {row.p50_ms:8.2f} "
                  f"{row.p99_ms:8.2f} {flux_cpu:>8} {row.app_cpu_us:8.0f}  {row.errors}")
        print(f"{'added by flux':28} {'':7} {alone_flux.p50_ms - alone_bare.p50_ms:8.2f} "
              f"{alone_flux.p99_ms - alone_bare.p99_ms:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--sample", type=float, default=1.0,
                        help="flux serve --sample (0 isolates the cost of shipping records)")
    parser.add_argument("--separate-server", action="store_true",
                        help="ship to a `flux server` process instead of the embedded one")
    parser.add_argument("--default-workers", type=int, default=2,
                        help="the worker count whose one-at-a-time latency is measured (and "
                             "the one --baseline compares)")
    parser.add_argument("--baseline", metavar="REV",
                        help="A/B instead: flux serve from git revision REV and from this tree, "
                             "alternately, --rounds times")
    parser.add_argument("--rounds", type=int, default=6)
    parsed = parser.parse_args()
    asyncio.run(ab_main(parsed) if parsed.baseline else main(parsed))
