"""redis-benchmark direct vs through the Flux Redis proxy (record mode), ratios in one run.

Starts a throwaway redis-server, then for each pipeline depth runs
`redis-benchmark -t get,set -c 8 -n N [-P 16]` directly, through a plain byte relay (the floor
for any Python proxy: uvloop, Protocol API, no framing) and through the Flux proxy. The proxy
runs in its own process on uvloop (run as the `flux` commands run it), in record mode, with a
sink that counts every exchange and keeps the last 100,000, as the shipper of `flux serve` holds
the ones not yet sent (`--decode`: the sink also reads each exchange's semantic
request/response). Runs alternate; the rps columns are the best of `--repeat` rounds, and
each ratio is the median of the per-round ratios, as in bench/pg_proxy.py.

Usage: .venv/bin/python bench/redis_proxy.py [--requests 100000] [--repeat 3] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import RedisServer, free_port, wait_for_port  # noqa: E402

TARGETS = {1: 0.4, 16: 0.3}
KEEP = 100_000
"""Records leave a real proxy and are freed; a list that only grows measures the collector."""
PIPELINED_SCALE = 10  # pipelined runs go 10x faster: 10x the requests keep them long enough


def serve_proxy(upstream: str, port: int, profile: str | None, decode: bool) -> None:
    """The proxy process: record mode, keep the last KEEP exchanges, report counts at exit.
    With `decode`, the sink also reads each exchange's semantic request and response."""
    import collections

    from flux_cli.loop import run
    from flux_proxy.model import Exchange
    from flux_proxy.resp.proxy import RedisProxy

    kept: collections.deque[Exchange] = collections.deque(maxlen=KEEP)
    seen = 0

    def decode_and_keep(exchange: Exchange) -> None:
        _ = exchange.request, exchange.response
        kept.append(exchange)

    async def main() -> None:
        nonlocal seen
        proxy = RedisProxy(upstream, decode_and_keep if decode else kept.append, port=port)
        await proxy.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await proxy.close()
        seen = proxy.delivered

    if profile:
        import cProfile

        cProfile.runctx("run(main())", globals(), locals(), profile)
    else:
        run(main())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    failed = sum(exchange.failed for exchange in kept)  # of the kept ones
    print(f"{seen} {failed} {cpu * 1e6 / max(1, seen):.1f} "
          f"(user {usage.ru_utime * 1e6 / max(1, seen):.1f})", flush=True)


def serve_relay(upstream_port: int, port: int) -> None:
    """The baseline: a plain byte relay (uvloop, Protocol API), no framing, no recording."""
    import uvloop

    class Upstream(asyncio.Protocol):
        def __init__(self, client: asyncio.Transport) -> None:
            self.client = client

        def data_received(self, data: bytes) -> None:
            self.client.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.client.close()

    class Client(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.upstream: asyncio.Transport | None = None
            self.early: list[bytes] = []
            self.connecting = asyncio.ensure_future(self.connect())

        async def connect(self) -> None:
            loop = asyncio.get_running_loop()
            self.upstream, _ = await loop.create_connection(
                lambda: Upstream(self.transport), "127.0.0.1", upstream_port)
            self.upstream.write(b"".join(self.early))

        def data_received(self, data: bytes) -> None:
            if self.upstream is None:
                self.early.append(data)
            else:
                self.upstream.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.upstream is not None:
                self.upstream.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    uvloop.run(main())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{usage.ru_utime + usage.ru_stime} {usage.ru_utime}", flush=True)


def round_ratio(runs: list[float], baselines: list[float]) -> float:
    """The median of the per-round ratios (the rounds interleave the targets)."""
    return statistics.median(run / base for run, base in zip(runs, baselines, strict=True))


def redis_benchmark(port: int, requests: int, pipeline: int) -> dict[str, float]:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "get,set", "-c", "8", "-n", str(requests),
         "-P", str(pipeline), "--csv"], check=True, capture_output=True, text=True).stdout
    rows = list(csv.reader(io.StringIO(out)))
    return {row[0]: float(row[1]) for row in rows[1:]}


