"""`flux resume ID`: finish a failed request for real, after a confirmation."""

from __future__ import annotations

import os
import sys

import click

from flux_cli import render
from flux_cli.errors import FluxError, one_line_errors
from flux_cli.replay import EXIT_CODES, print_report
from flux_cli.views import run_with_client
from flux_runtime.report import ReplayReport
from flux_server.client import FluxClient


@click.command("resume")
@click.argument("execution_id")
@click.option("--app", type=click.Path(dir_okay=False), help="Run this file instead of the "
              "recorded app (the fixed code).")
@click.option("--yes", is_flag=True, help="Do not ask: write to the real upstreams.")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON document.")
@click.option("--server", default=None, envvar="FLUX_SERVER", help="flux-server address.")
@one_line_errors
def resume_command(execution_id: str, app: str | None, yes: bool, as_json: bool,
                   server: str | None) -> None:
    """Re-run a recorded request for real: what took effect is answered from the recording,
    the rest runs against the real Postgres and Redis."""
    from flux_runtime.replay import ReplayError, fetch_recording, resolve_app
    from flux_runtime.resume import describe_targets, real_upstreams, resume
    from flux_runtime.worker import WorkerStartError

    recording = run_with_client(server, lambda c: fetch_recording(c, execution_id))
    try:
        real = real_upstreams(recording, os.environ)
        resolve_app(recording.execution.app_path, app)
    except ReplayError as exc:
        raise FluxError(str(exc)) from None
    targets = describe_targets(real)
    if not yes:
        if not sys.stdin.isatty():
            raise FluxError("resume writes to real databases; confirm with --yes when there is "
                            "no terminal to ask on")
        click.echo(f"flux resume {render.short_id(recording.execution.id)} "
                   f"({recording.execution.method} {recording.execution.path}) will run "
                   "against:", err=True)
        for line in targets or ["(no upstreams)"]:
            click.echo(f"  {line}", err=True)
        if not click.confirm("Go ahead?", default=False, err=True):
            raise FluxError("resume cancelled; nothing ran")

    async def work(client: FluxClient) -> ReplayReport:
        try:
            report = await resume(recording, real, app)
        except (ReplayError, WorkerStartError) as exc:
            raise FluxError(str(exc)) from None
        await client.record_batch([report.replayed])
        return report

    report = run_with_client(server, work)
    if as_json:
        doc = report.to_json()
        doc["resume_id"] = report.replayed.id
        doc["live"] = report.live
        render.print_json(doc)
    else:
        print_report(report, "resume")
        live = ", ".join(map(str, report.live)) or "none"
        click.echo(f"live exchanges (io seq): {live}")
    raise SystemExit(EXIT_CODES[report.outcome])
