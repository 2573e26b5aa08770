"""Records (flux_server/records.py) to and from the protobuf messages of proto/flux.proto."""

from __future__ import annotations

import json
from collections.abc import Sequence

from flux_proxy.model import Exchange, Lifetime, Protocol, Source
from flux_server.filters import ExecutionFilter
from flux_server.gen import flux_pb2 as pb
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
from flux_server.store.rows import dump


def exchange_to_proto(exchange: Exchange) -> pb.Exchange:
    return pb.Exchange(
        protocol=exchange.protocol.value, connection=exchange.connection, seq=exchange.seq,
        lifetime=exchange.lifetime.value, request_id=exchange.request_id,
        started_at=exchange.started_at, duration=exchange.duration,
        frames=pb.Frames(client=exchange.client_frames, server=exchange.server_frames),
        request_json=dump(exchange.request), response_json=dump(exchange.response),
        source=exchange.source.value if exchange.source is not None else "",
        failed=exchange.failed)


def exchange_from_proto(message: pb.Exchange) -> Exchange:
    return Exchange(
        protocol=Protocol(message.protocol), connection=message.connection, seq=message.seq,
        lifetime=Lifetime(message.lifetime),
        request_id=message.request_id if message.HasField("request_id") else None,
        started_at=message.started_at, duration=message.duration,
        client_frames=list(message.frames.client), server_frames=list(message.frames.server),
        request=json.loads(message.request_json) if message.request_json else {},
        response=json.loads(message.response_json) if message.response_json else {},
        source=Source(message.source) if message.source else None, failed=message.failed)


def execution_to_proto(execution: Execution) -> pb.Execution:
    message = pb.Execution(
        id=execution.id, started_at=execution.started_at, duration=execution.duration,
        method=execution.method, path=execution.path, query=execution.query,
        request_headers=[pb.Header(name=k, value=v) for k, v in execution.request_headers],
        request_body=execution.request_body, request_truncated=execution.request_truncated,
        status=execution.status,
        response_headers=[pb.Header(name=k, value=v) for k, v in execution.response_headers],
        response_body=execution.response_body, response_truncated=execution.response_truncated,
        console=[pb.ConsoleLine(seq=c.seq, offset=c.offset, level=c.level, text=c.text)
                 for c in execution.console],
        exchanges=[exchange_to_proto(x) for x in execution.exchanges],
        determinism=[pb.DeterminismEntry(kind=d.kind, value_json=dump(d.value))
                     for d in execution.determinism],
        parent_id=execution.parent_id, mode=execution.mode.value, app_path=execution.app_path,
        code_version=execution.code_version, flux_version=execution.flux_version,
        deno_version=execution.deno_version, worker_id=execution.worker_id,
        boot_id=execution.boot_id, upstreams=execution.upstreams,
        replay_outcome=execution.replay_outcome)
    if execution.error is not None:
        message.error.CopyFrom(pb.ErrorInfo(name=execution.error.name,
                                            message=execution.error.message,
                                            stack=execution.error.stack))
    return message


def optional_field(message: object, name: str) -> str | None:
    """A proto3 `optional` field's value, or None when unset."""
    return getattr(message, name) if message.HasField(name) else None  # type: ignore[attr-defined]


def execution_from_proto(message: pb.Execution) -> Execution:
    error = None
    if message.HasField("error"):
        error = ErrorInfo(name=message.error.name, message=message.error.message,
                          stack=message.error.stack)
    return Execution(
        id=message.id, started_at=message.started_at, duration=message.duration,
        method=message.method, path=message.path, query=message.query,
        request_headers=[(h.name, h.value) for h in message.request_headers],
        request_body=message.request_body, request_truncated=message.request_truncated,
        status=message.status,
        response_headers=[(h.name, h.value) for h in message.response_headers],
        response_body=message.response_body, response_truncated=message.response_truncated,
        error=error,
        console=[ConsoleLine(seq=c.seq, offset=c.offset, level=c.level, text=c.text)
                 for c in message.console],
        exchanges=[exchange_from_proto(x) for x in message.exchanges],
        determinism=[DeterminismEntry(kind=d.kind, value=json.loads(d.value_json))
                     for d in message.determinism],
        parent_id=optional_field(message, "parent_id"), mode=Mode(message.mode or Mode.RECORD),
        app_path=message.app_path, code_version=message.code_version,
        flux_version=message.flux_version, deno_version=message.deno_version,
        worker_id=message.worker_id, boot_id=optional_field(message, "boot_id"),
        upstreams=dict(message.upstreams), replay_outcome=optional_field(message, "replay_outcome"))


