"""Executions travel to the record helper as recorded, and come back as the rows the serving
process would have made itself."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from flux_proxy.model import Lifetime
from flux_proxy.pg.exchange import PgExchange, rebuild_pg_exchange
from flux_proxy.pg.semantic import StatementInfo
from flux_proxy.resp.exchange import new_exchange
from flux_runtime.preparer import PICKLED, RecordPreparer, pack, unpack
from flux_runtime.shipper import Batch
from flux_server.records import DeterminismEntry, Execution
from flux_server.store.rows import prepare_execution
from tests.server.factory import make_execution, make_failed_execution, make_replay


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def pg_exchange(named: bool) -> PgExchange:
    """`SELECT $1::int AS n` with 42, as node-postgres sends it: unnamed (Parse each time), or
    a named statement prepared earlier (its SQL only in the session's StatementInfo)."""
    name = b"s1" if named else b""
    parse = message(b"P", name + b"\0SELECT $1::int AS n\0" + struct.pack("!h", 0))
    bind = message(b"B", b"\0" + name + b"\0" + struct.pack("!hhi", 0, 1, 2) + b"42"
                   + struct.pack("!h", 0))
    tail = [message(b"D", b"P\0"), message(b"E", b"\0" + struct.pack("!i", 0)),
            message(b"S", b"")]
    client = [bind, *tail] if named else [parse, bind, *tail]
    row_description = message(b"T", struct.pack("!h", 1) + b"n\0"
                              + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0))
    server = [message(b"2", b""), row_description,
              message(b"D", struct.pack("!hi", 1, 2) + b"42"), message(b"C", b"SELECT 1\0"),
              message(b"Z", b"I")]
    if not named:
        server.insert(0, message(b"1", b""))
    statement = StatementInfo(name=name, parse=parse) if named else None
    return rebuild_pg_exchange(3, 7, "extended", "req", time.time(), Lifetime.REQUEST, 0.002,
                               b"".join(client), server, None, False, statement, None, None)


def live_execution() -> Execution:
    """An execution whose exchanges are as the proxies leave them: not decoded yet."""
    redis = new_exchange(1, 2, Lifetime.REQUEST, "req", time.time(), 0.001,
                         [b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"], [b"$5\r\nhello\r\n"], False)
    return make_execution(exchanges=[pg_exchange(False), pg_exchange(True), redis])


def test_recorded_executions_make_the_same_rows_after_the_trip() -> None:
    failed = make_failed_execution()
    for execution in (make_execution(), failed, make_replay(failed), live_execution()):
        travelled = unpack(pack(execution))  # before anything here decodes the original
        assert travelled == execution
        assert prepare_execution(travelled) == prepare_execution(execution)
        # an exchange decoded before it leaves travels with its semantic fields instead
        assert prepare_execution(unpack(pack(execution))) == prepare_execution(execution)


def test_the_serving_process_never_decodes_what_it_sends() -> None:
    execution = live_execution()
    blob = pack(execution)
    pg_unnamed, pg_named, redis = execution.exchanges
    assert pg_unnamed.undecoded and pg_named.undecoded and redis.undecoded
    travelled = unpack(blob)
    assert travelled.exchanges[1].request["sql"] == "SELECT $1::int AS n"  # from the session
    assert travelled.exchanges[1].request["params"] == ["42"]
    assert travelled.exchanges[2].response == {"value": "hello", "error": None}
    assert [x.request for x in travelled.exchanges] == [x.request for x in execution.exchanges]


def test_a_value_marshal_cannot_write_goes_by_pickle_still_undecoded() -> None:
    execution = live_execution()
    execution.determinism = [DeterminismEntry("math_random", Decimal("0.5"))]
    blob = pack(execution)
    assert blob[:1] == PICKLED
    assert all(x.undecoded for x in execution.exchanges)  # flattened as recorded
    travelled = unpack(blob)
    assert all(x.undecoded for x in travelled.exchanges)
    assert travelled == execution


async def test_the_helper_prepares_and_a_dead_helper_costs_no_record() -> None:
    preparer = RecordPreparer()
    preparer.start()
    try:
        executions = [live_execution(), make_failed_execution()]
        prepared = await preparer.prepare(Batch(executions=executions))
        assert preparer.in_process == 0
        assert prepared == [prepare_execution(e) for e in executions]  # made here, now
        pool = preparer._pool
        assert pool is not None
        for pid in list(pool._processes):  # type: ignore[union-attr]
            os.kill(pid, signal.SIGKILL)
        again = await preparer.prepare(Batch(executions=executions))
        assert preparer.in_process == 1
        assert [p.row for p in again] == [p.row for p in prepared]
    finally:
        await preparer.close()


async def test_the_helper_leaves_when_flux_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "helper.pid"
    script = (
        "import asyncio, pathlib, sys, time\n"
        "from flux_runtime.preparer import RecordPreparer\n"
        "from flux_runtime.shipper import Batch\n"
        "async def main():\n"
        "    p = RecordPreparer(); p.start()\n"
        "    await p.prepare(Batch())\n"
        "    pathlib.Path(sys.argv[1]).write_text(str(next(iter(p._pool._processes))))\n"
        "    time.sleep(60)\n"
        "asyncio.run(main())\n")
    parent = subprocess.Popen([sys.executable, "-c", script, str(pid_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with asyncio.timeout(30):
            while not pid_file.exists() or not pid_file.read_text():
                await asyncio.sleep(0.1)
        helper = int(pid_file.read_text())
        os.kill(helper, 0)  # alive
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(helper, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.1)
    os.kill(helper, signal.SIGKILL)
    raise AssertionError("the helper outlived flux by 10 s")
