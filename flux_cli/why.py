"""`flux why`: root-cause analysis of one execution, as rules over its record.

Rules, first match wins: a failed exchange; an uncaught throw with no failing IO; a 5xx
without a throw; a slow request; otherwise no problem. Each verdict names its evidence and
ends with a one-line suggestion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flux_proxy.model import Exchange, Lifetime, Protocol
from flux_server.records import Execution

SLOW_MS = 1000.0

SQLSTATE_MEANINGS = {
    "23505": "unique violation: a row with this key already exists",
    "23503": "foreign key violation: the referenced row does not exist (or is still referenced)",
    "23502": "not-null violation: a required column got NULL",
    "23514": "check violation: a CHECK constraint rejected the row",
    "22P02": "invalid input syntax: a value could not be parsed as the column's type",
    "22001": "string too long for the column",
    "22003": "numeric value out of range",
    "40001": "serialization failure: a concurrent transaction conflicted; retry it",
    "40P01": "deadlock detected: two transactions waited on each other",
    "57014": "statement timeout or cancel: the query ran too long",
    "53300": "too many connections on the server",
    "42P01": "undefined table",
    "42703": "undefined column",
    "42601": "syntax error",
    "42883": "undefined function (or no function matches the argument types)",
    "25P02": "in failed transaction: an earlier statement failed and the transaction was not "
             "rolled back",
    "28P01": "password authentication failed",
    "3D000": "the database does not exist",
    "FX001": "no recorded answer (Flux replay)",
}

SQLSTATE_SUGGESTIONS = {
    "23505": "Check for an existing row first, or use INSERT ... ON CONFLICT.",
    "23503": "Create the referenced row first, or check that the id the handler uses exists.",
    "23502": "Validate the input so the required value is present before writing.",
    "22P02": "Validate and convert request input before passing it as a query parameter.",
    "40001": "Retry the transaction on serialization failure.",
    "40P01": "Take locks in a consistent order, and retry on deadlock.",
    "57014": "Add an index or paginate the query, or raise statement_timeout deliberately.",
    "53300": "Use a connection pool with a bounded size, or raise max_connections.",
    "42P01": "Run the migration that creates the table, or fix the table name.",
    "42703": "Run the migration that adds the column, or fix the column name.",
}

REDIS_SUGGESTIONS = {
    "WRONGTYPE": "The key holds another data type: use the matching command or a separate key.",
    "NOAUTH": "Give the Redis password in the connection URL.",
    "WRONGPASS": "Fix the Redis user or password in the connection URL.",
    "OOM": "Redis hit maxmemory: set an eviction policy, expire keys, or add memory.",
    "NOSCRIPT": "Load the script with SCRIPT LOAD (or use EVAL) before EVALSHA.",
    "READONLY": "The client talks to a replica: write to the primary.",
    "BUSY": "A script is running too long: make it shorter or SCRIPT KILL it.",
}


@dataclass
class Cause:
    kind: str  # postgres_error, redis_error, exception, error_status, slow, none
    exchange_seq: int | None = None
    message: str = ""
    sqlstate: str | None = None


@dataclass
class Diagnosis:
    execution_id: str
    verdict: str  # one line a human reads first
    cause: Cause
    evidence: list[str] = field(default_factory=list)
    suggestion: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "verdict": self.verdict,
            "cause": {"kind": self.cause.kind, "exchange_seq": self.cause.exchange_seq,
                      "message": self.cause.message, "sqlstate": self.cause.sqlstate},
            "evidence": self.evidence,
            "suggestion": self.suggestion,
        }


def request_exchanges(execution: Execution) -> list[Exchange]:
    """The exchanges the request itself made, in the order they started."""
    own = [x for x in execution.exchanges
           if x.lifetime is Lifetime.REQUEST and x.request_id in (None, execution.id)]
    return sorted(own, key=lambda x: x.started_at)


def summarize_request(x: Exchange, limit: int = 160) -> str:
    if x.protocol is Protocol.POSTGRES:
        text = " ".join(str(x.request.get("sql", "")).split())
        params = x.request.get("params") or []
        if params:
            text += "  params=" + ", ".join(_short(p) for p in params)
    else:
        args = " ".join(_short(a) for a in x.request.get("args", []))
        text = f"{x.request.get('command', '')} {args}".strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize_response(x: Exchange) -> str:
    error = x.response.get("error")
    if error:
        if isinstance(error, dict):
            return f"ERROR {error.get('sqlstate', '')} {error.get('message', '')}".strip()
        return f"ERROR {error}"
    if x.protocol is Protocol.POSTGRES:
        tag = x.response.get("command_tag") or ""
        rows = x.response.get("rows")
        if rows:
            shown = ", ".join(_short(r, 60) for r in rows[:2])
            more = f" (+{len(rows) - 2} more)" if len(rows) > 2 else ""
            return f"{tag} → {shown}{more}"
        return tag
    value = x.response.get("value")
    return "(nil)" if value is None else _short(value, 100)


def _short(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_of(x: Exchange) -> tuple[str, str | None] | None:
    """(message, sqlstate) when the exchange failed."""
    error = x.response.get("error")
    if error:
        if isinstance(error, dict):
            return str(error.get("message", "")), error.get("sqlstate")
        return str(error), None
    if x.failed:
        return "the connection failed during this exchange", None
    return None


def app_frame(stack: str, app_path: str) -> str | None:
    """The top stack frame in the app's own code, not in npm packages or Deno internals."""
    for line in stack.splitlines()[1:]:
        line = line.strip()
        if not line.startswith("at "):
            continue
        if re.search(r"node_modules|/npm/|ext:|deno:|flux_runtime|node:internal", line):
            continue
        if not app_path or "file://" in line or app_path in line:
            return line[3:]
    return None


