"""`flux server` / `flux-server`: run the record server until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import click

from flux_server.filters import FilterError, parse_duration
from flux_server.server import DEFAULT_LISTEN, FluxServer, ServerStartError, build_server
from flux_server.store import StoreError, resolve_database_url

# gRPC's core logs bind failures itself; the user gets our one-line message instead.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def fail(message: str) -> None:
    click.echo(f"flux-server: {message}", err=True)
    sys.exit(1)


@click.command("server")
@click.option("--database-url", metavar="URL",
              help="Postgres URL of the record store. Default: FLUX_DATABASE_URL, else "
                   "DATABASE_URL (schema flux), else SQLite at $FLUX_HOME/flux.db.")
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT",
              help="Address to serve gRPC on. A non-loopback address needs FLUX_TOKEN.")
@click.option("--retention", metavar="DURATION",
              help="Delete executions older than this, e.g. 7d (default: keep everything).")
def server_command(database_url: str | None, listen: str, retention: str | None) -> None:
    """Run the Flux record server (gRPC) over Postgres or embedded SQLite."""
    logging.basicConfig(level=logging.WARNING, format="flux-server: %(message)s")
    logging.getLogger("flux").setLevel(logging.INFO)  # e.g. what retention removed
    try:
        retention_seconds = parse_duration(retention) if retention else None
        server = build_server(resolve_database_url(database_url), listen,
                              retention=retention_seconds,
                              token=os.environ.get("FLUX_TOKEN") or None)
        asyncio.run(serve(server, retention))
    except (ServerStartError, StoreError, FilterError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # the contract: one line, never a traceback
        fail(f"{type(exc).__name__}: {exc}")


async def serve(server: FluxServer, retention: str | None) -> None:
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    kept = f"retention {retention}" if retention else "no retention"
    click.echo(f"flux-server: listening on {server.address} "
               f"(store: {server.store.description}, {kept})", err=True)
    if server.store_error:
        click.echo(f"flux-server: {server.store_error}; calls answer UNAVAILABLE until it is "
                   "back", err=True)
    await stopping.wait()
    click.echo("flux-server: stopping (finishing in-flight writes)", err=True)
    await server.stop()
