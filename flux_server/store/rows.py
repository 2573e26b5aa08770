"""Records as table rows and back, the same for both stores.

JSON columns hold compact JSON text (Postgres type `json`, which keeps the text as given, so
key order survives). Bodies are bytes; an exchange's raw frames are one bytes value, the
protobuf encoding of `flux.v1.Frames` (so ingest stores what arrived without copying frames).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import orjson

from flux_proxy.model import Exchange, Lifetime, Protocol, Source
from flux_server.gen.flux_pb2 import Frames
from flux_server.records import (
    BootRecord,
    ConsoleLine,
    DeterminismEntry,
    ErrorInfo,
    Execution,
    ExecutionSummary,
    Mode,
    Outcome,
)

_standard_dump = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dump(value: Any) -> str:
    """Compact JSON text. orjson writes it several times faster, which counts because every
    exchange of every recorded request is dumped on the serving process; what orjson refuses
    (integers past 64 bits, keys that are not strings) goes through the standard encoder."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return _standard_dump(value)

EXECUTION_COLUMNS = (
    "id", "started_at", "duration", "method", "path", "query", "request_headers",
    "request_body", "request_truncated", "status", "response_headers", "response_body",
    "response_truncated", "outcome", "error_name", "error_message", "error_stack",
    "determinism", "parent_id", "mode", "app_path", "code_version", "flux_version",
    "deno_version", "worker_id", "boot_id", "upstreams", "replay_outcome",
)
SUMMARY_COLUMNS = ("id", "started_at", "duration", "method", "path", "status", "outcome",
                   "error_message", "mode", "parent_id", "replay_outcome")
EXCHANGE_COLUMNS = (
    "position", "protocol", "connection", "seq", "lifetime", "request_id", "started_at",
    "duration", "frames", "request", "response", "source", "failed",
)
CONSOLE_COLUMNS = ("position", "seq", "offset_s", "level", "text")


def execution_row(e: Execution) -> tuple[Any, ...]:
    error = e.error
    return (
        e.id, e.started_at, e.duration, e.method.upper(), e.path, e.query,
        dump(e.request_headers), e.request_body, e.request_truncated, e.status,
        dump(e.response_headers), e.response_body, e.response_truncated, e.outcome.value,
        error.name if error else None, error.message if error else None,
        error.stack if error else None,
        dump([[d.kind, d.value] for d in e.determinism]), e.parent_id, e.mode.value,
        e.app_path, e.code_version, e.flux_version, e.deno_version, e.worker_id, e.boot_id,
        dump(dict(sorted(e.upstreams.items()))), e.replay_outcome,
    )


def exchange_row(position: int, x: Exchange) -> tuple[Any, ...]:
    return (
        position, x.protocol.value, x.connection, x.seq, x.lifetime.value, x.request_id,
        x.started_at, x.duration, encode_frames(x.client_frames, x.server_frames),
        dump(x.request),
        dump(x.response), x.source.value if x.source is not None else None, x.failed,
    )


def console_row(position: int, c: ConsoleLine) -> tuple[Any, ...]:
    return (position, c.seq, c.offset, c.level, c.text)


@dataclass(slots=True)
class PreparedExecution:
    """An execution as the rows a store writes, made from a record or straight from protobuf
    (the ingest fast path, which never parses the JSON it only passes through)."""

    id: str
    started_at: float
    row: tuple[Any, ...]  # EXECUTION_COLUMNS
    exchanges: list[tuple[Any, ...]]  # EXCHANGE_COLUMNS
    console: list[tuple[Any, ...]]  # CONSOLE_COLUMNS
    summary: ExecutionSummary


@dataclass(slots=True)
class PreparedBoot:
    id: str
    worker_id: str
    app_path: str
    started_at: float
    exchanges: list[tuple[Any, ...]]  # EXCHANGE_COLUMNS


def prepare_execution(e: Execution) -> PreparedExecution:
    summary = ExecutionSummary.of(e)
    summary.method = summary.method.upper()  # as stored, so tails match what List shows
    return PreparedExecution(
        id=e.id, started_at=e.started_at, row=execution_row(e),
        exchanges=[exchange_row(i, x) for i, x in enumerate(e.exchanges)],
        console=[console_row(i, c) for i, c in enumerate(e.console)],
        summary=summary)


def prepare_boot(b: BootRecord) -> PreparedBoot:
    return PreparedBoot(id=b.id, worker_id=b.worker_id, app_path=b.app_path,
                        started_at=b.started_at,
                        exchanges=[exchange_row(i, x)
                                   for i, x in enumerate(b.exchanges, b.first_position)])