def through_proxy(upstream: str, requests: int, pipeline: int, profile: str | None,
                  decode: bool, relay: bool = False) -> tuple[dict[str, float], str]:
    port = free_port()
    args = [sys.executable, __file__, "--serve-proxy", upstream, str(port)]
    if relay:
        args = [sys.executable, __file__, "--serve-relay", upstream.rsplit(":", 1)[1].split("/")[0],
                str(port)]
    if decode:
        args.append("--decode")
    if profile:
        args += ["--profile-out", profile]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_for_port(port)
        result = redis_benchmark(port, requests, pipeline)
    finally:
        proc.send_signal(signal.SIGTERM)
        recorded, _ = proc.communicate(timeout=60)
    return result, recorded.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pipelines", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the proxy; writes /tmp/flux_redis_proxy.P{1,16}.prof")
    parser.add_argument("--serve-proxy", nargs=2, metavar=("UPSTREAM", "PORT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", nargs=2, metavar=("UPSTREAM_PORT", "PORT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--decode", action="store_true",
                        help="the sink also decodes every exchange's semantic request/response")
    opts = parser.parse_args()
    if opts.serve_relay:
        serve_relay(int(opts.serve_relay[0]), int(opts.serve_relay[1]))
        return
    if opts.serve_proxy:
        serve_proxy(opts.serve_proxy[0], int(opts.serve_proxy[1]), opts.profile_out, opts.decode)
        return

    server = RedisServer().start()
    print(f"redis-benchmark -t get,set -c 8 -n {opts.requests} (x{PIPELINED_SCALE} with -P), "
          f"{opts.repeat} rounds (rps: best; ratios: median of per-round ratios); "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; semantic decode "
          f"{'in the sink' if opts.decode else 'deferred (sink keeps raw-frame exchanges)'}")
    print(f"{'test':<6}{'-P':>4}{'direct rps':>12}{'relay rps':>11}{'flux rps':>11}"
          f"{'relay':>7}{'flux':>7}{'target':>8}  recorded, failed, proxy CPU µs/exchange")
    try:
        for pipeline in opts.pipelines:
            requests = opts.requests * (PIPELINED_SCALE if pipeline > 1 else 1)
            # rps of each round, per test: runs of one round saw the same machine load
            direct: dict[str, list[float]] = {}
            relayed: dict[str, list[float]] = {}
            proxied: dict[str, list[float]] = {}
            recorded = ""
            for _ in range(opts.repeat):
                for test, rps in redis_benchmark(server.port, requests, pipeline).items():
                    direct.setdefault(test, []).append(rps)
                result, relay_cpu = through_proxy(server.url(), requests, pipeline, None,
                                                  False, relay=True)
                for test, rps in result.items():
                    relayed.setdefault(test, []).append(rps)
                profile = (f"/tmp/flux_redis_proxy.P{pipeline}.prof"
                           if opts.profile else None)
                result, recorded = through_proxy(server.url(), requests, pipeline, profile,
                                                 opts.decode)
                for test, rps in result.items():
                    proxied.setdefault(test, []).append(rps)
                time.sleep(0.2)
            cpu, user = (float(x) * 1e6 / (2 * requests) for x in relay_cpu.split())
            relay_note = f"relay CPU {cpu:.1f} µs/request (user {user:.1f})"
            for test in direct:
                ratio = round_ratio(proxied[test], direct[test])
                target = TARGETS.get(pipeline, 0.3)
                mark = "ok" if ratio >= target else "LOW"
                print(f"{test:<6}{pipeline:>4}{max(direct[test]):>12,.0f}"
                      f"{max(relayed[test]):>11,.0f}{max(proxied[test]):>11,.0f}"
                      f"{round_ratio(relayed[test], direct[test]):>6.2f}x"
                      f"{ratio:>6.2f}x{target:>7.1f}x {mark:<4} {recorded}; {relay_note}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
