"""Parse throughput of the Postgres codec on a captured pgbench stream.

Starts a throwaway cluster, runs `pgbench -S` (simple and extended protocol) through a capturing
relay, then times the codec over the captured bytes, chunked exactly as they were read:

    .venv/bin/python bench/pg_codec.py [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flux_proxy.pg.codec import BackendParser, FrontendParser
from tests.pg.relay import Capture, CaptureRelay
from tests.services import PgCluster, pg_bindir


def pgbench(cluster: PgCluster, port: int, *args: str) -> str:
    cmd = [str(pg_bindir() / "pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
           *args, cluster.database]
    env = {**os.environ, "PGSSLMODE": "disable"}
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


async def capture(cluster: PgCluster, seconds: int, mode: str) -> list[Capture]:
    relay = await CaptureRelay(cluster.host, cluster.port).start()
    try:
        await asyncio.to_thread(pgbench, cluster, relay.port, "-S", "-c", "4", "-T",
                                str(seconds), "-M", mode)
    finally:
        await relay.close()
    return relay.captures


def time_parse(captures: list[Capture], make: Callable[[], tuple[object, object]],
               typed: bool, repeat: int) -> tuple[float, int, int]:
    """Best-of-`repeat` seconds, total bytes, total messages."""
    total_bytes = sum(len(c.client_bytes) + len(c.server_bytes) for c in captures)
    best = float("inf")
    count = 0
    for _ in range(repeat):
        count = 0
        start = time.perf_counter()
        for cap in captures:
            front, back = make()
            feed_f = front.feed_messages if typed else front.feed  # type: ignore[attr-defined]
            feed_b = back.feed_messages if typed else back.feed  # type: ignore[attr-defined]
            for chunk in cap.client:
                count += len(feed_f(chunk))
            for chunk in cap.server:
                count += len(feed_b(chunk))
        best = min(best, time.perf_counter() - start)
    return best, total_bytes, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cluster = PgCluster(users=(), tls=False).start()
    try:
        pgbench(cluster, cluster.port, "-i", "-s", "1", "-q")
        print(f"{'stream':<10} {'path':<7} {'MB':>7} {'messages':>9} {'MB/s':>8} {'msg/s':>11}")
        for mode in ("simple", "extended"):
            captures = asyncio.run(capture(cluster, args.seconds, mode))
            for typed in (False, True):
                seconds, nbytes, count = time_parse(
                    captures, lambda: (FrontendParser(), BackendParser()), typed, args.repeat)
                print(f"{mode:<10} {'typed' if typed else 'lazy':<7} {nbytes / 1e6:>7.2f} "
                      f"{count:>9} {nbytes / 1e6 / seconds:>8.1f} {count / seconds:>11,.0f}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
