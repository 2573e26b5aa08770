"""`flux proxy redis`: a record proxy that runs until cancelled, writing JSON lines."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TextIO

from flux_proxy.model import Exchange
from flux_proxy.resp.proxy import RedisProxy


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT`, `PORT` or `[::1]:PORT`; the host defaults to 127.0.0.1."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    return host, int(port)


async def run_standalone(upstream: str, listen: str, record_path: str | None) -> None:
    """Run a record proxy forever; with `record_path`, append one exchange per line
    (`Exchange.to_json(frames=True)`)."""
    host, port = parse_listen(listen)
    record: TextIO | None = open(record_path, "a", encoding="utf-8") if record_path else None  # noqa: SIM115

    def sink(exchange: Exchange) -> None:
        if record is not None:
            record.write(json.dumps(exchange.to_json(frames=True)) + "\n")

    proxy = RedisProxy(upstream, sink, host=host, port=port)
    await proxy.start()
    print(f"flux: redis proxy on {host}:{proxy.port} -> {proxy.upstream.redacted_url}",
          file=sys.stderr, flush=True)
    try:
        while True:
            await asyncio.sleep(0.5)
            if record is not None:
                record.flush()
    finally:
        await proxy.close()
        if record is not None:
            record.close()
