"""`flux proxy redis`: a record proxy that runs until cancelled, writing JSON lines."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import TextIO

from flux_proxy.model import Exchange
from flux_proxy.resp.proxy import RedisProxy
from flux_proxy.urls import split_listen


async def run_standalone(upstream: str, listen: str, record_path: str | None,
                         on_listening: Callable[[int], None] | None = None) -> None:
    """Run a record proxy forever; with `record_path`, append one exchange per line
    (`Exchange.to_json(frames=True)`). `on_listening(port)` is called once it listens
    (else one line goes to stderr)."""
    host, port = split_listen(listen)
    # Line-buffered: every exchange is on disk as soon as it is recorded, even if the
    # process is killed.
    record: TextIO | None = (open(record_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
                             if record_path else None)

    def sink(exchange: Exchange) -> None:
        if record is not None:
            record.write(json.dumps(exchange.to_json(frames=True)) + "\n")

    proxy = RedisProxy(upstream, sink, host=host, port=port)
    await proxy.start()
    if on_listening is not None:
        on_listening(proxy.port)
    else:
        print(f"flux: redis proxy on {host}:{proxy.port} -> {proxy.upstream.redacted_url}",
              file=sys.stderr, flush=True)
    try:
        await asyncio.get_running_loop().create_future()  # until cancelled
    finally:
        await proxy.close()
        if record is not None:
            record.close()
