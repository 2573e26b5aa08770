"""The List/Tail filters, and the parsing of the CLI's `--status` and `--since` forms.

One definition shared by both stores (which turn it into SQL), the Tail fan-out (which applies
it in Python to summaries) and the CLI (which builds it from options), so all agree.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from flux_server.records import ExecutionSummary, Mode, Outcome

STATUS_CLASS = re.compile(r"^[1-5]xx$")
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
SECONDS_PER_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class FilterError(ValueError):
    """A filter value the server cannot apply; its message names the value."""


@dataclass(frozen=True, slots=True)
class ExecutionFilter:
    """Unset (None) fields do not filter. Times are epoch seconds: since inclusive, until not."""

    outcome: Outcome | None = None
    status: int | None = None
    status_class: str | None = None  # "5xx"
    path: str | None = None  # substring, case-sensitive
    method: str | None = None  # exact, stored upper-case
    since: float | None = None
    until: float | None = None
    mode: Mode | None = None
    search: str | None = None  # case-insensitive substring of error name, message or stack

    def __post_init__(self) -> None:
        if self.status_class is not None and not STATUS_CLASS.match(self.status_class):
            raise FilterError(f"status class must look like 5xx, not {self.status_class!r}")
        if self.method is not None:
            object.__setattr__(self, "method", self.method.upper())

    @property
    def status_range(self) -> tuple[int, int] | None:
        """[low, high) of the status class."""
        if self.status_class is None:
            return None
        low = int(self.status_class[0]) * 100
        return low, low + 100

    @classmethod
    def from_options(cls, *, status: str | None = None, path: str | None = None,
                     method: str | None = None, since: str | None = None,
                     until: str | None = None, search: str | None = None,
                     mode: str | None = None, now: float | None = None) -> ExecutionFilter:
        """The filter of `flux logs`/`flux tail` options, given as the user typed them
        (`--status 5xx --since 10m`); raises FilterError naming a bad value."""
        flt = cls(path=path or None, method=method or None, search=search or None,
                  since=parse_time(since, now) if since else None,
                  until=parse_time(until, now) if until else None)
        if mode:
            try:
                flt = replace(flt, mode=Mode(mode.lower()))
            except ValueError:
                raise FilterError(f"mode is record, replay or resume, not {mode!r}") from None
        return flt.with_status(status) if status else flt

    def with_status(self, value: str) -> ExecutionFilter:
        """Applies the `--status` forms of DESIGN.md: ok, error, an exact code, or a class."""
        return replace(self, **parse_status(value))

    def matches(self, summary: ExecutionSummary) -> bool:
        """Everything but `search`, whose text (the stack) a summary does not carry."""
        checks = (
            self.outcome is None or summary.outcome == self.outcome,
            self.status is None or summary.status == self.status,
            self.status_range is None
            or self.status_range[0] <= summary.status < self.status_range[1],
            self.path is None or self.path in summary.path,
            self.method is None or summary.method.upper() == self.method,
            self.since is None or summary.started_at >= self.since,
            self.until is None or summary.started_at < self.until,
            self.mode is None or summary.mode == self.mode,
        )
        return all(checks)


def parse_status(value: str) -> dict[str, object]:
    """`ok`/`error` -> outcome, `404` -> status, `5xx` -> status_class."""
    text = value.strip().lower()
    if text in (Outcome.OK.value, Outcome.ERROR.value):
        return {"outcome": Outcome(text)}
    if text.isdigit() and 100 <= int(text) <= 599:
        return {"status": int(text)}
    if STATUS_CLASS.match(text):
        return {"status_class": text}
    raise FilterError(f"--status takes ok, error, a code such as 404 or a class such as 5xx, "
                      f"not {value!r}")


def parse_time(value: str, now: float | None = None) -> float:
    """`30s`, `10m`, `2h`, `1d` (that long ago) or an ISO-8601 timestamp -> epoch seconds."""
    text = value.strip()
    match = DURATION.match(text)
    if match:
        amount, unit = match.groups()
        return (time.time() if now is None else now) - float(amount) * SECONDS_PER_UNIT[unit]
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"expected a duration such as 10m, 2h, 1d or an ISO-8601 time, "
                          f"not {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_duration(value: str) -> float:
    """`7d`, `12h`, ... -> seconds (for `--retention`)."""
    match = DURATION.match(value.strip())
    if not match:
        raise FilterError(f"expected a duration such as 7d, 12h or 30m, not {value!r}")
    amount, unit = match.groups()
    return float(amount) * SECONDS_PER_UNIT[unit]
