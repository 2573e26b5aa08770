"""`flux proxy pg|redis`: a standalone recording proxy any client can be pointed at."""

from __future__ import annotations

import contextlib

import click

from flux_cli import loop
from flux_cli.errors import FluxError, one_line_errors
from flux_proxy.urls import proxy_url, split_listen, upstream_kind


@click.command("proxy")
@click.argument("kind", type=click.Choice(["pg", "redis"]))
@click.option("--upstream", required=True, help="Real server URL, with credentials.")
@click.option("--listen", default="127.0.0.1:0", show_default=True,
              help="Where the proxy listens (loopback only).")
@click.option("--record", "record_path", type=click.Path(dir_okay=False),
              help="Append one JSON line per exchange to this file.")
@one_line_errors
def proxy_command(kind: str, upstream: str, listen: str, record_path: str | None) -> None:
    """Run a recording proxy in front of a Postgres or Redis server."""
    want = "pg" if kind == "pg" else "redis"
    if upstream_kind(upstream) != want:
        raise FluxError(f"--upstream is not a {'postgres' if want == 'pg' else 'redis'}:// URL")
    try:
        host, port = split_listen(listen)
    except ValueError:
        raise click.BadParameter("expected HOST:PORT", param_hint="--listen") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise FluxError("the proxy listens on loopback only (it holds the real credentials)")
    if kind == "pg":
        from flux_proxy.pg.proxy import run_standalone
    else:
        from flux_proxy.resp.standalone import run_standalone

    def announce(actual_port: int) -> None:
        click.echo(f"flux: proxying {proxy_url(upstream, host, actual_port)} -> upstream",
                   err=True)

    with contextlib.suppress(KeyboardInterrupt):
        loop.run(run_standalone(upstream, f"{host}:{port}", record_path, on_listening=announce))
