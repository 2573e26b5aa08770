"""Tail across servers on Postgres: NOTIFY payloads and the LISTEN connection.

Each committed batch sends its new executions' summaries on channel `flux_executions`, in
JSON arrays under the 8000-byte NOTIFY limit. A summary too long for that (a huge path or
error message) travels as `{"id": ...}` alone, and listeners fetch it by id, so ingest never
fails on NOTIFY. Every server listens, so a tail on one sees what any other ingested.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from json.encoder import encode_basestring as encode_string
from typing import Any

import asyncpg

from flux_server.records import ExecutionSummary, Mode, Outcome
from flux_server.store.base import StoreUnavailable, SummaryHub

log = logging.getLogger("flux.server.store")

CHANNEL = "flux_executions"
NOTIFY_PAYLOAD_LIMIT = 7800  # Postgres refuses payloads of 8000 bytes or more
NOTIFY_ITEM_LIMIT = 1500  # a summary longer than this travels as its id alone
LISTENER_RETRY_SECONDS = 1.0
LISTENER_CHECK_SECONDS = 5.0

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, starting up
    asyncpg.InterfaceError,  # the connection was closed under us
)
"""What a refused or lost Postgres connection raises."""

FetchSummaries = Callable[[list[str]], Awaitable[list[ExecutionSummary]]]


def _string_or_null(value: str | None) -> str:
    return "null" if value is None else encode_string(value)


def summary_payload(s: ExecutionSummary) -> str:
    """The summary as a JSON object, written directly: this runs for every execution."""
    return (f'{{"id":{encode_string(s.id)},"started_at":{float(s.started_at)!r},'
            f'"duration":{float(s.duration)!r},"method":{encode_string(s.method)},'
            f'"path":{encode_string(s.path)},"status":{int(s.status)},'
            f'"outcome":"{s.outcome.value}","error_message":{_string_or_null(s.error_message)},'
            f'"mode":"{s.mode.value}","parent_id":{_string_or_null(s.parent_id)},'
            f'"replay_outcome":{_string_or_null(s.replay_outcome)}}}')


def notify_payloads(summaries: Sequence[ExecutionSummary]) -> list[str]:
    """JSON arrays under the NOTIFY limit; an oversized summary becomes `{"id": ...}`."""
    payloads: list[str] = []
    items: list[str] = []
    size = 2
    for summary in summaries:
        item = summary_payload(summary)
        if len(item.encode()) > NOTIFY_ITEM_LIMIT:
            item = f'{{"id":{encode_string(summary.id)}}}'
        item_size = len(item.encode()) + 1
        if items and size + item_size > NOTIFY_PAYLOAD_LIMIT:
            payloads.append("[" + ",".join(items) + "]")
            items, size = [], 2
        items.append(item)
        size += item_size
    if items:
        payloads.append("[" + ",".join(items) + "]")
    return payloads


def summary_from_payload(item: dict[str, Any]) -> ExecutionSummary:
    return ExecutionSummary(
        id=item["id"], started_at=item["started_at"], duration=item["duration"],
        method=item["method"], path=item["path"], status=item["status"],
        outcome=Outcome(item["outcome"]), error_message=item["error_message"],
        mode=Mode(item["mode"]), parent_id=item["parent_id"],
        replay_outcome=item["replay_outcome"])


class NotifyListener:
    """One LISTEN connection per server, kept up across database restarts, publishing what
    it hears to the server's tails."""

    def __init__(self, url: str, where: str, hub: SummaryHub, fetch: FetchSummaries, *,
                 connect_timeout: float = 5.0) -> None:
        self._url = url
        self._where = where
        self._hub = hub
        self._fetch = fetch
        self._connect_timeout = connect_timeout
        self.listening = asyncio.Event()  # set while connected
        self._task: asyncio.Task[None] | None = None
        self._fetch_tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="flux-pg-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def ready(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), timeout)

    async def _listen_forever(self) -> None:
        """Reconnects after a loss; logs the loss and the return once each, not every
        failed attempt."""
        ever_connected = announced_loss = False
        while True:
            try:
                async for _ in self._listen_once():
                    ever_connected = True
                    if announced_loss:
                        log.warning("tail listener is back on %s", self._where)
                        announced_loss = False
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                log.debug("tail listener: %s", exc)
            if ever_connected and not announced_loss:
                log.warning("tail listener lost %s; reconnecting", self._where)
                announced_loss = True
            await asyncio.sleep(LISTENER_RETRY_SECONDS)

    async def _listen_once(self) -> AsyncIterator[None]:
        """Yields once connected, then listens until the connection is lost (noticed at once
        by asyncpg, or by a periodic ping)."""
        conn = await asyncpg.connect(self._url, timeout=self._connect_timeout)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._on_notify)
            self.listening.set()
            yield
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), LISTENER_CHECK_SECONDS)
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=self._connect_timeout)
        finally:
            self.listening.clear()
            if not conn.is_closed():
                conn.terminate()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            items = json.loads(payload)
            complete = [summary_from_payload(i) for i in items if "started_at" in i]
            partial = [str(i["id"]) for i in items if "started_at" not in i]
        except (ValueError, TypeError, KeyError) as exc:  # someone else's NOTIFY on our channel
            log.warning("ignored a malformed notification on %s: %s", CHANNEL, exc)
            return
        self._hub.publish(complete)
        if partial:
            task = asyncio.get_running_loop().create_task(self._publish_by_id(partial))
            self._fetch_tasks.add(task)
            task.add_done_callback(self._fetch_tasks.discard)

    async def _publish_by_id(self, ids: list[str]) -> None:
        try:
            self._hub.publish(await self._fetch(ids))
        except StoreUnavailable as exc:
            log.warning("could not fetch %d tailed executions: %s", len(ids), exc)
