"""Response comparison for replay reports: headers without noise, bodies structurally."""

from flux_runtime.report import compare_headers, compare_json, compare_responses
from flux_server.records import Execution


def execution(status: int, body: bytes, headers: list[tuple[str, str]]) -> Execution:
    return Execution(id="e", started_at=0.0, duration=0.0, method="GET", path="/", status=status,
                     response_body=body, response_headers=headers)


def test_headers_ignore_date_and_flux_headers() -> None:
    a = [("Date", "Mon"), ("x-flux-execution-id", "1"), ("content-type", "application/json")]
    b = [("date", "Tue"), ("x-flux-execution-id", "2"), ("Content-Type", "text/plain")]
    diffs = compare_headers(a, b)
    assert [(d.where, d.expected, d.actual) for d in diffs] == [
        ("header content-type", "application/json", "text/plain")]


def test_json_diff_names_paths() -> None:
    diffs = compare_json({"a": 1, "b": [1, 2], "c": {"d": "x"}}, {"a": 1, "b": [1, 3, 4], "e": 0})
    assert [(d.where, d.expected, d.actual) for d in diffs] == [
        ("$.b[1]", 2, 3), ("$.b.length", 2, 3), ("$.c", {"d": "x"}, None), ("$.e", None, 0)]


def test_responses_compare_status_and_json_body() -> None:
    ct = [("content-type", "application/json")]
    same = compare_responses(execution(200, b'{"n": 1}', ct), execution(200, b'{ "n":1 }', ct))
    assert same == []
    diffs = compare_responses(execution(500, b'{"n": 1}', ct), execution(200, b'{"n": 2}', ct))
    assert [(d.where, d.expected, d.actual) for d in diffs] == [
        ("status", 500, 200), ("body.n", 1, 2)]
    assert compare_json(1, 1.0) != []
