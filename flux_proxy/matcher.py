"""The one replay matcher, shared by the Postgres and Redis replay proxies.

Deterministic, never a similarity score (DESIGN.md, "Checkpoints and matching"):
1. the first unused checkpoint with the same protocol, statement and parameters: exact;
2. else the first unused one with the same statement: answered, and reported as a divergence
   with the field-level difference;
3. else a miss: the proxy answers a protocol-correct error and the replay stops there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

from flux_proxy.model import Exchange, Lifetime, Protocol

_WHITESPACE = re.compile(r"\s+")
_COMMENT_TOKENS = frozenset({"SQL_COMMENT", "C_COMMENT"})
_LITERAL_TOKENS = frozenset({"ICONST", "FCONST", "SCONST", "BCONST", "XCONST", "USCONST"})


@dataclass(frozen=True, slots=True)
class RequestKey:
    """What a request is matched on. `params` are labelled so divergences can name them."""

    protocol: Protocol
    statement: str
    params: tuple[tuple[str, Any], ...] = ()

    def label(self) -> str:
        return self.statement if len(self.statement) <= 80 else self.statement[:77] + "..."


@dataclass(frozen=True, slots=True)
class Divergence:
    seq: int  # the recorded checkpoint's seq
    field: str  # e.g. "param $2", "literal #1", "arg 1", "param count"
    expected: Any
    actual: Any

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "field": self.field, "expected": self.expected,
                "actual": self.actual}


class MatchKind(StrEnum):
    EXACT = "exact"
    DIVERGED = "diverged"
    MISS = "miss"


@dataclass(slots=True)
class Match:
    kind: MatchKind
    checkpoint: Exchange | None = None
    divergences: list[Divergence] = field(default_factory=list)


def collapse_whitespace(sql: str) -> str:
    return _WHITESPACE.sub(" ", sql).strip()


@lru_cache(maxsize=4096)
def _sql_shape(sql: str) -> tuple[str, tuple[str, ...]]:
    """(statement key, inline literals) of a simple-protocol query.

    Queries with inline literals are keyed by their token shape: the literals become `?` and
    the parameters, keywords are upper-cased and unquoted names lower-cased, so only the
    literals (and spacing, case, comments) can differ. This is finer than the pglast
    fingerprint, which also equates other target lists and aliases (`SELECT 42 AS extra` and
    `SELECT 1 AS one, 'two' AS two` share one), so a replay would answer one with the
    other's rows. Queries pglast cannot scan, or without literals, are keyed by their
    whitespace-collapsed text.
    """
    from pglast import parser

    try:
        tokens = parser.scan(sql)
        literals = tuple(sql[t.start : t.end + 1] for t in tokens if t.name in _LITERAL_TOKENS)
        if not literals:
            return collapse_whitespace(sql), ()
        return " ".join(_token_shape(sql[t.start : t.end + 1], t.name, t.kind)
                        for t in tokens if t.name not in _COMMENT_TOKENS), literals
    except Exception:  # pglast raises its own ParseError and, on odd input, others
        return collapse_whitespace(sql), ()


def _token_shape(text: str, name: str, kind: str) -> str:
    if name in _LITERAL_TOKENS:
        return "?"
    if kind != "NO_KEYWORD":
        return text.upper()
    return text if text.startswith('"') else text.lower()


def request_key(exchange: Exchange) -> RequestKey:
    return key_of(exchange.protocol, exchange.request)


def key_of(protocol: Protocol, request: dict[str, Any]) -> RequestKey:
    """The match key of a semantic request, as the proxies record it."""
    if protocol is Protocol.REDIS:
        args = request.get("args", [])
        return RequestKey(protocol, str(request.get("command", "")).upper(),
                          tuple((f"arg {i}", _freeze(a)) for i, a in enumerate(args, 1)))
    sql = request.get("sql") or ""
    params = request.get("params") or []
    if params or not request.get("simple", "portal" not in request):
        return RequestKey(protocol, collapse_whitespace(sql),
                          tuple((f"param ${i}", _freeze(p)) for i, p in enumerate(params, 1)))
    statement, literals = _sql_shape(sql)
    return RequestKey(protocol, statement,
                      tuple((f"literal #{i}", lit) for i, lit in enumerate(literals, 1)))


def _freeze(value: Any) -> Any:
    """Parameters become hashable so keys compare cheaply."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
                         for v in value):
            return {k: _thaw(v) for k, v in value}
        return [_thaw(v) for v in value]
    return value


def diff_params(seq: int, expected: RequestKey, actual: RequestKey) -> list[Divergence]:
    out: list[Divergence] = []
    if len(expected.params) != len(actual.params):
        out.append(Divergence(seq, "param count", len(expected.params), len(actual.params)))
    for (name, want), (_, got) in zip(expected.params, actual.params, strict=False):
        if want != got:
            out.append(Divergence(seq, name, _thaw(want), _thaw(got)))
    return out


class Matcher:
    """Hands out the request checkpoints of one recording, each at most once."""

    def __init__(self, exchanges: list[Exchange]) -> None:
        self._checkpoints = [x for x in exchanges if x.lifetime is Lifetime.REQUEST]
        self._keys = [request_key(x) for x in self._checkpoints]
        self._used = [False] * len(self._checkpoints)

    def match(self, key: RequestKey) -> Match:
        same_statement: int | None = None
        for i, candidate in enumerate(self._keys):
            if self._used[i] or candidate.protocol is not key.protocol:
                continue
            if candidate.statement != key.statement:
                continue
            if candidate.params == key.params:
                self._used[i] = True
                return Match(MatchKind.EXACT, self._checkpoints[i])
            if same_statement is None:
                same_statement = i
        if same_statement is None:
            return Match(MatchKind.MISS)
        self._used[same_statement] = True
        checkpoint = self._checkpoints[same_statement]
        return Match(MatchKind.DIVERGED, checkpoint,
                     diff_params(checkpoint.seq, self._keys[same_statement], key))

    def unused(self) -> list[Exchange]:
        return [x for x, used in zip(self._checkpoints, self._used, strict=True) if not used]
