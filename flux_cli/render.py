"""Human renderings of executions: the logs table, tail lines, and the trace timeline."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from flux_cli.why import summarize_request, summarize_response
from flux_proxy.model import Exchange, Lifetime
from flux_server.records import Execution, ExecutionSummary, body_json

BODY_PREVIEW = 600
TIMELINE_HEAD = 40
TIMELINE_TAIL = 10


def short_id(execution_id: str) -> str:
    return execution_id.replace("-", "")[:8]


def status_style(status: int, outcome: str) -> str:
    if outcome == "error" or status >= 500:
        return "bold red"
    if status >= 400:
        return "yellow"
    return "green"


def local_time(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def logs_table(executions: list[ExecutionSummary]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col, justify in (("time", "left"), ("method", "left"), ("path", "left"),
                         ("status", "right"), ("duration", "right"), ("id", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for e in executions:
        status = Text(str(e.status), style=status_style(e.status, e.outcome.value))
        if e.outcome.value == "error" and e.status < 500:
            status.append(" error", style="red")
        path = Text(_with_query(e))
        if e.mode.value != "record":
            parent = f" of {short_id(e.parent_id)}" if e.parent_id else ""
            path.append(f"  ({e.mode.value}{parent})", style="dim")
        table.add_row(local_time(e.started_at), e.method, path, status,
                      f"{e.duration * 1000:.0f} ms", short_id(e.id))
    return table


def tail_lines(e: ExecutionSummary) -> list[Text]:
    line = Text()
    line.append(local_time(e.started_at) + " ", style="dim")
    line.append(f"{e.status} ", style=status_style(e.status, e.outcome.value))
    line.append(f"{e.method} {_with_query(e)} ")
    line.append(f"{e.duration * 1000:.0f} ms ", style="dim")
    line.append(short_id(e.id), style="cyan")
    out = [line]
    if e.error_message:
        out.append(Text(f"  └ {e.error_message}", style="red"))
    return out


def _with_query(e: Execution | ExecutionSummary) -> str:
    query = getattr(e, "query", "")
    return f"{e.path}?{query}" if query else e.path


@dataclass
class _Row:
    offset_ms: float
    text: Text


def trace_view(e: Execution, verbose: bool = False) -> Group:
    parts: list[Any] = []
    head = Text()
    head.append(f"{e.method} {_with_query(e)}", style="bold")
    head.append("  ")
    head.append(str(e.status), style=status_style(e.status, e.outcome.value))
    head.append(f"  {e.duration * 1000:.1f} ms  {e.outcome.value}")
    parts.append(head)
    meta = f"id {e.id}  mode {e.mode.value}"
    if e.parent_id:
        meta += f"  parent {short_id(e.parent_id)}"
    meta += f"  started {datetime.fromtimestamp(e.started_at).isoformat(timespec='milliseconds')}"
    parts.append(Text(meta, style="dim"))

    parts.append(Text("\nrequest", style="bold underline"))
    parts += _headers(e.request_headers, verbose)
    parts.append(_body(e.request_body, e.request_headers, e.request_truncated, verbose))

    parts.append(Text("\ntimeline", style="bold underline"))
    parts += _timeline(e, verbose)

    parts.append(Text("\nresponse", style="bold underline"))
    parts.append(Text(str(e.status), style=status_style(e.status, e.outcome.value)))
    parts += _headers(e.response_headers, verbose)
    parts.append(_body(e.response_body, e.response_headers, e.response_truncated, verbose))

    if e.error is not None:
        parts.append(Text("\nerror", style="bold underline"))
        parts.append(Text(f"{e.error.name}: {e.error.message}", style="bold red"))
        stack = e.error.stack.splitlines()[1:]
        if not verbose and len(stack) > 8:
            stack = [*stack[:8], f"    … {len(stack) - 8} more frames (--verbose)"]
        for line in stack:
            parts.append(Text(line, style="red"))
    return Group(*parts)


def _headers(headers: list[tuple[str, str]], verbose: bool) -> list[Text]:
    out = []
    for name, value in headers:
        if not verbose and len(value) > 120:
            value = value[:119] + "…"
        out.append(Text(f"  {name}: {value}", style="dim"))
    return out


def _body(body: bytes, headers: list[tuple[str, str]], truncated: bool, verbose: bool) -> Text:
    if not body:
        return Text("  (no body)", style="dim")
    value = body_json(body, headers)
    text = json.dumps(value, indent=2, ensure_ascii=False) if not isinstance(value, str) else value
    if not verbose and len(text) > BODY_PREVIEW:
        text = text[:BODY_PREVIEW] + f"\n… {len(text) - BODY_PREVIEW} more characters (--verbose)"
    if truncated:
        text += "\n(recording truncated at the body cap)"
    return Text("  " + text.replace("\n", "\n  "))


def _timeline(e: Execution, verbose: bool) -> list[Text]:
    rows: list[_Row] = []
    exchanges = sorted((x for x in e.exchanges if x.request_id in (None, e.id)
                        and (verbose or x.lifetime is Lifetime.REQUEST)),
                       key=lambda x: x.started_at)
    groups = _collapse(exchanges) if not verbose else [[x] for x in exchanges]
    for group in groups:
        rows.append(_Row((group[0].started_at - e.started_at) * 1000, _exchange_text(e, group)))
    for c in e.console:
        style = {"error": "red", "warn": "yellow", "debug": "dim"}.get(c.level, "")
        rows.append(_Row(c.offset * 1000, Text(f"{c.offset * 1000:8.1f} ms  console.{c.level}  "
                                               f"{c.text}", style=style)))
    rows.sort(key=lambda r: r.offset_ms)
    if not rows:
        return [Text("  (no IO and no console output)", style="dim")]
    if not verbose and len(rows) > TIMELINE_HEAD + TIMELINE_TAIL:
        hidden = len(rows) - TIMELINE_HEAD - TIMELINE_TAIL
        return [*(r.text for r in rows[:TIMELINE_HEAD]),
                Text(f"           … {hidden} more entries (--verbose)", style="dim"),
                *(r.text for r in rows[-TIMELINE_TAIL:])]
    return [r.text for r in rows]


def _collapse(exchanges: list[Exchange]) -> list[list[Exchange]]:
    """Runs of the same statement (an N+1 loop, say) become one line with a count."""
    groups: list[list[Exchange]] = []
    for x in exchanges:
        if groups and _statement(groups[-1][0]) == _statement(x) \
                and not x.response.get("error") and not groups[-1][0].response.get("error"):
            groups[-1].append(x)
        else:
            groups.append([x])
    return groups


def _statement(x: Exchange) -> tuple[str, str]:
    if "sql" in x.request:
        return x.protocol.value, " ".join(str(x.request["sql"]).split())
    return x.protocol.value, str(x.request.get("command", ""))


def _exchange_text(e: Execution, group: list[Exchange]) -> Text:
    x = group[0]
    offset = (x.started_at - e.started_at) * 1000
    total = sum(g.duration for g in group) * 1000
    text = Text(f"{offset:8.1f} ms  ")
    text.append(f"{'pg' if x.protocol.value == 'postgres' else 'redis':5} ", style="cyan")
    text.append(f"{total:6.1f} ms  ", style="dim")
    text.append(summarize_request(x))
    if len(group) > 1:
        text.append(f"  × {len(group)}", style="bold magenta")
    result = summarize_response(group[-1])
    failed = bool(x.response.get("error")) or x.failed
    text.append(f"\n                    → {result}", style="red" if failed else "green")
    if x.lifetime is not Lifetime.REQUEST:
        text.append(f"  [{x.lifetime.value}]", style="dim")
    return text


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False, default=str))


def console() -> Console:
    return Console(highlight=False, soft_wrap=True)
