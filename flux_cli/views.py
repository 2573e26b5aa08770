"""`flux logs`, `flux tail`, `flux trace`, `flux why`: reading what was recorded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from rich.markup import escape

from flux_cli import loop, render
from flux_cli.errors import FluxError, one_line_errors
from flux_cli.why import diagnose
from flux_server.client import (
    AuthenticationFailed,
    FluxClient,
    FluxClientError,
    ServerUnavailable,
)
from flux_server.filters import ExecutionFilter, FilterError
from flux_server.records import Execution, Mode

T = TypeVar("T")

TAIL_RECONNECT_SECONDS = 1.0


def server_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--server", "server", envvar="FLUX_SERVER", default=None,
                        help="flux-server address (default 127.0.0.1:50051).")(func)


def filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--status", help="ok, error, a code (404) or a class (5xx)."),
        click.option("--path", help="Substring of the request path."),
        click.option("--method", help="HTTP method."),
        click.option("--since", help="30s, 10m, 2h, 1d, or an ISO-8601 time."),
        click.option("--search", help="Text to find in the error."),
        click.option("--mode", type=click.Choice([m.value for m in Mode]),
                     help="record, replay or resume runs."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_filter(status: str | None, path: str | None, method: str | None, since: str | None,
                 search: str | None, mode: str | None) -> ExecutionFilter:
    try:
        return ExecutionFilter.from_options(status=status, path=path, method=method,
                                            since=since, search=search, mode=mode)
    except FilterError as exc:
        raise click.UsageError(str(exc)) from None


def run_with_client(server: str | None, work: Callable[[FluxClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with FluxClient(server) as client:
            return await work(client)

    try:
        return loop.run(main())
    except FluxClientError as exc:  # one line; an ambiguous id's message lists candidates
        raise FluxError(str(exc)) from None


def fetch_execution(server: str | None, execution_id: str) -> Execution:
    return run_with_client(server, lambda c: c.get(execution_id))


@click.command("logs")
@filter_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="At most 1000 a page; --page gives the next.")
@click.option("--page", "cursor", default=None, help="Cursor printed after a full page.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of summaries.")
@server_option
@one_line_errors
def logs_command(status: str | None, path: str | None, method: str | None, since: str | None,
                 search: str | None, mode: str | None, limit: int, cursor: str | None,
                 as_json: bool, server: str | None) -> None:
    """List recorded executions, newest first."""
    flt = build_filter(status, path, method, since, search, mode)
    page = run_with_client(server, lambda c: c.list(flt, limit=limit, cursor=cursor))
    if as_json:
        render.print_json([s.summary_json() for s in page.executions])
        return
    out = render.console()
    if not page.executions:
        out.print("No executions match. Serve an app with `flux serve APP` and send it a request.")
        return
    out.print(render.logs_table(page.executions))
    if page.next_cursor:
        out.print(f"[dim]more: flux logs --page {page.next_cursor} (same filters)[/dim]")


@click.command("tail")
@filter_options
@click.option("--json", "as_json", is_flag=True, help="One JSON summary per line.")
@server_option
@one_line_errors
def tail_command(status: str | None, path: str | None, method: str | None, since: str | None,
                 search: str | None, mode: str | None, as_json: bool,
                 server: str | None) -> None:
    """Stream executions as they finish (no backlog). Reconnects when the server restarts."""
    flt = build_filter(status, path, method, since, search, mode)
    out = render.console()

    async def follow() -> None:
        announced_loss = False
        while True:
            try:
                async with FluxClient(server) as client:
                    stream = client.tail(flt)
                    await stream.started()
                    if announced_loss:
                        click.echo("flux: reconnected to the server", err=True)
                        announced_loss = False
                    async for summary in stream:
                        if as_json:
                            print(json.dumps(summary.summary_json()), flush=True)
                        else:
                            for line in render.tail_lines(summary):
                                out.print(line)
            except ServerUnavailable as exc:
                if not announced_loss:
                    click.echo(f"flux: lost the server ({exc}); reconnecting…", err=True)
                    announced_loss = True
            await asyncio.sleep(TAIL_RECONNECT_SECONDS)

    try:
        loop.run(follow())
    except (AuthenticationFailed, FluxClientError) as exc:
        raise FluxError(str(exc)) from None


@click.command("trace")
@click.argument("execution_id")
@click.option("--verbose", "-v", is_flag=True, help="Everything: no truncation, no collapsing.")
@click.option("--json", "as_json", is_flag=True, help="The execution as one JSON document.")
@server_option
@one_line_errors
def trace_command(execution_id: str, verbose: bool, as_json: bool, server: str | None) -> None:
    """Show one execution as a timeline: request, IO, console, response, error."""
    execution = fetch_execution(server, execution_id)
    if as_json:
        render.print_json(execution.to_json())
        return
    render.console().print(render.trace_view(execution, verbose))


@click.command("why")
@click.argument("execution_id")
@click.option("--json", "as_json", is_flag=True, help="The diagnosis as one JSON document.")
@server_option
@one_line_errors
def why_command(execution_id: str, as_json: bool, server: str | None) -> None:
    """Explain what went wrong in one execution, and suggest a fix."""
    diagnosis = diagnose(fetch_execution(server, execution_id))
    if as_json:
        render.print_json(diagnosis.to_json())
        return
    out = render.console()
    style = "green" if diagnosis.cause.kind == "none" else "bold red"
    out.print(f"[{style}]{escape(diagnosis.verdict)}[/{style}]")
    for line in diagnosis.evidence:
        out.print(f"  • {escape(line)}")
    out.print(f"[bold]suggestion:[/bold] {escape(diagnosis.suggestion)}")
