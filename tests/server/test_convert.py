"""Records survive the protobuf round trip, and the --status/--since forms parse as documented."""

from __future__ import annotations

import pytest

from flux_server.convert import (
    batch_from_bytes,
    batch_to_proto,
    filter_from_proto,
    filter_to_proto,
    summary_from_proto,
    summary_to_proto,
)
from flux_server.filters import ExecutionFilter, FilterError, parse_duration, parse_time
from flux_server.records import ExecutionSummary, Mode, Outcome
from tests.server.factory import make_boot, make_execution, make_failed_execution, make_replay


def test_a_batch_survives_the_spool_format() -> None:
    failed = make_failed_execution()
    executions = [make_execution(), failed, make_replay(failed)]
    boots = [make_boot()]
    data = batch_to_proto(executions, boots).SerializeToString()
    assert batch_from_bytes(data) == (executions, boots)


def test_summaries_and_filters_survive_the_wire() -> None:
    summary = ExecutionSummary.of(make_replay(make_execution()))
    assert summary_from_proto(summary_to_proto(summary)) == summary
    for flt in (ExecutionFilter(), ExecutionFilter(outcome=Outcome.ERROR, status=404,
                                                   status_class="5xx", path="/a", method="get",
                                                   since=1.5, until=2.5, mode=Mode.RESUME,
                                                   search="boom")):
        assert filter_from_proto(filter_to_proto(flt)) == flt


def test_status_forms() -> None:
    assert ExecutionFilter().with_status("ok").outcome == Outcome.OK
    assert ExecutionFilter().with_status("ERROR").outcome == Outcome.ERROR
    assert ExecutionFilter().with_status("404").status == 404
    assert ExecutionFilter().with_status("5xx").status_range == (500, 600)
    for bad in ("teapot", "6xx", "42"):
        with pytest.raises(FilterError):
            ExecutionFilter().with_status(bad)


def test_time_forms() -> None:
    assert parse_time("30s", now=1000.0) == 970.0
    assert parse_time("10m", now=1000.0) == 400.0
    assert parse_time("2h", now=10_000.0) == 2800.0
    assert parse_time("1d", now=100_000.0) == 13_600.0
    assert parse_time("2026-11-25T10:00:00Z") == parse_time("2026-11-25T10:00:00+00:00")
    assert parse_time("1970-01-01T00:01:00") == 60.0
    assert parse_duration("7d") == 7 * 86400
    with pytest.raises(FilterError):
        parse_time("yesterday")
    with pytest.raises(FilterError):
        parse_duration("7")


def test_filters_from_cli_options() -> None:
    flt = ExecutionFilter.from_options(status="5xx", path="/orders", method="post",
                                       since="10m", search="deadlock", now=1000.0)
    assert flt == ExecutionFilter(status_class="5xx", path="/orders", method="POST",
                                  since=400.0, search="deadlock")
    assert ExecutionFilter.from_options() == ExecutionFilter()
    assert ExecutionFilter.from_options(status="error", mode="Replay") == ExecutionFilter(
        outcome=Outcome.ERROR, mode=Mode.REPLAY)
    for bad in ({"status": "oops"}, {"since": "soon"}, {"mode": "rewind"}):
        with pytest.raises(FilterError):
            ExecutionFilter.from_options(**bad)