def boot_to_proto(boot: BootRecord) -> pb.BootRecord:
    return pb.BootRecord(id=boot.id, worker_id=boot.worker_id, app_path=boot.app_path,
                         started_at=boot.started_at, first_position=boot.first_position,
                         exchanges=[exchange_to_proto(x) for x in boot.exchanges])


def boot_from_proto(message: pb.BootRecord) -> BootRecord:
    return BootRecord(id=message.id, worker_id=message.worker_id, app_path=message.app_path,
                      started_at=message.started_at, first_position=message.first_position,
                      exchanges=[exchange_from_proto(x) for x in message.exchanges])


def batch_to_proto(executions: Sequence[Execution],
                   boots: Sequence[BootRecord]) -> pb.RecordBatchRequest:
    return pb.RecordBatchRequest(executions=[execution_to_proto(e) for e in executions],
                                 boots=[boot_to_proto(b) for b in boots])


def batch_from_proto(message: pb.RecordBatchRequest) -> tuple[list[Execution], list[BootRecord]]:
    return ([execution_from_proto(e) for e in message.executions],
            [boot_from_proto(b) for b in message.boots])


def batch_from_bytes(data: bytes) -> tuple[list[Execution], list[BootRecord]]:
    """Inverse of `batch_to_proto(...).SerializeToString()` (the shipper's spool files)."""
    return batch_from_proto(pb.RecordBatchRequest.FromString(data))


def summary_to_proto(summary: ExecutionSummary) -> pb.ExecutionSummary:
    return pb.ExecutionSummary(
        id=summary.id, started_at=summary.started_at, duration=summary.duration,
        method=summary.method, path=summary.path, status=summary.status,
        outcome=summary.outcome.value, error_message=summary.error_message,
        mode=summary.mode.value, parent_id=summary.parent_id,
        replay_outcome=summary.replay_outcome)


def summary_from_proto(message: pb.ExecutionSummary) -> ExecutionSummary:
    return ExecutionSummary(
        id=message.id, started_at=message.started_at, duration=message.duration,
        method=message.method, path=message.path, status=message.status,
        outcome=Outcome(message.outcome), error_message=optional_field(message, "error_message"),
        mode=Mode(message.mode or Mode.RECORD), parent_id=optional_field(message, "parent_id"),
        replay_outcome=optional_field(message, "replay_outcome"))


def filter_to_proto(flt: ExecutionFilter) -> pb.ExecutionFilter:
    return pb.ExecutionFilter(
        outcome=flt.outcome.value if flt.outcome else None, status=flt.status,
        status_class=flt.status_class, path=flt.path, method=flt.method, since=flt.since,
        until=flt.until, mode=flt.mode.value if flt.mode else None, search=flt.search)


def filter_from_proto(message: pb.ExecutionFilter) -> ExecutionFilter:
    """Raises FilterError (or ValueError for an unknown outcome/mode) on a bad value."""
    def get(name: str) -> object:
        return getattr(message, name) if message.HasField(name) else None

    outcome, mode = get("outcome"), get("mode")
    return ExecutionFilter(
        outcome=Outcome(outcome) if outcome else None, status=get("status"),  # type: ignore[arg-type]
        status_class=get("status_class"), path=get("path"),  # type: ignore[arg-type]
        method=get("method"), since=get("since"), until=get("until"),  # type: ignore[arg-type]
        mode=Mode(mode) if mode else None, search=get("search"))  # type: ignore[arg-type]
