"""What a replay or resume run found: outcome, response comparison, IO table, divergences.

`ReplayReport.to_json` is the `replay --json` shape of DESIGN.md; resume adds `resume_id`
and `live`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from flux_proxy.matcher import Divergence
from flux_proxy.model import Exchange
from flux_server.records import Execution, body_json

IGNORED_HEADERS = frozenset({"date", "content-length", "transfer-encoding", "connection",
                             "keep-alive"})


class ReplayOutcome(StrEnum):
    COMPLETED = "completed"
    DIVERGED = "diverged"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Difference:
    """One field of the response that differs: `where` is a JSON path or a header name."""

    where: str
    expected: Any
    actual: Any

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "expected": self.expected, "actual": self.actual}


def compare_headers(original: list[tuple[str, str]],
                    replayed: list[tuple[str, str]]) -> list[Difference]:
    """Headers, ignoring Date, framing headers and Flux's own `x-flux-*`."""

    def keep(headers: list[tuple[str, str]]) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in headers:
            k = k.lower()
            if k in IGNORED_HEADERS or k.startswith("x-flux-"):
                continue
            out[k] = f"{out[k]}, {v}" if k in out else v
        return out

    a, b = keep(original), keep(replayed)
    return [Difference(f"header {k}", a.get(k), b.get(k))
            for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def compare_json(expected: Any, actual: Any, path: str = "$") -> list[Difference]:
    """A structural diff: the paths of the values that differ, not a text diff."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[Difference] = []
        for key in list(expected) + [k for k in actual if k not in expected]:
            sub = f"{path}.{key}"
            if key not in actual:
                out.append(Difference(sub, expected[key], None))
            elif key not in expected:
                out.append(Difference(sub, None, actual[key]))
            else:
                out += compare_json(expected[key], actual[key], sub)
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        out = []
        for i, (x, y) in enumerate(zip(expected, actual, strict=False)):
            out += compare_json(x, y, f"{path}[{i}]")
        if len(expected) != len(actual):
            out.append(Difference(f"{path}.length", len(expected), len(actual)))
        return out
    if expected != actual or type(expected) is not type(actual):
        return [Difference(path, expected, actual)]
    return []


def compare_responses(original: Execution, replayed: Execution) -> list[Difference]:
    diffs: list[Difference] = []
    if original.status != replayed.status:
        diffs.append(Difference("status", original.status, replayed.status))
    diffs += compare_headers(original.response_headers, replayed.response_headers)
    a = body_json(original.response_body, original.response_headers)
    b = body_json(replayed.response_body, replayed.response_headers)
    diffs += [Difference("body" + d.where[1:], d.expected, d.actual) for d in compare_json(a, b)]
    return diffs


@dataclass
class IoEntry:
    """One exchange of the replayed run, with where its answer came from."""

    exchange: Exchange
    source: str  # recorded, live, boot, or none (a miss)
    diverged: bool = False

    def to_json(self, base_time: float) -> dict[str, Any]:
        doc = self.exchange.to_json(base_time)
        doc["source"] = self.source
        doc["diverged"] = self.diverged
        return doc


@dataclass
class ReplayReport:
    original: Execution
    replayed: Execution
    io: list[IoEntry] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)
    stopped_at: dict[str, Any] | None = None  # the exchange that had no checkpoint
    unused: list[Exchange] = field(default_factory=list)
    live: list[int] = field(default_factory=list)  # resume: seqs that went live
    notes: list[str] = field(default_factory=list)  # sandbox denials, determinism underruns

    @property
    def outcome(self) -> ReplayOutcome:
        if self.stopped_at is not None:
            return ReplayOutcome.STOPPED
        if self.divergences or self.unused:
            return ReplayOutcome.DIVERGED
        return ReplayOutcome.COMPLETED

    @property
    def response_differences(self) -> list[Difference]:
        return compare_responses(self.original, self.replayed)

    def to_json(self) -> dict[str, Any]:
        base = self.replayed.started_at
        return {
            "execution_id": self.original.id,
            "replay_id": self.replayed.id,
            "outcome": self.outcome.value,
            "original": {"status": self.original.status,
                         "body": body_json(self.original.response_body,
                                           self.original.response_headers)},
            "replay": {"status": self.replayed.status,
                       "body": body_json(self.replayed.response_body,
                                         self.replayed.response_headers)},
            "response_differences": [d.to_json() for d in self.response_differences],
            "io": [entry.to_json(base) for entry in self.io],
            "divergences": [d.to_json() for d in self.divergences],
            "stopped_at": self.stopped_at,
            "unused": [x.to_json(self.original.started_at) for x in self.unused],
            "notes": self.notes,
        }
