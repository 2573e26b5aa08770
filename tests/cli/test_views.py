"""flux logs / trace / why against records made by serving a real app (issue 6)."""

from __future__ import annotations

import pytest

from tests.cli.conftest import Recorded

pytestmark = pytest.mark.deno


async def test_logs_table_and_filters(recorded: Recorded) -> None:
    cli = recorded.cli
    result = await cli.run("logs")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header == ["time", "method", "path", "status", "duration", "id"]
    for execution_id in (recorded.slow, recorded.unique_violation):
        assert execution_id[:8] in result.stdout

    errors = await cli.json("logs", "--status", "error")
    assert {e["id"] for e in errors} >= {recorded.unique_violation, recorded.throw_after_update,
                                        recorded.wrongtype}
    assert all(e["outcome"] == "error" for e in errors)
    assert recorded.ok not in {e["id"] for e in errors}
    assert set(errors[0]) == {"id", "started_at", "method", "path", "status", "outcome",
                              "duration_ms", "error_message"}

    slow = await cli.json("logs", "--path", "/slow", "--since", "10m")
    assert [e["id"] for e in slow] == [recorded.slow]
    found = await cli.json("logs", "--search", "duplicate key")
    assert [e["id"] for e in found] == [recorded.unique_violation]
    created = await cli.json("logs", "--status", "201")
    assert [e["id"] for e in created] == [recorded.signup]
    assert len(await cli.json("logs", "--limit", "2")) == 2

    empty = await cli.run("logs", "--path", "/never-served")
    assert empty.returncode == 0
    assert "No executions match" in empty.stdout


async def test_trace_human_and_json(recorded: Recorded) -> None:
    cli = recorded.cli
    result = await cli.run("trace", recorded.throw_after_update[:8])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "GET /visit?email=ada@example.com" in out and "500" in out
    assert "UPDATE cli_users SET visits = visits + 1 WHERE email = $1" in out
    assert "UPDATE 1" in out and "SELECT 0" in out
    assert "TypeError" in out and "app.ts" in out

    doc = await cli.json("trace", recorded.signup)
    assert doc["id"] == recorded.signup and doc["status"] == 201 and doc["outcome"] == "ok"
    assert doc["mode"] == "record" and doc["parent_id"] is None and doc["boot_id"]
    assert doc["query"] == "email=ada@example.com"
    assert [c["text"] for c in doc["console"]] == ["signing up ada@example.com"]
    insert = [x for x in doc["exchanges"] if x["request"].get("sql", "").startswith("INSERT")]
    assert len(insert) == 1
    assert insert[0]["protocol"] == "postgres" and insert[0]["lifetime"] == "request"
    assert insert[0]["request"]["params"] == ["ada@example.com"]
    assert insert[0]["response"]["command_tag"] == "INSERT 0 1"
    assert insert[0]["response"]["row_count"] == 1
    assert doc["response"]["body"] == {"id": 1}


async def test_why_unique_violation(recorded: Recorded) -> None:
    result = await recorded.cli.run("why", recorded.unique_violation)
    assert result.returncode == 0, result.stderr
    assert "failed: duplicate key value violates unique constraint" in result.stdout
    assert "SQLSTATE 23505: unique violation" in result.stdout
    assert "the app then threw" in result.stdout
    assert "ON CONFLICT" in result.stdout
    doc = await recorded.cli.json("why", recorded.unique_violation)
    assert doc["cause"]["kind"] == "postgres_error"
    assert doc["cause"]["sqlstate"] == "23505"
    assert isinstance(doc["cause"]["exchange_seq"], int)
    assert set(doc) == {"execution_id", "verdict", "cause", "evidence", "suggestion"}


async def test_why_throw_after_successful_update(recorded: Recorded) -> None:
    doc = await recorded.cli.json("why", recorded.throw_after_update)
    assert doc["cause"]["kind"] == "exception"
    assert "price" not in doc["verdict"] and "TypeError" in doc["verdict"]
    evidence = "\n".join(doc["evidence"])
    assert "thrown at" in evidence and "app.ts" in evidence
    assert "SELECT visits FROM cli_users WHERE email = $1" in evidence
    assert "SELECT 0" in evidence


async def test_why_slow_request(recorded: Recorded) -> None:
    doc = await recorded.cli.json("why", recorded.slow)
    assert doc["cause"]["kind"] == "slow"
    assert "pg_sleep" in doc["cause"]["message"]
    assert "outside IO" in doc["evidence"][-1]


async def test_why_redis_wrongtype_and_no_problem(recorded: Recorded) -> None:
    result = await recorded.cli.run("why", recorded.wrongtype)
    assert "Redis error kind: WRONGTYPE" in result.stdout
    doc = await recorded.cli.json("why", recorded.wrongtype)
    assert doc["cause"]["kind"] == "redis_error"
    assert doc["cause"]["message"].startswith("WRONGTYPE")
    ok = await recorded.cli.json("why", recorded.ok)
    assert ok["verdict"] == "no problem found" and ok["cause"]["kind"] == "none"


async def test_errors_are_one_line(recorded: Recorded) -> None:
    unknown = await recorded.cli.run("trace", "0123456789abcdef")
    assert unknown.returncode == 1
    assert unknown.stderr.count("\n") == 1 and "Traceback" not in unknown.stderr
    short = await recorded.cli.run("why", "abc")
    assert short.returncode == 1 and "Traceback" not in short.stderr
    down = await recorded.cli.run("logs", "--server", "127.0.0.1:9")
    assert down.returncode == 1
    assert down.stderr.count("\n") == 1 and "flux server" in down.stderr


async def test_trace_stays_readable_with_200_exchanges(recorded: Recorded) -> None:
    doc = await recorded.cli.json("trace", recorded.many)
    assert len([x for x in doc["exchanges"] if x["lifetime"] == "request"]) == 200
    short = await recorded.cli.run("trace", recorded.many)
    assert short.returncode == 0, short.stderr
    assert "SELECT $1::int AS n" in short.stdout and "× 200" in short.stdout
    assert len(short.stdout.splitlines()) < 40
    full = await recorded.cli.run("trace", recorded.many, "--verbose")
    assert full.stdout.count("SELECT $1::int AS n") == 200


async def test_ambiguous_prefix_lists_the_candidates(recorded: Recorded) -> None:
    import dataclasses

    from flux_server.client import FluxClient

    async with FluxClient(recorded.cli.server) as client:
        real = await client.get(recorded.ok)
        twins = [dataclasses.replace(real, id=f"abcdef12-0000-4000-8000-00000000000{n}",
                                     exchanges=[]) for n in (1, 2)]
        await client.record_batch(twins)
    result = await recorded.cli.run("trace", "abcdef12")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    for twin in twins:
        assert twin.id in result.stderr
    unique = await recorded.cli.run("trace", "abcdef12-0000-4000-8000-000000000001", "--json")
    assert unique.returncode == 0
