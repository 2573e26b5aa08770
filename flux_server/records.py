"""Execution and boot records: what the runtime ships and the server stores.

Plain dataclasses shared by the runtime (producer), the server (store) and the CLI (reader).
The gRPC layer converts them to and from `proto/flux.proto` messages.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from flux_proxy.model import Exchange


class Mode(StrEnum):
    RECORD = "record"
    REPLAY = "replay"
    RESUME = "resume"


class Outcome(StrEnum):
    OK = "ok"
    ERROR = "error"


@dataclass(slots=True)
class ErrorInfo:
    name: str
    message: str
    stack: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "message": self.message, "stack": self.stack}


@dataclass(slots=True)
class ConsoleLine:
    seq: int
    offset: float  # seconds since the request started
    level: str  # log, info, warn, error, debug
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "offset_ms": round(self.offset * 1000, 3), "level": self.level,
                "text": self.text}


@dataclass(slots=True)
class DeterminismEntry:
    """One value of time or randomness the request observed, fed back in order in replay."""

    kind: str  # date_now, performance_now, math_random, random_uuid, get_random_values
    value: Any  # number, string, or base64 string for get_random_values bytes


@dataclass(slots=True)
class Execution:
    id: str  # random UUID v4
    started_at: float  # epoch seconds
    duration: float  # seconds
    method: str
    path: str
    query: str = ""
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    request_body: bytes = b""
    request_truncated: bool = False
    status: int = 0
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: bytes = b""
    response_truncated: bool = False
    error: ErrorInfo | None = None
    console: list[ConsoleLine] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    determinism: list[DeterminismEntry] = field(default_factory=list)
    parent_id: str | None = None
    mode: Mode = Mode.RECORD
    app_path: str = ""
    code_version: str = ""
    flux_version: str = ""
    deno_version: str = ""
    worker_id: str = ""
    boot_id: str | None = None
    upstreams: dict[str, str] = field(default_factory=dict)  # env var -> URL without password
    replay_outcome: str | None = None  # completed / diverged / stopped, for replay and resume

    @property
    def outcome(self) -> Outcome:
        """DESIGN.md: error when the handler threw (or logged an Error), or status >= 500."""
        return Outcome.ERROR if self.error is not None or self.status >= 500 else Outcome.OK

    def to_json(self) -> dict[str, Any]:
        """The execution JSON shape of DESIGN.md (`trace --json`)."""
        return {
            "id": self.id,
            "parent_id": self.parent_id,
            "mode": self.mode.value,
            "started_at": iso(self.started_at),
            "duration_ms": round(self.duration * 1000, 3),
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "outcome": self.outcome.value,
            "request": {"headers": dict(self.request_headers),
                        "body": body_json(self.request_body, self.request_headers),
                        "truncated": self.request_truncated},
            "response": {"headers": dict(self.response_headers),
                         "body": body_json(self.response_body, self.response_headers),
                         "truncated": self.response_truncated},
            "error": self.error.to_json() if self.error else None,
            "console": [c.to_json() for c in self.console],
            "exchanges": [x.to_json(self.started_at) for x in self.exchanges],
            "boot_id": self.boot_id,
        }


@dataclass(slots=True)
class BootRecord:
    """IO a worker did outside any request: before its first one, and between requests."""

    id: str
    worker_id: str
    app_path: str
    started_at: float
    exchanges: list[Exchange] = field(default_factory=list)
    first_position: int = 0  # a later part of a growing boot record starts past 0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def body_json(body: bytes, headers: list[tuple[str, str]]) -> Any:
    """DESIGN.md: parsed JSON when the content is JSON, else a UTF-8 string, else base64."""
    ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
    if body and "json" in ctype.lower():
        try:
            return json.loads(body)
        except ValueError:
            pass
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(body).decode()}


@dataclass(slots=True)
class ExecutionSummary:
    """What `logs` and `tail` show of an execution: what List and Tail return, without the IO."""

    id: str
    started_at: float
    duration: float
    method: str
    path: str
    status: int
    outcome: Outcome
    error_message: str | None = None
    mode: Mode = Mode.RECORD
    parent_id: str | None = None
    replay_outcome: str | None = None

    @classmethod
    def of(cls, execution: Execution) -> ExecutionSummary:
        return cls(id=execution.id, started_at=execution.started_at,
                   duration=execution.duration, method=execution.method, path=execution.path,
                   status=execution.status, outcome=execution.outcome,
                   error_message=execution.error.message if execution.error else None,
                   mode=execution.mode, parent_id=execution.parent_id,
                   replay_outcome=execution.replay_outcome)

    def summary_json(self) -> dict[str, Any]:
        """The summary JSON shape of DESIGN.md (`logs --json`, `tail --json`)."""
        return {
            "id": self.id,
            "started_at": iso(self.started_at),
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "outcome": self.outcome.value,
            "duration_ms": round(self.duration * 1000, 3),
            "error_message": self.error_message,
        }
