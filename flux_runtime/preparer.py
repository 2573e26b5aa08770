"""Finished executions become store rows in a helper process, not on the serving loop.

Decoding each exchange's frames into its semantic request and response, and building the rows
around them, cost the serving process about 265 µs of CPU per request on a 2-core machine
(a Postgres and a Redis exchange each): a quarter of all it spent per request, on the one
thread that also relays every byte. The helper does it on the other core. The serving process
only flattens each execution as it was recorded (raw frames, and the session state their
decode needs), and gets the rows back, one batch per flush.

If the helper cannot be used (it died, it was never started), the rows are made here, as
before: a record is never lost to the helper.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from flux_proxy.model import Exchange, Lifetime, Protocol, Source
from flux_proxy.pg.exchange import PgExchange, rebuild_pg_exchange, recorded_client, recorded_server
from flux_proxy.pg.semantic import StatementInfo
from flux_proxy.resp.exchange import RedisExchange
from flux_runtime.shipper import Batch
from flux_server.records import (
    ConsoleLine,
    DeterminismEntry,
    ErrorInfo,
    Execution,
    ExecutionSummary,
    Mode,
    Outcome,
)
from flux_server.store.rows import PreparedExecution, prepare_execution

log = logging.getLogger("flux.preparer")


def _helper_setup(parent: int) -> None:
    """Ctrl-C reaches the whole process group, but `flux serve` shuts down in order and closes
    the helper itself, after the last batch; if `flux serve` is killed instead, the helper
    leaves on its own rather than linger as an orphan."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="flux-parent-watch", daemon=True).start()


# ------------------------------------------------------------------ the executions' wire form
#
# pickle spent about 50 µs per execution here, most of it naming classes and enum members; an
# execution flattened to tuples of plain values and written by `marshal` costs a fraction of
# that. What marshal cannot write (an unusual determinism value) goes by pickle, the same tuple.

MARSHALLED, PICKLED = b"M", b"P"


