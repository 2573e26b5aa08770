"""redis-benchmark direct vs through the Flux Redis proxy (record mode), ratios in one run.

Starts a throwaway redis-server, then for each pipeline depth runs
`redis-benchmark -t get,set -c 8 -n N [-P 16]` directly and through the proxy. The proxy runs
in its own process on uvloop, in record mode, with a sink that keeps every exchange (semantic
decode included). Runs alternate direct/proxy and the best of `--repeat` is kept.

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
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import RedisServer, free_port, wait_for_port  # noqa: E402

TARGETS = {1: 0.4, 16: 0.3}


def serve_proxy(upstream: str, port: int, profile: str | None, decode: bool) -> None:
    """The proxy process: record mode, keep every exchange, report the count at exit.
    With `decode`, the sink also reads each exchange's semantic request and response."""
    import uvloop

    from flux_proxy.model import Exchange
    from flux_proxy.resp.proxy import RedisProxy

    kept: list[Exchange] = []

    def decode_and_keep(exchange: Exchange) -> None:
        _ = exchange.request, exchange.response
        kept.append(exchange)

    async def main() -> None:
        proxy = RedisProxy(upstream, decode_and_keep if decode else kept.append, port=port)
        await proxy.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await proxy.close()

    if profile:
        import cProfile

        cProfile.runctx("uvloop.run(main())", globals(), locals(), profile)
    else:
        uvloop.run(main())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    failed = sum(e.failed for e in kept)
    print(f"{len(kept)} {failed} {cpu * 1e6 / max(1, len(kept)):.1f} "
          f"(user {usage.ru_utime * 1e6 / max(1, len(kept)):.1f})", flush=True)


def redis_benchmark(port: int, requests: int, pipeline: int) -> dict[str, float]:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "get,set", "-c", "8", "-n", str(requests),
         "-P", str(pipeline), "--csv"], check=True, capture_output=True, text=True).stdout
    rows = list(csv.reader(io.StringIO(out)))
    return {row[0]: float(row[1]) for row in rows[1:]}


def through_proxy(upstream: str, requests: int, pipeline: int, profile: str | None,
                  decode: bool) -> tuple[dict[str, float], str]:
    port = free_port()
    args = [sys.executable, __file__, "--serve-proxy", upstream, str(port)]
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
    parser.add_argument("--decode", action="store_true",
                        help="the sink also decodes every exchange's semantic request/response")
    opts = parser.parse_args()
    if opts.serve_proxy:
        serve_proxy(opts.serve_proxy[0], int(opts.serve_proxy[1]), opts.profile_out, opts.decode)
        return

    server = RedisServer().start()
    print(f"redis-benchmark -t get,set -c 8 -n {opts.requests}, best of {opts.repeat}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; semantic decode "
          f"{'in the sink' if opts.decode else 'deferred (sink keeps raw-frame exchanges)'}")
    print(f"{'test':<8}{'pipeline':>9}{'direct rps':>13}{'flux rps':>13}{'ratio':>8}"
          f"{'target':>8}  recorded, failed, proxy CPU µs per exchange (last run)")
    try:
        for pipeline in opts.pipelines:
            direct: dict[str, float] = {}
            proxied: dict[str, float] = {}
            recorded = ""
            for _ in range(opts.repeat):
                for test, rps in redis_benchmark(server.port, opts.requests, pipeline).items():
                    direct[test] = max(direct.get(test, 0), rps)
                profile = (f"/tmp/flux_redis_proxy.P{pipeline}.prof"
                           if opts.profile else None)
                result, recorded = through_proxy(server.url(), opts.requests, pipeline, profile,
                                                 opts.decode)
                for test, rps in result.items():
                    proxied[test] = max(proxied.get(test, 0), rps)
                time.sleep(0.2)
            for test in direct:
                ratio = proxied[test] / direct[test]
                mark = "ok" if ratio >= TARGETS.get(pipeline, 0.3) else "LOW"
                print(f"{test:<8}{pipeline:>9}{direct[test]:>13,.0f}{proxied[test]:>13,.0f}"
                      f"{ratio:>7.2f}x{TARGETS.get(pipeline, 0.3):>7.1f}x {mark}  {recorded}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
