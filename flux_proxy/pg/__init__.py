"""Postgres v3 protocol: sans-IO codec, session state, and the recording proxy."""

from collections.abc import Callable

from flux_proxy.pg.codec import (
    BackendParser,
    FrameSplitter,
    FrontendParser,
    decode_backend,
    decode_frontend,
    decode_startup,
)
from flux_proxy.pg.errors import ProtocolError

__all__ = [
    "BackendParser",
    "FrameSplitter",
    "FrontendParser",
    "ProtocolError",
    "decode_backend",
    "decode_frontend",
    "decode_startup",
    "run_standalone",
]


async def run_standalone(upstream: str, listen: str, record_path: str | None,
                         on_listening: Callable[[int], None] | None = None) -> None:
    """Run a recording proxy forever (the `flux proxy pg` command); see proxy.py."""
    from flux_proxy.pg.proxy import run_standalone as run

    await run(upstream, listen, record_path, on_listening)
