"""RecordBatch requests straight to store rows: the ingest fast path.

Going through the record dataclasses would parse every exchange's JSON only to serialise it
again; here the JSON text passes through untouched (Postgres checks it on input as type
`json`, SQLite by json_valid CHECK constraints). `tests/server/test_ingest.py` proves the rows are
the same as those made from records.
"""

from __future__ import annotations

import re
import uuid
from json.encoder import encode_basestring as encode_string
from typing import Any

from flux_proxy.model import Lifetime, Protocol, Source
from flux_server.convert import optional_field
from flux_server.gen import flux_pb2 as pb
from flux_server.records import ExecutionSummary, Mode, Outcome
from flux_server.store.rows import PreparedBoot, PreparedExecution

PROTOCOLS = {p.value for p in Protocol}
LIFETIMES = {lt.value for lt in Lifetime}
SOURCES = {s.value for s in Source} | {""}
MODES = {m.value: m for m in Mode}
CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class MalformedRecord(ValueError):
    """A record the server will not store; the message says which field."""


def _exchange_rows(exchanges: Any, first_position: int = 0) -> list[tuple[Any, ...]]:
    rows = []
    for position, x in enumerate(exchanges, first_position):
        if x.protocol not in PROTOCOLS or x.lifetime not in LIFETIMES or x.source not in SOURCES:
            raise MalformedRecord(f"exchange {position}: unknown protocol, lifetime or source "
                                  f"({x.protocol!r}, {x.lifetime!r}, {x.source!r})")
        rows.append((
            position, x.protocol, x.connection, x.seq, x.lifetime,
            x.request_id if x.HasField("request_id") else None, x.started_at, x.duration,
            x.frames.SerializeToString(), x.request_json or "{}",
            x.response_json or "{}", x.source or None, x.failed,
        ))
    return rows


def _determinism_json(entries: Any) -> str:
    """The same text `dump([[kind, value], ...])` makes, without parsing the values."""
    items = ",".join(f"[{encode_string(d.kind)},{d.value_json or 'null'}]" for d in entries)
    return f"[{items}]"


def _headers_json(headers: Any) -> str:
    """The same text `dump([[name, value], ...])` makes, built directly (ingest hot path)."""
    return "[" + ",".join(f"[{encode_string(h.name)},{encode_string(h.value)}]"
                          for h in headers) + "]"


def _upstreams_json(upstreams: Any) -> str:
    """The same text `dump(dict(sorted(upstreams.items())))` makes."""
    return "{" + ",".join(f"{encode_string(k)}:{encode_string(v)}"
                          for k, v in sorted(upstreams.items())) + "}"


def canonical_id(text: str) -> str:
    lowered = text.lower()
    if CANONICAL_UUID.match(lowered):
        return lowered
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise MalformedRecord(f"execution id {text!r} is not a UUID") from None


def prepare_execution_proto(e: pb.Execution) -> PreparedExecution:
    execution_id = canonical_id(e.id)
    mode = MODES.get(e.mode or Mode.RECORD.value)
    if mode is None:
        raise MalformedRecord(f"execution {execution_id}: unknown mode {e.mode!r}")
    has_error = e.HasField("error")
    error = e.error
    outcome = Outcome.ERROR if has_error or e.status >= 500 else Outcome.OK
    parent_id, replay_outcome = optional_field(e, "parent_id"), optional_field(e, "replay_outcome")
    method = e.method.upper()
    row = (
        execution_id, e.started_at, e.duration, method, e.path, e.query,
        _headers_json(e.request_headers), e.request_body,
        e.request_truncated, e.status,
        _headers_json(e.response_headers), e.response_body,
        e.response_truncated, outcome.value,
        error.name if has_error else None, error.message if has_error else None,
        error.stack if has_error else None,
        _determinism_json(e.determinism),
        parent_id, mode.value, e.app_path, e.code_version, e.flux_version, e.deno_version,
        e.worker_id, optional_field(e, "boot_id"), _upstreams_json(e.upstreams),
        replay_outcome,
    )
    summary = ExecutionSummary(
        id=execution_id, started_at=e.started_at, duration=e.duration, method=method,
        path=e.path, status=e.status, outcome=outcome,
        error_message=error.message if has_error else None, mode=mode, parent_id=parent_id,
        replay_outcome=replay_outcome)
    return PreparedExecution(
        id=execution_id, started_at=e.started_at, row=row,
        exchanges=_exchange_rows(e.exchanges),
        console=[(i, c.seq, c.offset, c.level, c.text) for i, c in enumerate(e.console)],
        summary=summary)


def prepare_boot_proto(b: pb.BootRecord) -> PreparedBoot:
    return PreparedBoot(id=b.id, worker_id=b.worker_id, app_path=b.app_path,
                        started_at=b.started_at,
                        exchanges=_exchange_rows(b.exchanges, b.first_position))


def prepare_batch_proto(
        request: pb.RecordBatchRequest) -> tuple[list[PreparedExecution], list[PreparedBoot]]:
    return ([prepare_execution_proto(e) for e in request.executions],
            [prepare_boot_proto(b) for b in request.boots])
