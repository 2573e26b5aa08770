"""Every fixture app under the pool and the front, checked field by field."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from tests.runtime.conftest import APPS, Served, serving

BODY_CAP = 64 * 1024


@pytest.fixture(scope="module", params=sorted(APPS))
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    async with serving(APPS[request.param], workers=2, body_cap=BODY_CAP) as running:
        yield running


def header(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


async def test_hello_is_recorded_field_by_field(served: Served) -> None:
    async with served.client.get(served.front.url + "/hello?name=ada",
                                 headers={"x-test": "1"}) as response:
        body = await response.read()
        status = response.status
        execution_id = response.headers["x-flux-execution-id"]
        client_headers = list(response.headers.items())
    assert status == 200
    assert uuid.UUID(execution_id).version == 4
    payload = json.loads(body)
    assert payload["hello"] == "ada"
    assert "Server" not in dict(client_headers)  # the front adds nothing but its id
    execution = await served.record(execution_id)

    assert (execution.method, execution.path, execution.query) == ("GET", "/hello", "name=ada")
    assert header(execution.request_headers, "x-test") == ["1"]
    assert header(execution.request_headers, "x-flux-execution-id") == []
    assert execution.request_body == b""
    assert execution.status == 200
    assert execution.response_body == body
    assert not execution.response_truncated
    assert header(execution.response_headers, "x-flux-execution-id") == [execution_id]
    assert header(execution.response_headers, "x-app") == [payload["framework"]]
    assert execution.error is None
    assert execution.outcome.value == "ok"
    assert execution.worker_id in {"w0", "w1"}
    assert execution.boot_id
    assert execution.duration > 0
    assert execution.deno_version.startswith("2.")
    assert execution.app_path.endswith(".ts")

    assert [(line.seq, line.level, line.text) for line in execution.console] == [
        (0, "log", "hello ada"),
        (1, "info", 'info { name: "ada" }'),
        (2, "warn", "warn ada"),
        (3, "debug", "debug 42"),
    ]
    offsets = [line.offset for line in execution.console]
    assert offsets == sorted(offsets) and offsets[0] >= 0

    kinds = [entry.kind for entry in execution.determinism]
    assert kinds == ["random_uuid", "date_now", "math_random"]
    uuid_value, now_ms, random_value = (entry.value for entry in execution.determinism)
    assert uuid_value == payload["id"]
    at = datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="milliseconds")
    assert at.replace("+00:00", "Z") == payload["at"]
    assert random_value == payload["lucky"]

    # the lead's hooks: before dispatch, after completion (worker still busy), then the record
    events = [event for event in served.events if execution_id in str(event[1])]
    assert [name for name, _ in events] == ["before", "after", "execution"]
    assert events[0][1] == (execution.worker_id, execution_id)


async def test_request_body_reaches_the_app_without_the_flux_header(served: Served) -> None:
    document = json.dumps({"items": list(range(20))}).encode()
    async with served.client.post(served.front.url + "/echo", data=document,
                                  headers={"content-type": "application/json"}) as response:
        assert response.status == 201
        assert await response.read() == document
        assert response.headers["x-saw-flux-header"] == "false"
        execution = await served.execution(response)
    assert execution.method == "POST"
    assert execution.request_body == document and not execution.request_truncated
    assert execution.response_body == document
    assert execution.status == 201
    expected_console = [("log", f"echo {len(document)} bytes")]
    assert [(c.level, c.text) for c in execution.console] == expected_console
    assert execution.to_json()["request"]["body"] == {"items": list(range(20))}


async def test_thrown_error_is_a_500_with_its_stack(served: Served) -> None:
    async with served.client.get(served.front.url + "/throw") as response:
        assert response.status == 500
        execution = await served.execution(response)
    assert execution.status == 500
    assert execution.outcome.value == "error"
    assert execution.error is not None
    assert (execution.error.name, execution.error.message) == ("TypeError", "kaboom")
    assert execution.error.stack.startswith("TypeError: kaboom\n")
    assert "behaviour.ts" in execution.error.stack
    assert "shim.ts" not in execution.error.stack
    assert ("warn", "about to throw") in [(c.level, c.text) for c in execution.console]


async def test_error_logged_with_console_error_is_the_request_error(served: Served) -> None:
    async with served.client.get(served.front.url + "/logged-error") as response:
        assert response.status == 200
        assert json.loads(await response.read()) == {"ok": True}
        execution = await served.execution(response)
    assert execution.outcome.value == "error"
    assert execution.error is not None
    assert (execution.error.name, execution.error.message) == ("RangeError", "logged failure")
    assert "behaviour.ts" in execution.error.stack
    errors = [c.text for c in execution.console if c.level == "error"]
    assert len(errors) == 1 and errors[0].startswith("RangeError: logged failure\n")


async def test_every_clock_and_entropy_source_is_recorded_in_order(served: Served) -> None:
    async with served.client.get(served.front.url + "/entropy") as response:
        payload = json.loads(await response.read())
        execution = await served.execution(response)
    assert [(e.kind, e.value) for e in execution.determinism] == [
        ("get_random_values", base64.b64encode(bytes(payload["bytes"])).decode()),
        ("date_now", payload["now"]),
        ("performance_now", payload["perf"]),
        ("date_now", payload["date"]),
        ("random_uuid", payload["uuid"]),
        ("math_random", payload["random"]),
    ]


async def test_bodies_stream_whole_but_are_recorded_up_to_the_cap(served: Served) -> None:
    async with served.client.get(served.front.url + "/big?kb=200") as response:
        body = await response.read()
        execution = await served.execution(response)
    assert body == b"x" * 200 * 1024
    assert execution.response_truncated
    assert execution.response_body == b"x" * BODY_CAP

    upload = bytes(range(256)) * 1024  # 256 KiB, not UTF-8
    async with served.client.post(served.front.url + "/echo", data=upload,
                                  headers={"content-type": "application/octet-stream"}) as response:
        echoed = await response.read()
        execution = await served.execution(response)
    assert response.status == 201
    assert execution.request_truncated and execution.request_body == upload[:BODY_CAP]
    assert len(echoed) > BODY_CAP  # text decoding in the app changes bytes; length is enough
    assert execution.response_truncated
