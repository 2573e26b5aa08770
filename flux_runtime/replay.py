"""`flux replay`: re-run one recorded request with the current code against its recorded IO.

One worker, replay-mode proxies with no upstream at all, Deno's permissions limited to those
proxies and read/env, the recorded time and randomness fed back in order.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flux_proxy.listener import ProxyListener
from flux_proxy.matcher import MatchKind
from flux_proxy.model import Source
from flux_proxy.replay import ReplayBook
from flux_proxy.urls import proxy_url, upstream_kind
from flux_runtime.pool import PoolHooks, WorkerPool
from flux_runtime.relay import EXECUTION_HEADER
from flux_runtime.report import IoEntry, ReplayReport
from flux_runtime.worker import WorkerSlotSettings
from flux_server.client import FluxClient, NotFound
from flux_server.records import BootRecord, Execution, Mode

HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection",
                         EXECUTION_HEADER})


SANDBOX_ERRORS = frozenset({"NotCapable", "PermissionDenied"})


class ReplayError(Exception):
    """A reason the replay cannot run, as one line."""


def make_replay_proxy(upstream: str, book: ReplayBook, upstream_var: str) -> ProxyListener:
    if upstream_kind(upstream) == "pg":
        from flux_proxy.pg.replay import PgReplayProxy

        return PgReplayProxy(book, upstream_var)
    from flux_proxy.resp.replay import RedisReplayProxy

    return RedisReplayProxy(book, upstream_var)


@dataclass
class Recording:
    execution: Execution
    boot: BootRecord | None


async def fetch_recording(client: FluxClient, execution_id: str) -> Recording:
    execution = await client.get(execution_id)
    boot = None
    if execution.boot_id:
        try:
            boot = await client.get_boot(execution.boot_id)
        except NotFound:
            boot = None  # a worker's start-up IO may be gone (retention); replay still runs
    return Recording(execution, boot)


def resolve_app(recorded: str, override: str | None) -> Path:
    app = Path(override or recorded).expanduser().absolute()
    if not app.is_file():
        hint = "" if override else " (pass --app to run another file)"
        raise ReplayError(f"app file not found: {app}{hint}")
    return app


async def replay(recording: Recording, app: str | None = None) -> ReplayReport:
    original = recording.execution
    app_path = resolve_app(original.app_path, app)
    own = [x for x in original.exchanges if x.request_id in (None, original.id)]
    book = ReplayBook(own, recording.boot.exchanges if recording.boot else [])
    replayed = await rerun(original, app_path, book, Mode.REPLAY,
                           lambda var, url: make_replay_proxy(url, book, var))
    return build_report(original, replayed, book, Mode.REPLAY)


async def rerun(original: Execution, app_path: Path, book: ReplayBook, mode: Mode,
                proxy_for: Callable[[str, str], ProxyListener]) -> Execution:
    """Send the recorded request once to one fresh worker of the app, whose upstream
    variables point at the proxies `proxy_for(var, recorded_url)` makes; its execution.

    In replay the worker may reach nothing but those proxies."""
    proxies: dict[str, ProxyListener] = {}
    pool: WorkerPool | None = None
    try:
        for var, url in original.upstreams.items():
            proxies[var] = proxy_for(var, url)
            await proxies[var].start()
        env = {var: proxy_url(original.upstreams[var], "127.0.0.1", p.port)
               for var, p in proxies.items()}
        reachable = [f"127.0.0.1:{p.port}" for p in proxies.values()]

        def tag(_worker: Any, execution_id: str | None = None, *_: Any) -> None:
            book.request_id = execution_id
            for proxy in proxies.values():
                proxy.set_current_request(execution_id)

        pool = WorkerPool(app_path, workers=1, mode=mode, echo_output=False,
                          worker_settings=lambda _i: WorkerSlotSettings(env=env,
                                                                        net_allow=reachable),
                          hooks=PoolHooks(before_dispatch=tag,
                                          after_completion=lambda w, _e: tag(w, None)))
        await pool.start()
        target = original.path + (f"?{original.query}" if original.query else "")
        headers = [(k, v) for k, v in original.request_headers if k.lower() not in HOP_HEADERS]
        result = await pool.execute(original.method, target, headers=headers,
                                    body=original.request_body, execution_id=str(uuid.uuid4()),
                                    determinism=original.determinism)
    finally:
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.stop()
        for proxy in proxies.values():
            with contextlib.suppress(Exception):
                await proxy.close()
    return result.execution


def build_report(original: Execution, replayed: Execution, book: ReplayBook,
                 mode: Mode) -> ReplayReport:
    replayed.mode = mode
    replayed.parent_id = original.id
    # A replay's start-up was answered from the original's boot record; a resume's ran live
    # and was not recorded. Either way no boot record of the new worker exists.
    replayed.boot_id = original.boot_id if mode is Mode.REPLAY else None
    replayed.upstreams = dict(original.upstreams)
    report = ReplayReport(original=original, replayed=replayed)
    for entry in book.replayed:
        if not entry.during_request:
            continue
        entry.exchange.source = (Source.LIVE if entry.source == "live"
                                 else Source.RECORDED if entry.source == "recorded" else None)
        report.io.append(IoEntry(entry.exchange, entry.source,
                                 diverged=entry.match.kind is MatchKind.DIVERGED))
        report.divergences += entry.match.divergences
    stopped = book.stopped_at
    if stopped is not None:
        report.stopped_at = stopped.exchange.to_json(replayed.started_at)
    report.unused = book.unused()
    if replayed.error is not None and replayed.error.name in SANDBOX_ERRORS:
        report.notes.append(f"the sandbox denied the app: {replayed.error.message}")
    replayed.exchanges = [entry.exchange for entry in report.io]
    replayed.replay_outcome = report.outcome.value
    return report
