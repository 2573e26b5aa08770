"""`flux resume`: re-run a failed request for real, without repeating what already took effect.

Like replay, but the proxies answer only the durable prefix from the recording and go live
after it, with the real URLs (and credentials) read from the current environment under the
variable names the record kept. The worker's start-up IO runs live, as any restart would.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from flux_proxy.listener import ProxyListener
from flux_proxy.model import Exchange, ExchangeSink, Lifetime, Source
from flux_proxy.replay import ReplayBook
from flux_proxy.resume import durable_prefix
from flux_proxy.urls import redact, upstream_kind
from flux_runtime.replay import (
    Recording,
    ReplayError,
    build_report,
    rerun,
    resolve_app,
)
from flux_runtime.report import IoEntry, ReplayReport
from flux_server.records import Mode


def make_resume_proxy(upstream: str, book: ReplayBook, real_url: str,
                      sink: ExchangeSink) -> ProxyListener:
    if upstream_kind(upstream) == "pg":
        from flux_proxy.pg.resume import PgResumeProxy

        return PgResumeProxy(book, real_url, sink)
    from flux_proxy.resp.resume import RedisResumeProxy

    return RedisResumeProxy(book, real_url, sink)


def real_upstreams(recording: Recording, env: Mapping[str, str]) -> dict[str, str]:
    """The real URL of every recorded upstream, from the environment; one line if missing."""
    out: dict[str, str] = {}
    for var in recording.execution.upstreams:
        url = env.get(var)
        if not url:
            raise ReplayError(f"{var} is not set: resume needs the real URL of this upstream "
                              f"(recorded as {recording.execution.upstreams[var]})")
        if upstream_kind(url) != upstream_kind(recording.execution.upstreams[var]):
            raise ReplayError(f"{var} is {redact(url)}, not the kind of server the record used")
        out[var] = url
    return out


def describe_targets(real: Mapping[str, str]) -> list[str]:
    """What the confirmation names: host and database, never a password."""
    lines = []
    for var, url in real.items():
        parts = urlsplit(url)
        pg = upstream_kind(url) == "pg"
        where = f"{parts.hostname}:{parts.port or (5432 if pg else 6379)}"
        db = parts.path.lstrip("/") or ("(default)" if pg else "0")
        lines.append(f"{var}: {'Postgres' if pg else 'Redis'} at {where}, database {db}")
    return lines


async def resume(recording: Recording, real: Mapping[str, str],
                 app: str | None = None) -> ReplayReport:
    original = recording.execution
    app_path = resolve_app(original.app_path, app)
    own = [x for x in original.exchanges if x.request_id in (None, original.id)]
    prefix = durable_prefix(own)
    kept = [x for x in own if x.lifetime is not Lifetime.REQUEST]
    session = [x for x in (recording.boot.exchanges if recording.boot else [])
               if x.lifetime is Lifetime.SESSION]
    book = ReplayBook([*prefix, *kept, *session])
    live: list[Exchange] = []
    proxies: list[ProxyListener] = []

    def proxy_for(var: str, url: str) -> ProxyListener:
        proxies.append(make_resume_proxy(url, book, real[var], live.append))
        return proxies[-1]

    resumed = await rerun(original, app_path, book, Mode.RESUME, proxy_for)
    report = build_report(original, resumed, book, Mode.RESUME)
    for proxy in proxies:
        report.divergences += getattr(proxy, "divergences", [])
    for x in live:
        # Request exchanges only, as replay reports: the live connection's own start-up and
        # the statements resume prepared for it are not the app's IO.
        if x.request_id == resumed.id and x.lifetime is Lifetime.REQUEST:
            x.source = Source.LIVE
            report.io.append(IoEntry(x, "live"))
    report.io.sort(key=lambda entry: entry.exchange.started_at)
    report.live = [i for i, entry in enumerate(report.io, 1) if entry.source == "live"]
    report.stopped_at = None  # in resume a miss is not a stop: it went live
    report.replayed.exchanges = [entry.exchange for entry in report.io]
    report.replayed.replay_outcome = report.outcome.value
    return report