NUL_REPLACEMENT = "\ufffd"

P = TypeVar("P", PreparedExecution, PreparedBoot)


def _clean(value: Any) -> Any:
    return value.replace("\x00", NUL_REPLACEMENT) if isinstance(value, str) else value


def without_nul(records: list[P]) -> list[P]:
    """Copies with NUL characters in text replaced by U+FFFD: Postgres text cannot hold NUL.
    (JSON columns are safe: the encoder writes NUL as \\u0000.)"""
    cleaned: list[Any] = []
    for record in records:
        exchanges = [tuple(_clean(v) for v in x) for x in record.exchanges]
        if isinstance(record, PreparedExecution):
            summary = replace(record.summary, method=_clean(record.summary.method),
                              path=_clean(record.summary.path),
                              error_message=_clean(record.summary.error_message))
            cleaned.append(replace(record, row=tuple(_clean(v) for v in record.row),
                                   exchanges=exchanges, summary=summary,
                                   console=[tuple(_clean(v) for v in c)
                                            for c in record.console]))
        else:
            cleaned.append(replace(record, worker_id=_clean(record.worker_id),
                                   app_path=_clean(record.app_path), exchanges=exchanges))
    return cleaned


def _pairs(text: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in json.loads(text)]


def execution_from_rows(row: Mapping[str, Any], exchanges: Sequence[Mapping[str, Any]],
                        console: Sequence[Mapping[str, Any]]) -> Execution:
    error = None
    if row["error_name"] is not None or row["error_message"] is not None:
        error = ErrorInfo(name=row["error_name"] or "", message=row["error_message"] or "",
                          stack=row["error_stack"] or "")
    return Execution(
        id=str(row["id"]), started_at=row["started_at"], duration=row["duration"],
        method=row["method"], path=row["path"], query=row["query"],
        request_headers=_pairs(row["request_headers"]),
        request_body=bytes(row["request_body"]),
        request_truncated=bool(row["request_truncated"]), status=row["status"],
        response_headers=_pairs(row["response_headers"]),
        response_body=bytes(row["response_body"]),
        response_truncated=bool(row["response_truncated"]), error=error,
        console=[ConsoleLine(seq=c["seq"], offset=c["offset_s"], level=c["level"],
                             text=c["text"]) for c in console],
        exchanges=[exchange_from_row(x) for x in exchanges],
        determinism=[DeterminismEntry(kind, value)
                     for kind, value in json.loads(row["determinism"])],
        parent_id=str(row["parent_id"]) if row["parent_id"] is not None else None,
        mode=Mode(row["mode"]), app_path=row["app_path"], code_version=row["code_version"],
        flux_version=row["flux_version"], deno_version=row["deno_version"],
        worker_id=row["worker_id"], boot_id=row["boot_id"],
        upstreams=json.loads(row["upstreams"]), replay_outcome=row["replay_outcome"],
    )


def encode_frames(client: Sequence[bytes], server: Sequence[bytes]) -> bytes:
    return Frames(client=client, server=server).SerializeToString()


def exchange_from_row(row: Mapping[str, Any]) -> Exchange:
    frames = Frames.FromString(bytes(row["frames"]))
    return Exchange(
        protocol=Protocol(row["protocol"]), connection=row["connection"], seq=row["seq"],
        lifetime=Lifetime(row["lifetime"]), request_id=row["request_id"],
        started_at=row["started_at"], duration=row["duration"],
        client_frames=list(frames.client), server_frames=list(frames.server),
        request=json.loads(row["request"]), response=json.loads(row["response"]),
        source=Source(row["source"]) if row["source"] else None, failed=bool(row["failed"]),
    )


def summary_from_row(row: Mapping[str, Any]) -> ExecutionSummary:
    return ExecutionSummary(
        id=str(row["id"]), started_at=row["started_at"], duration=row["duration"],
        method=row["method"], path=row["path"], status=row["status"],
        outcome=Outcome(row["outcome"]), error_message=row["error_message"],
        mode=Mode(row["mode"]),
        parent_id=str(row["parent_id"]) if row["parent_id"] is not None else None,
        replay_outcome=row["replay_outcome"],
    )


def boot_from_rows(row: Mapping[str, Any], exchanges: Sequence[Mapping[str, Any]]) -> BootRecord:
    return BootRecord(id=row["id"], worker_id=row["worker_id"], app_path=row["app_path"],
                      started_at=row["started_at"],
                      exchanges=[exchange_from_row(x) for x in exchanges])