def diagnose(execution: Execution, slow_ms: float = SLOW_MS) -> Diagnosis:
    exchanges = request_exchanges(execution)
    for x in exchanges:
        failed = _error_of(x)
        if failed:
            return _failed_exchange(execution, x, *failed)
    if execution.error is not None:
        return _uncaught(execution, exchanges)
    if execution.status >= 500:
        return Diagnosis(
            execution.id, f"the handler returned {execution.status} without throwing",
            Cause("error_status", message=f"status {execution.status}"),
            [f"{execution.method} {execution.path} → {execution.status}", *_last_io(exchanges)],
            "Look at the branch that builds this response; log the reason before returning it.")
    duration_ms = execution.duration * 1000
    if duration_ms >= slow_ms:
        return _slow(execution, exchanges, duration_ms)
    return Diagnosis(
        execution.id, "no problem found",
        Cause("none"),
        [f"{execution.method} {execution.path} → {execution.status} in {duration_ms:.0f} ms, "
         f"{len(exchanges)} exchanges, {len(execution.console)} console lines"],
        "Nothing to fix here; compare with a failing execution of the same route.")


def _failed_exchange(execution: Execution, x: Exchange, message: str,
                     sqlstate: str | None) -> Diagnosis:
    evidence = [f"exchange #{x.seq} ({x.protocol.value}): {summarize_request(x, 400)}"]
    if x.protocol is Protocol.POSTGRES:
        meaning = SQLSTATE_MEANINGS.get(sqlstate or "") or _class_meaning(sqlstate)
        evidence.append(f"SQLSTATE {sqlstate}: {meaning}" if sqlstate else "no SQLSTATE")
        detail = x.response.get("error", {}) if isinstance(x.response.get("error"), dict) else {}
        if detail.get("detail"):
            evidence.append(f"detail: {detail['detail']}")
        kind, suggestion = "postgres_error", SQLSTATE_SUGGESTIONS.get(
            sqlstate or "", "Read the error above and fix the query or the data it uses.")
    else:
        error_kind = message.split(" ", 1)[0]
        evidence.append(f"Redis error kind: {error_kind}")
        kind, suggestion = "redis_error", REDIS_SUGGESTIONS.get(
            error_kind, "Read the Redis error above and fix the command or the key it uses.")
    if execution.error is not None:
        evidence.append(f"the app then threw {execution.error.name}: {execution.error.message}")
    else:
        evidence.append("the app did not throw")
    evidence.append(f"response status {execution.status}")
    return Diagnosis(execution.id, f"{x.protocol.value} exchange #{x.seq} failed: {message}",
                     Cause(kind, x.seq, message, sqlstate), evidence, suggestion)


def _class_meaning(sqlstate: str | None) -> str:
    classes = {"08": "connection exception", "22": "data exception",
               "23": "integrity constraint violation", "25": "invalid transaction state",
               "28": "invalid authorization", "40": "transaction rollback",
               "42": "syntax error or access rule violation", "53": "insufficient resources",
               "57": "operator intervention", "XX": "internal error"}
    return classes.get((sqlstate or "")[:2], "see the PostgreSQL error codes appendix")


def _uncaught(execution: Execution, exchanges: list[Exchange]) -> Diagnosis:
    error = execution.error
    assert error is not None
    evidence = [f"{error.name}: {error.message}"]
    frame = app_frame(error.stack, execution.app_path)
    if frame:
        evidence.append(f"thrown at {frame}")
    evidence += _last_io(exchanges)
    return Diagnosis(
        execution.id, f"the handler threw {error.name}: {error.message}",
        Cause("exception", exchanges[-1].seq if exchanges else None, error.message),
        evidence,
        "Check the data the last exchange returned: the code at the frame above did not expect "
        "it." if exchanges else "Fix the code at the frame above; no IO was involved.")


def _last_io(exchanges: list[Exchange]) -> list[str]:
    if not exchanges:
        return ["no IO before it"]
    x = exchanges[-1]
    return [f"last exchange #{x.seq}: {summarize_request(x)}",
            f"  which returned: {summarize_response(x)}"]


def _slow(execution: Execution, exchanges: list[Exchange], duration_ms: float) -> Diagnosis:
    io_ms = sum(x.duration for x in exchanges) * 1000
    slowest = sorted(exchanges, key=lambda x: x.duration, reverse=True)[:3]
    evidence = [f"{x.duration * 1000:.0f} ms ({x.duration * 100_000 / duration_ms:.0f}%) "
                f"#{x.seq} {summarize_request(x)}" for x in slowest]
    outside = max(duration_ms - io_ms, 0.0)
    evidence.append(f"{outside:.0f} ms ({outside * 100 / duration_ms:.0f}%) outside IO")
    top = slowest[0] if slowest else None
    if top is not None and top.duration * 1000 >= outside:
        return Diagnosis(
            execution.id, f"slow: {duration_ms:.0f} ms, most of it in exchange #{top.seq}",
            Cause("slow", top.seq, summarize_request(top)), evidence,
            "Speed up the slowest exchange (EXPLAIN ANALYZE it, add an index, or cache it).")
    return Diagnosis(
        execution.id, f"slow: {duration_ms:.0f} ms, most of it outside IO",
        Cause("slow", None, "time spent in the app's own code"), evidence,
        "Profile the handler: the time goes to computation or waiting outside Postgres/Redis.")
