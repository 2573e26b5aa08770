"""Real drivers through the record proxy; the recorded exchanges are checked field by field."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import psycopg
import pytest

from flux_proxy.model import Exchange, Lifetime, Protocol
from tests.pg.conftest import Recorder

INT4, INT8, TEXT, BOOL, FLOAT8, UUID = 23, 20, 25, 16, 701, 2950


def requests(exchanges: list[Exchange]) -> list[Exchange]:
    return [e for e in exchanges if e.lifetime is Lifetime.REQUEST]


def connection_of(recorder: Recorder, request_id: str) -> int:
    return next(e.connection for e in recorder.exchanges if e.request_id == request_id)


async def test_asyncpg_binary_params_and_rows(recorder: Recorder) -> None:
    conn = await asyncpg.connect(recorder.url(), ssl=False)
    try:
        recorder.proxy.set_current_request("req-binary")
        tag = uuid.uuid4()
        [row] = await conn.fetch(
            "SELECT $1::int4 AS n, $2::text AS t, $3::bool AS b, $4::float8 AS f,"
            " $5::uuid AS u, $6::int8 AS big, NULL::text AS nothing", 7, "x", True, 1.5, tag,
            2**40)
        assert row["n"] == 7 and row["u"] == tag
        recorder.proxy.set_current_request(None)
    finally:
        await conn.close()
    await recorder.settle()
    mine = [e for e in recorder.exchanges if e.request_id == "req-binary"]
    prepare, execute = mine
    assert prepare.lifetime is Lifetime.CONNECTION
    assert [f[0:1] for f in prepare.client_frames][:2] == [b"P", b"D"]
    assert prepare.request["param_oids"] == [INT4, TEXT, BOOL, FLOAT8, UUID, INT8]
    assert [c["name"] for c in prepare.response["columns"]] == [
        "n", "t", "b", "f", "u", "big", "nothing"]
    assert execute.lifetime is Lifetime.REQUEST and execute.protocol is Protocol.POSTGRES
    assert execute.seq == prepare.seq + 1 and not execute.failed
    assert execute.request["sql"].startswith("SELECT $1::int4 AS n")
    assert execute.request["params"] == [7, "x", True, 1.5, str(tag), 2**40]
    assert execute.request["param_formats"] == [1] * 6
    assert execute.request["statement"] == prepare.request["statement"]
    assert execute.response["columns"] == [
        {"name": name, "type_oid": oid, "format": 1} for name, oid in [
            ("n", INT4), ("t", TEXT), ("b", BOOL), ("f", FLOAT8), ("u", UUID), ("big", INT8),
            ("nothing", TEXT)]]
    assert execute.response["rows"] == [[7, "x", True, 1.5, str(tag), 2**40, None]]
    assert execute.response["command_tag"] == "SELECT 1" and execute.response["row_count"] == 1
    assert execute.response["error"] is None and execute.response["tx_status"] == "I"
    assert execute.duration >= 0 and execute.started_at >= prepare.started_at


async def test_asyncpg_named_statements_transactions_and_copy(recorder: Recorder) -> None:
    conn = await asyncpg.connect(recorder.url(), ssl=False)
    try:
        await conn.execute("DROP TABLE IF EXISTS proxied; CREATE TABLE proxied (id int, v text)")
        recorder.proxy.set_current_request("req-tx")
        stmt = await conn.prepare("SELECT $1::int4 * 2")
        assert await stmt.fetchval(21) == 42
        assert await stmt.fetchval(50) == 100
        async with conn.transaction():
            await conn.execute("INSERT INTO proxied VALUES (1, 'one')")
            await conn.copy_records_to_table("proxied", records=[(2, "two"), (3, "three")])
        assert await conn.fetchval("SELECT count(*) FROM proxied") == 3
        chunks: list[bytes] = []

        async def collect(chunk: bytes) -> None:
            chunks.append(chunk)

        await conn.copy_from_query("SELECT id, v FROM proxied ORDER BY id", output=collect)
        assert b"".join(chunks) == b"1\tone\n2\ttwo\n3\tthree\n"
        recorder.proxy.set_current_request(None)
    finally:
        await conn.close()
    await recorder.settle()
    mine = [e for e in recorder.exchanges if e.request_id == "req-tx"]
    reqs = requests(mine)
    doubled = [e for e in reqs if e.request["sql"] == "SELECT $1::int4 * 2"]
    assert [e.request["params"] for e in doubled] == [[21], [50]]
    assert [e.response["rows"] for e in doubled] == [[[42]], [[100]]]
    assert all(e.request["statement"].startswith("__asyncpg_stmt") for e in doubled)
    assert b"P" not in {f[0:1] for f in doubled[1].client_frames}  # named: no re-Parse
    sqls = [e.request["sql"] for e in reqs]
    begin = sqls.index("BEGIN;")
    assert reqs[begin].response["tx_status"] == "T"
    assert reqs[begin + 1].request["sql"] == "INSERT INTO proxied VALUES (1, 'one')"
    assert reqs[begin + 1].request["simple"] is True
    copy = next(e for e in reqs if e.request["sql"] and e.request["sql"].startswith("COPY"))
    assert copy.response["command_tag"] == "COPY 2" and copy.response["row_count"] == 2
    assert sum(1 for f in copy.client_frames if f[0:1] == b"d") >= 1
    assert copy.client_frames[-1][0:1] in (b"c", b"S")
    copy_out = next(e for e in reqs if e.request["sql"].startswith("COPY (SELECT id, v"))
    assert copy_out.response["command_tag"] == "COPY 3"
    assert copy_out.response["copy"] == {"direction": "out", "format": 0,
                                         "column_formats": [0, 0]}
    assert copy_out.response["rows"] == ["1\tone\n", "2\ttwo\n", "3\tthree\n"]
    commit = next(e for e in reqs if e.request["sql"] == "COMMIT;")
    assert commit.response["tx_status"] == "I" and commit.response["command_tag"] == "COMMIT"
    seqs = [e.seq for e in recorder.exchanges if e.connection == mine[0].connection]
    assert seqs == sorted(seqs) and seqs[0] == 0 and len(set(seqs)) == len(seqs)


async def test_asyncpg_type_introspection_is_connection_lifetime(recorder: Recorder) -> None:
    conn = await asyncpg.connect(recorder.url(), ssl=False)
    try:
        await conn.execute("DROP TYPE IF EXISTS mood; CREATE TYPE mood AS ENUM ('sad', 'ok')")
        recorder.proxy.set_current_request("req-enum")
        assert await conn.fetchval("SELECT 'ok'::mood") == "ok"
    finally:
        await conn.close()
    await recorder.settle()
    mine = [e for e in recorder.exchanges if e.request_id == "req-enum"]
    introspection = [e for e in mine if "pg_catalog" in (e.request.get("sql") or "")
                     and any(f[0:1] == b"E" for f in e.client_frames)]
    assert introspection and all(e.lifetime is Lifetime.CONNECTION for e in introspection)
    # asyncpg turns jit off around its introspection with set_config(): those are not
    # catalog reads, so they stay REQUEST lifetime.
    *jit, query = requests(mine)
    assert all("set_config('jit'" in e.request["sql"] for e in jit)
    assert query.request["sql"] == "SELECT 'ok'::mood"
    # A binary enum value has a custom OID the proxy cannot know: kept as base64.
    assert query.response["rows"] == [[{"base64": "b2s="}]]


async def test_asyncpg_errors_and_cancel(recorder: Recorder) -> None:
    conn = await asyncpg.connect(recorder.url(), ssl=False)
    try:
        recorder.proxy.set_current_request("req-err")
        with pytest.raises(asyncpg.UndefinedTableError):
            await conn.fetch("SELECT * FROM no_such_table WHERE id = $1", 1)
        recorder.proxy.set_current_request("req-cancel")
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("SELECT pg_sleep(20)", timeout=0.5)
        recorder.proxy.set_current_request("req-after")
        assert await conn.fetchval("SELECT 1") == 1  # the connection survived the cancel
    finally:
        await conn.close()
    await recorder.settle(lambda: any(e.request_id == "req-cancel" and e.failed
                                      for e in recorder.exchanges))
    # asyncpg prepares with Parse/Describe/Flush; the error ends that batch, and its Sync
    # after the error is an exchange of its own.
    failed, sync = [e for e in recorder.exchanges if e.request_id == "req-err"]
    assert [f[0:1] for f in failed.client_frames] == [b"P", b"D", b"H"]
    assert [f[0:1] for f in failed.server_frames] == [b"E"]
    assert [f[0:1] for f in sync.client_frames] == [b"S"] and not sync.failed
    assert failed.failed and failed.lifetime is Lifetime.CONNECTION  # failed at Parse
    assert failed.response["error"]["sqlstate"] == "42P01"
    assert failed.response["error"]["message"] == 'relation "no_such_table" does not exist'
    assert failed.response["error"]["severity"] == "ERROR"
    cancelled = [e for e in recorder.exchanges if e.request_id == "req-cancel" and e.failed]
    assert any(e.response["error"]["sqlstate"] == "57014" for e in cancelled)


async def test_psycopg_pipeline_mode(recorder: Recorder) -> None:
    async with await psycopg.AsyncConnection.connect(recorder.url(), autocommit=True) as conn:
        await conn.execute("DROP TABLE IF EXISTS piped; CREATE TABLE piped (id int, v text)")
        recorder.proxy.set_current_request("req-pipe")
        async with conn.pipeline(), conn.cursor() as cur:
            await cur.execute("INSERT INTO piped VALUES (%t, %t)", (1, "a"))
            await cur.execute("INSERT INTO piped VALUES (%b, %t)", (2, "b"))
            await cur.execute("SELECT v FROM piped WHERE id >= %t ORDER BY id", (1,))
            await cur.execute("SELECT NULL::text, %t::text", (None,))
        recorder.proxy.set_current_request("req-pipe-error")
        with pytest.raises(psycopg.errors.UndefinedTable):
            async with conn.pipeline(), conn.cursor() as cur:
                await cur.execute("SELECT 1")
                await cur.execute("SELECT * FROM missing_table")
                await cur.execute("SELECT 2")
    await recorder.settle()
    piped = requests([e for e in recorder.exchanges if e.request_id == "req-pipe"])
    assert [e.request["sql"] for e in piped] == [
        "INSERT INTO piped VALUES ($1, $2)", "INSERT INTO piped VALUES ($1, $2)",
        "SELECT v FROM piped WHERE id >= $1 ORDER BY id", "SELECT NULL::text, $1::text"]
    assert piped[0].request["params"] == ["1", "a"] and piped[0].request["param_formats"] in (
        [], [0], [0, 0])
    assert piped[1].request["params"][1] == "b" and piped[1].request["param_formats"][0] == 1
    assert piped[2].response["rows"] == [["a"], ["b"]]
    assert piped[3].request["params"] == [None] and piped[3].response["rows"] == [[None, None]]
    assert [e.response["command_tag"] for e in piped] == [
        "INSERT 0 1", "INSERT 0 1", "SELECT 2", "SELECT 1"]
    # One Sync for the whole pipeline: it (and its ReadyForQuery) closes the last exchange.
    assert all(f[0:1] != b"S" for e in piped[:-1] for f in e.client_frames)
    assert piped[-1].response["tx_status"] == "I"
    errored = requests([e for e in recorder.exchanges if e.request_id == "req-pipe-error"])
    assert [e.request["sql"] for e in errored] == ["SELECT 1", "SELECT * FROM missing_table",
                                                   "SELECT 2"]
    assert [e.failed for e in errored] == [False, True, True]
    assert errored[1].response["error"]["sqlstate"] == "42P01"
    assert errored[2].response["rows"] == [] and errored[2].response["error"] is None


async def test_session_exchange_records_what_the_client_was_sent(recorder: Recorder) -> None:
    recorder.proxy.set_current_request(None)
    conn = await asyncpg.connect(recorder.url(), ssl=False, server_settings={
        "application_name": "flux-test"})
    pid = conn.get_server_pid()
    await conn.close()
    await recorder.settle()
    session = next(e for e in recorder.exchanges
                   if e.lifetime is Lifetime.SESSION and e.request_id is None and e.seq == 0
                   and e.request.get("startup", {}).get("application_name") == "flux-test")
    assert session.request["startup"]["user"] == "postgres"
    assert session.request["protocol"] == "3.0"
    assert session.response["parameters"]["application_name"] == "flux-test"
    assert session.response["backend_pid"] == pid == session.connection  # the proxy's key
    assert session.response["tx_status"] == "I" and not session.failed
    assert session.server_frames[0][0:1] == b"R"
    assert all(b"password" not in f.lower() for f in session.client_frames)
