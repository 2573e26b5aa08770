"""`flux replay ID`: re-run a request against its recorded IO, and say how it went."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from flux_cli import render
from flux_cli.errors import EXIT_DIVERGED, EXIT_STOPPED, FluxError, one_line_errors
from flux_cli.views import run_with_client
from flux_cli.why import summarize_request, summarize_response
from flux_runtime.report import ReplayOutcome, ReplayReport
from flux_server.client import FluxClient

EXIT_CODES = {ReplayOutcome.COMPLETED: 0, ReplayOutcome.DIVERGED: EXIT_DIVERGED,
              ReplayOutcome.STOPPED: EXIT_STOPPED}
OUTCOME_STYLE = {ReplayOutcome.COMPLETED: "bold green", ReplayOutcome.DIVERGED: "bold yellow",
                 ReplayOutcome.STOPPED: "bold red"}


@click.command("replay")
@click.argument("execution_id")
@click.option("--app", type=click.Path(dir_okay=False), help="Run this file instead of the "
              "recorded app (to test a fix).")
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON document.")
@click.option("--server", default=None, envvar="FLUX_SERVER", help="flux-server address.")
@one_line_errors
def replay_command(execution_id: str, app: str | None, as_json: bool,
                   server: str | None) -> None:
    """Re-run a recorded request with the current code; the real databases are never used."""
    from flux_runtime.replay import ReplayError, fetch_recording, replay
    from flux_runtime.worker import WorkerStartError

    async def work(client: FluxClient) -> ReplayReport:
        recording = await fetch_recording(client, execution_id)
        try:
            report = await replay(recording, app)
        except (ReplayError, WorkerStartError) as exc:
            raise FluxError(str(exc)) from None
        await client.record_batch([report.replayed])
        return report

    report: ReplayReport = run_with_client(server, work)
    if as_json:
        render.print_json(report.to_json())
    else:
        print_report(report, "replay")
    raise SystemExit(EXIT_CODES[report.outcome])


def print_report(report: ReplayReport, kind: str) -> None:
    out = render.console()
    outcome = report.outcome
    style = OUTCOME_STYLE[outcome]
    original, replayed = report.original, report.replayed
    out.print(f"[{style}]{kind} {outcome.value}[/{style}]  "
              f"{original.method} {escape(original.path)}  "
              f"original {render.short_id(original.id)} → {kind} {render.short_id(replayed.id)}")
    out.print(f"\n[bold underline]response[/]  {original.status} → {replayed.status}")
    diffs = report.response_differences
    if not diffs:
        out.print("  identical (ignoring Date and x-flux-* headers)")
    for d in diffs:
        out.print(f"  {escape(d.where)}: {escape(repr(d.expected))} → {escape(repr(d.actual))}")

    out.print("\n[bold underline]io[/]")
    if not report.io:
        out.print("  (no IO)")
    else:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("seq", "protocol", "source", "request", "result"):
            table.add_column(col)
        for i, entry in enumerate(report.io, 1):
            x = entry.exchange
            source = entry.source + (" (diverged)" if entry.diverged else "")
            table.add_row(str(i), x.protocol.value, source, escape(summarize_request(x, 70)),
                          escape(summarize_response(x)))
        out.print(table)
    if report.divergences:
        out.print("\n[bold underline]divergences[/]")
        for d in report.divergences:
            out.print(f"  checkpoint #{d.seq} {escape(d.field)}: {escape(repr(d.expected))} → "
                      f"{escape(repr(d.actual))}")
    if report.stopped_at is not None:
        out.print("\n[bold red]stopped at an IO boundary:[/] no recorded answer for "
                  f"{escape(_describe(report.stopped_at))}")
    if report.unused:
        out.print("\n[bold underline]unused checkpoints[/] (recorded, never asked for)")
        for x in report.unused:
            out.print(f"  #{x.seq} {x.protocol.value} {escape(summarize_request(x, 100))}")
    for note in report.notes:
        out.print(f"\n[yellow]note:[/] {escape(note)}")
    if replayed.error is not None:
        out.print(f"\n[red]{escape(replayed.error.name)}: {escape(replayed.error.message)}[/]")
    out.print(f"\n{kind} recorded as {replayed.id} (flux trace {render.short_id(replayed.id)})")


def _describe(doc: dict[str, Any]) -> str:
    request = doc.get("request", {})
    if "sql" in request:
        return " ".join(str(request["sql"]).split())
    return " ".join([str(request.get("command", "")), *map(str, request.get("args", []))])


