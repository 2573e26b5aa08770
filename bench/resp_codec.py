"""RESP codec throughput on a real redis-benchmark stream.

Captures both directions of `redis-benchmark` talking to a throwaway redis-server through a
byte relay, then times, on 64 KiB chunks:
  * the frame-boundary scan the proxy uses on its hot path (ReplyScanner / CommandScanner);
  * the full parse (scan + decode every frame into values).

Usage: .venv/bin/python bench/resp_codec.py [--requests 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flux_proxy.resp.codec import CommandScanner, ReplyScanner, RespParser
from tests.resp.relay import CaptureRelay
from tests.services import RedisServer

CHUNK = 65536


async def capture(requests: int) -> tuple[bytes, bytes]:
    server = RedisServer().start()
    relay = await CaptureRelay(server.port).start()
    try:
        proc = await asyncio.create_subprocess_exec(
            "redis-benchmark", "-p", str(relay.port), "-n", str(requests), "-c", "8", "-P", "16",
            "-r", "10000", "-d", "64", "-t", "set,get,incr,lpush,lrange_100,hset,mset", "-q",
            stdout=subprocess.DEVNULL)
        await proc.wait()
        await asyncio.sleep(0.1)
    finally:
        await relay.close()
        server.stop()
    client = b"".join(bytes(c.client_to_server) for c in relay.connections)
    reply = b"".join(bytes(c.server_to_client) for c in relay.connections)
    return client, reply


def timed(name: str, data: bytes, run: Callable[[], int], repeat: int) -> None:
    best = float("inf")
    frames = 0
    for _ in range(repeat):
        start = time.perf_counter()
        frames = run()
        best = min(best, time.perf_counter() - start)
    print(f"{name:34s} {len(data) / best / 1e6:8.1f} MB/s {frames / best / 1e3:9.0f} k frames/s"
          f"  ({frames} frames, {len(data) / 1e6:.1f} MB)")


def scan(scanner_type: type[ReplyScanner] | type[CommandScanner], data: bytes) -> int:
    scanner = scanner_type()
    return sum(len(scanner.feed(data[i:i + CHUNK])) for i in range(0, len(data), CHUNK))


def parse(client: bool, data: bytes) -> int:
    parser = RespParser(client=client)
    return sum(len(parser.feed(data[i:i + CHUNK])) for i in range(0, len(data), CHUNK))


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--requests", type=int, default=20_000)
    args.add_argument("--repeat", type=int, default=3)
    opts = args.parse_args()
    client, reply = asyncio.run(capture(opts.requests))
    print(f"captured redis-benchmark stream: {len(client)} bytes of commands, "
          f"{len(reply)} bytes of replies")
    timed("boundary scan, replies", reply, lambda: scan(ReplyScanner, reply), opts.repeat)
    timed("boundary scan, commands", client, lambda: scan(CommandScanner, client), opts.repeat)
    timed("full parse, replies", reply, lambda: parse(False, reply), opts.repeat)
    timed("full parse, commands", client, lambda: parse(True, client), opts.repeat)


if __name__ == "__main__":
    main()
