"""The WHERE clause of List, built once for both SQL dialects so the stores filter alike."""

from __future__ import annotations

from typing import Any

from flux_server.filters import ExecutionFilter


class SqlParams:
    """Collects arguments and hands out placeholders: `$1..$n` (asyncpg) or `?` (sqlite)."""

    def __init__(self, numbered: bool) -> None:
        self.numbered = numbered
        self.values: list[Any] = []

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}" if self.numbered else "?"

    def contains(self, column: str, needle: str, case_insensitive: bool = False) -> str:
        """`needle` occurs in `column`; plain substring, so % and _ mean themselves."""
        find = "strpos" if self.numbered else "instr"
        placeholder = self.add(needle.lower() if case_insensitive else needle)
        if case_insensitive:
            return f"{find}(lower({column}), {placeholder}) > 0"
        return f"{find}({column}, {placeholder}) > 0"


def where_clause(flt: ExecutionFilter, params: SqlParams,
                 after: tuple[float, str] | None = None, id_cast: str = "") -> str:
    """Conditions of `flt`, and keyset paging: rows strictly after `after` in newest-first."""
    conditions: list[str] = []
    if flt.outcome is not None:
        conditions.append(f"outcome = {params.add(flt.outcome.value)}")
    if flt.status is not None:
        conditions.append(f"status = {params.add(flt.status)}")
    if flt.status_range is not None:
        low, high = flt.status_range
        conditions.append(f"status >= {params.add(low)} AND status < {params.add(high)}")
    if flt.path is not None:
        conditions.append(params.contains("path", flt.path))
    if flt.method is not None:
        conditions.append(f"method = {params.add(flt.method)}")
    if flt.since is not None:
        conditions.append(f"started_at >= {params.add(flt.since)}")
    if flt.until is not None:
        conditions.append(f"started_at < {params.add(flt.until)}")
    if flt.mode is not None:
        conditions.append(f"mode = {params.add(flt.mode.value)}")
    if flt.search is not None:
        conditions.append(search_condition(flt.search, params))
    if after is not None:
        started_at, execution_id = after
        conditions.append(f"(started_at, id) < ({params.add(started_at)}, "
                          f"{params.add(execution_id)}{id_cast})")
    return " AND ".join(conditions) or "TRUE"


def search_condition(search: str, params: SqlParams) -> str:
    columns = ("error_name", "error_message", "error_stack")
    parts = [params.contains(f"coalesce({c}, '')", search, case_insensitive=True)
             for c in columns]
    return "(" + " OR ".join(parts) + ")"