def pack(execution: Execution) -> bytes:
    """An execution as recorded, for the helper (the shipper calls it as each request ends)."""
    e = execution
    error = e.error
    flat = (
        e.id, e.started_at, e.duration, e.method, e.path, e.query, e.request_headers,
        e.request_body, e.request_truncated, e.status, e.response_headers, e.response_body,
        e.response_truncated, None if error is None else (error.name, error.message, error.stack),
        [(c.seq, c.offset, c.level, c.text) for c in e.console],
        [_flat_exchange(x) for x in e.exchanges],
        [(d.kind, d.value) for d in e.determinism],
        e.parent_id, e.mode.value, e.app_path, e.code_version, e.flux_version, e.deno_version,
        e.worker_id, e.boot_id, e.upstreams, e.replay_outcome)
    try:
        return MARSHALLED + marshal.dumps(flat)
    except ValueError:  # a value marshal cannot write: the same tuple, by pickle
        return PICKLED + pickle.dumps(flat, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(blob: bytes) -> Execution:
    flat = pickle.loads(blob[1:]) if blob[:1] == PICKLED else marshal.loads(blob[1:])
    (id_, started_at, duration, method, path, query, request_headers, request_body,
     request_truncated, status, response_headers, response_body, response_truncated, error,
     console, exchanges, determinism, parent_id, mode, app_path, code_version, flux_version,
     deno_version, worker_id, boot_id, upstreams, replay_outcome) = flat
    return Execution(
        id=id_, started_at=started_at, duration=duration, method=method, path=path,
        query=query, request_headers=[tuple(h) for h in request_headers],
        request_body=request_body, request_truncated=request_truncated, status=status,
        response_headers=[tuple(h) for h in response_headers], response_body=response_body,
        response_truncated=response_truncated,
        error=None if error is None else ErrorInfo(*error),
        console=[ConsoleLine(*c) for c in console],
        exchanges=[_exchange(x) for x in exchanges],
        determinism=[DeterminismEntry(*d) for d in determinism], parent_id=parent_id,
        mode=Mode(mode), app_path=app_path, code_version=code_version,
        flux_version=flux_version, deno_version=deno_version, worker_id=worker_id,
        boot_id=boot_id, upstreams=upstreams, replay_outcome=replay_outcome)


def _source(x: Exchange) -> str | None:
    return None if x.source is None else x.source.value


def _flat_exchange(x: Exchange) -> tuple[Any, ...]:
    """Undecoded Postgres and Redis exchanges travel as recorded, to be decoded in the helper;
    anything else with its semantic fields."""
    if type(x) is PgExchange and x.undecoded:
        st = x.statement
        return ("pg", x.connection, x.seq, x.kind, x.request_id, x.started_at, x.lifetime.value,
                x.duration, recorded_client(x), recorded_server(x), _source(x), x.failed,
                None if st is None else (st.name, st.parse, st.param_description,
                                         st.row_description),
                x.bind, x.broken)
    if type(x) is RedisExchange and x.undecoded:
        return ("redis", x.connection, x.seq, x.lifetime.value, x.request_id, x.started_at,
                x.duration, x.client_frames, x.server_frames, x.failed, _source(x))
    return ("decoded", x.protocol.value, x.connection, x.seq, x.lifetime.value, x.request_id,
            x.started_at, x.duration, list(x.client_frames), list(x.server_frames), x.request,
            x.response, _source(x), x.failed)


def _exchange(flat: tuple[Any, ...]) -> Exchange:
    form = flat[0]
    if form == "pg":
        (_, connection, seq, kind, request_id, started_at, lifetime, duration, client, server,
         source, failed, statement, bind, broken) = flat
        return rebuild_pg_exchange(
            connection, seq, kind, request_id, started_at, Lifetime(lifetime), duration,
            client, server, None if source is None else Source(source), failed,
            None if statement is None else StatementInfo(*statement), bind, broken)
    if form == "redis":
        (_, connection, seq, lifetime, request_id, started_at, duration, client, server,
         failed, source) = flat
        x = RedisExchange(connection, seq, Lifetime(lifetime), request_id, started_at,
                          duration, client, server, failed)
        x.source = None if source is None else Source(source)
        return x
    (_, protocol, connection, seq, lifetime, request_id, started_at, duration, client, server,
     request, response, source, failed) = flat
    return Exchange(protocol=Protocol(protocol), connection=connection, seq=seq,
                    lifetime=Lifetime(lifetime), request_id=request_id, started_at=started_at,
                    duration=duration, client_frames=client, server_frames=server,
                    request=request, response=response,
                    source=None if source is None else Source(source), failed=failed)


# ------------------------------------------------------------------ rows, and their way back


def _prepare_all(blobs: list[bytes]) -> bytes:
    """In the helper: rows for each execution, marshalled back as one value."""
    out = []
    for blob in blobs:
        p = prepare_execution(unpack(blob))
        s = p.summary
        out.append((p.id, p.started_at, p.row, p.exchanges, p.console,
                    (s.id, s.started_at, s.duration, s.method, s.path, s.status,
                     s.outcome.value, s.error_message, s.mode.value, s.parent_id,
                     s.replay_outcome)))
    return marshal.dumps(out)


def _prepared(data: bytes) -> list[PreparedExecution]:
    out = []
    for id_, started_at, row, exchanges, console, summary in marshal.loads(data):
        (sid, s_started, s_duration, method, path, status, outcome, error_message, mode,
         parent_id, replay_outcome) = summary
        out.append(PreparedExecution(
            id=id_, started_at=started_at, row=row, exchanges=exchanges, console=console,
            summary=ExecutionSummary(sid, s_started, s_duration, method, path, status,
                                     Outcome(outcome), error_message, Mode(mode), parent_id,
                                     replay_outcome)))
    return out


class RecordPreparer:
    """One helper process (spawned, so it shares no threads or sockets with the server)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self.in_process = 0  # batches prepared here because the helper was not usable

    def start(self) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, initializer=_helper_setup,
                                         initargs=(os.getpid(),),
                                         mp_context=multiprocessing.get_context("spawn"))
        self._pool.submit(int)  # start the process now, not at the first flush

    async def prepare(self, batch: Batch) -> list[PreparedExecution]:
        pool = self._pool
        if pool is not None:
            blobs = batch.prepared_executions(pack)
            try:
                data = await asyncio.get_running_loop().run_in_executor(pool, _prepare_all,
                                                                        blobs)
                return _prepared(data)
            except BrokenProcessPool as exc:
                log.warning("flux: the record helper process stopped (%s); records are "
                            "prepared in the serving process from now on", exc)
                self._pool = None
        self.in_process += 1
        return [prepare_execution(e) for e in batch.executions]

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown)
