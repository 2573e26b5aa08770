"""The record store interface both implementations satisfy, and what they share."""

from __future__ import annotations

import asyncio
import base64
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flux_server.filters import ExecutionFilter
from flux_server.records import BootRecord, Execution, ExecutionSummary
from flux_server.store.rows import (
    PreparedBoot,
    PreparedExecution,
    prepare_boot,
    prepare_execution,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_AMBIGUOUS_CANDIDATES = 10
SUBSCRIBER_QUEUE_LIMIT = 10_000


class StoreError(Exception):
    """Base of what a store raises on purpose."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now; the message says why. Retrying later may work."""


class InvalidId(StoreError, ValueError):
    """Not a UUID, nor a prefix of 8 or more hex digits."""


class AmbiguousPrefix(StoreError):
    def __init__(self, prefix: str, candidates: list[str]) -> None:
        self.prefix = prefix
        self.candidates = candidates
        shown = ", ".join(candidates)
        super().__init__(f"id prefix {prefix} is ambiguous; candidates: {shown}")


class InvalidRecord(StoreError, ValueError):
    """The database refused a record's content (e.g. text that is not JSON)."""


class InvalidCursor(StoreError, ValueError):
    """A paging cursor this server did not hand out."""


@dataclass(slots=True)
class Page:
    executions: list[ExecutionSummary]
    next_cursor: str | None  # None on the last page


@dataclass(slots=True)
class StoredCounts:
    """How many records of a batch were new; the rest were already stored (a retry)."""

    executions: int
    boots: int


@dataclass(frozen=True, slots=True)
class IdRange:
    """A full id or a prefix, as the inclusive range of canonical ids it covers."""

    text: str  # what the user gave, normalised to hex
    low: str
    high: str

    @property
    def is_full(self) -> bool:
        return self.low == self.high


def canonical_uuid(hex32: str) -> str:
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"


def id_range(id_or_prefix: str) -> IdRange:
    """`0f3a9c1e` -> every id starting with it. Ids sort the same as text and as Postgres uuid."""
    hexits = id_or_prefix.strip().lower().replace("-", "")
    if len(hexits) < 8 or len(hexits) > 32 or any(c not in "0123456789abcdef" for c in hexits):
        raise InvalidId(f"{id_or_prefix!r} is not an execution id nor a prefix of 8 or more "
                        "hex digits")
    pad = 32 - len(hexits)
    return IdRange(hexits, canonical_uuid(hexits + "0" * pad), canonical_uuid(hexits + "f" * pad))


def encode_cursor(summary: ExecutionSummary) -> str:
    """The position after `summary` in newest-first order; repr keeps the float exact."""
    raw = json.dumps([repr(summary.started_at), summary.id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        started_at, execution_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        position = id_range(execution_id)
        if not position.is_full:
            raise ValueError("not a full id")
        return float(started_at), position.low
    except (ValueError, TypeError, InvalidId):
        raise InvalidCursor(f"invalid paging cursor {cursor!r}") from None


def page_size(limit: int | None) -> int:
    if not limit or limit <= 0:
        return DEFAULT_PAGE_SIZE
    return min(limit, MAX_PAGE_SIZE)


class Subscription:
    """New summaries for one Tail, in order. Ends when the store closes or the reader lags."""

    def __init__(self, hub: SummaryHub) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[ExecutionSummary | None] = asyncio.Queue(
            SUBSCRIBER_QUEUE_LIMIT)
        self.lagged = False

    def offer(self, summary: ExecutionSummary) -> None:
        try:
            self._queue.put_nowait(summary)
        except asyncio.QueueFull:
            self.lagged = True
            self.end()

    def end(self) -> None:
        self._hub.discard(self)
        if self._queue.full():  # make room for the end marker; a lagging reader stops anyway
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def close(self) -> None:
        """Stops receiving; the reader should call it when it goes away."""
        self._hub.discard(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ExecutionSummary:
        summary = await self._queue.get()
        if summary is None:
            self._queue.put_nowait(None)  # ended for good: later reads end too
            raise StopAsyncIteration
        return summary


class SummaryHub:
    """In-process fan-out of newly stored executions to the Tail streams of this server."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        subscription = Subscription(self)
        self._subscriptions.add(subscription)
        return subscription

    def discard(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, summaries: Iterable[ExecutionSummary]) -> None:
        for summary in summaries:
            for subscription in list(self._subscriptions):
                subscription.offer(summary)

    def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.end()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)


class Store(ABC):
    """Where executions and boot records live. Every method may raise StoreUnavailable."""

    def __init__(self) -> None:
        self.hub = SummaryHub()

    @property
    @abstractmethod
    def description(self) -> str:
        """One line naming the store, without secrets (for the server's start-up line)."""

    @abstractmethod
    async def open(self) -> None:
        """Connects and applies migrations. The store stays usable if this fails: every
        operation retries it, so a server started while its database is down recovers."""

    @abstractmethod
    async def close(self) -> None: ...

    async def record_batch(self, executions: Sequence[Execution],
                           boots: Sequence[BootRecord]) -> StoredCounts:
        """Stores what is new, ignores ids already stored, and announces new executions to
        every tail (on Postgres, of every server sharing the database)."""
        return await self.record_prepared([prepare_execution(e) for e in executions],
                                          [prepare_boot(b) for b in boots])

    @abstractmethod
    async def record_prepared(self, executions: Sequence[PreparedExecution],
                              boots: Sequence[PreparedBoot]) -> StoredCounts:
        """`record_batch` for rows already prepared (flux_server/ingest.py)."""

    @abstractmethod
    async def list(self, flt: ExecutionFilter, limit: int | None = None,
                   cursor: str | None = None) -> Page:
        """Newest first."""

    @abstractmethod
    async def get(self, id_or_prefix: str) -> Execution | None:
        """None when unknown; AmbiguousPrefix when a prefix matches several; InvalidId."""

    @abstractmethod
    async def get_boot(self, boot_id: str) -> BootRecord | None: ...

    @abstractmethod
    async def search_matches(self, ids: Sequence[str], search: str) -> set[str]:
        """Which of `ids` have `search` in their error (Tail's text filter needs the stack)."""

    @abstractmethod
    async def apply_retention(self, cutoff: float) -> int:
        """Deletes executions started before `cutoff` (epoch seconds) with their IO, and the
        boot records older than it that no remaining execution references. Returns how many
        executions went (Postgres drops whole days, so it may keep part of the newest day)."""

    def subscribe(self) -> Subscription:
        return self.hub.subscribe()

    async def maintain(self) -> None:
        """Periodic upkeep the server runs hourly (Postgres: the coming days' partitions)."""
        return None

    async def ready_for_tail(self) -> None:
        """Returns once new executions reach subscriptions (Postgres: once LISTEN is on)."""
        return None
