"""The `flux` command. Subcommands live in their own modules and are imported lazily, so that
`flux --help` and the light commands start fast."""

from __future__ import annotations

import os

import click

# gRPC's C core logs an info line whenever flux starts a Deno worker (a fork while its threads
# run); users should see Flux's lines, not that.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from flux_cli.lazy import LazyGroup

COMMANDS = {
    "server": "flux_server.cli:server_command",
    "proxy": "flux_cli.proxy:proxy_command",
    "serve": "flux_cli.serve:serve_command",
    "logs": "flux_cli.views:logs_command",
    "tail": "flux_cli.views:tail_command",
    "trace": "flux_cli.views:trace_command",
    "why": "flux_cli.views:why_command",
    "replay": "flux_cli.replay:replay_command",
    "resume": "flux_cli.resume:resume_command",
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS)
@click.version_option(package_name="flux")
def cli() -> None:
    """Record, replay and resume the requests of a Deno app."""


def server_main() -> None:
    """`flux-server`: the same as `flux server`."""
    from flux_server.cli import server_command

    server_command(prog_name="flux-server")
