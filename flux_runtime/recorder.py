"""Per-worker proxies and the attribution of their exchanges to requests and boot records.

Each worker slot gets one recording proxy per upstream, started once and kept across worker
restarts. The slot's proxies are tagged with the execution id while the worker serves it, so
every exchange lands in exactly one request, or in the worker's boot record.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from flux_proxy.listener import ProxyListener
from flux_proxy.model import Exchange, ExchangeSink
from flux_proxy.urls import proxy_url, upstream_kind
from flux_server.records import BootRecord


def make_recording_proxy(upstream: str, sink: ExchangeSink) -> ProxyListener:
    """A record-mode proxy for `upstream` on a free loopback port."""
    if upstream_kind(upstream) == "pg":
        from flux_proxy.pg.proxy import PgRecordProxy

        return PgRecordProxy(upstream, sink)
    from flux_proxy.resp.proxy import RedisProxy

    return RedisProxy(upstream, sink)


log = logging.getLogger("flux.recorder")

TAKEN_KEPT = 32  # finished executions per slot that can still receive late exchanges
# A boot record is shipped once, when its worker is ready; IO between requests (pool
# keep-alives, timers) keeps arriving for the worker's whole life, so it is kept up to a cap.
BOOT_EXCHANGES_KEPT = 5000


@dataclass
class SlotRecorder:
    """The proxies of one worker slot, and what they recorded."""

    index: int
    upstreams: dict[str, str]  # env var -> real URL, with credentials
    proxies: dict[str, ProxyListener] = field(default_factory=dict)
    by_request: dict[str, list[Exchange]] = field(default_factory=dict)
    boot: BootRecord | None = None
    boot_sent: bool = False  # the boot record exists on the server
    boot_shipped: int = 0  # how many of its exchanges have been shipped
    boot_used: bool = False  # an execution references the current boot record
    # Exchange lists handed to finished executions, by id: an exchange that completes after
    # its request did (a query the handler did not await) joins its record if that record has
    # not been shipped yet, and never piles up in `by_request` for an id nobody takes again.
    taken: OrderedDict[str, list[Exchange]] = field(default_factory=OrderedDict)
    current: str | None = None  # the last id the slot was tagged with
    late_dropped: int = 0  # late exchanges whose execution was too old to take them
    boot_cap: int = BOOT_EXCHANGES_KEPT
    boot_dropped: int = 0  # boot exchanges past the cap, counted and let go

    async def start(self) -> None:
        for var, url in self.upstreams.items():
            proxy = make_recording_proxy(url, self._collect)
            await proxy.start()
            self.proxies[var] = proxy

    async def close(self) -> None:
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                await proxy.close()

    def env(self) -> dict[str, str]:
        """The app's view of each upstream variable: this slot's proxy."""
        return {var: proxy_url(self.upstreams[var], "127.0.0.1", p.port)
                for var, p in self.proxies.items()}

    def _collect(self, exchange: Exchange) -> None:
        request_id = exchange.request_id
        if request_id is None:
            if self.boot is None:
                return
            if len(self.boot.exchanges) < self.boot_cap:
                self.boot.exchanges.append(exchange)
            else:
                self.boot_dropped += 1
                if self.boot_dropped == 1:
                    log.warning("flux: worker slot %d: more than %d exchanges outside requests "
                                "(timers, keep-alives); later ones are not recorded",
                                self.index, self.boot_cap)
        elif request_id in self.taken:
            self.taken[request_id].append(exchange)
        elif request_id in self.by_request or request_id == self.current:
            self.by_request.setdefault(request_id, []).append(exchange)
        else:
            self.late_dropped += 1
            log.warning("flux: a %s exchange finished after its request's record was shipped "
                        "(%d so far); it is not recorded", exchange.protocol.value,
                        self.late_dropped)

    def new_boot(self, boot_id: str, worker_id: str, app_path: str) -> BootRecord:
        self.boot = BootRecord(id=boot_id, worker_id=worker_id, app_path=app_path,
                               started_at=time.time())
        self.boot_sent, self.boot_shipped = False, 0
        self.boot_used = False
        return self.boot

    def unshipped_boot(self) -> BootRecord | None:
        """The part of the boot record not shipped yet: all of it the first time (even with
        no IO, so executions can name it), then only what arrived since (IO between
        requests), at its positions. None when there is nothing new."""
        boot = self.boot
        if boot is None or (self.boot_sent and len(boot.exchanges) == self.boot_shipped):
            return None
        part = replace(boot, exchanges=boot.exchanges[self.boot_shipped:],
                       first_position=self.boot_shipped)
        self.boot_sent, self.boot_shipped = True, len(boot.exchanges)
        return part

    def tag(self, execution_id: str | None) -> None:
        if execution_id is not None:
            self.current = execution_id
        for proxy in self.proxies.values():
            proxy.set_current_request(execution_id)

    def sealed(self, execution_ids: set[str]) -> None:
        """These records have left memory: an exchange of theirs that finishes now is late."""
        for execution_id in execution_ids & self.taken.keys():
            del self.taken[execution_id]

    def take(self, execution_id: str) -> list[Exchange]:
        exchanges = self.by_request.pop(execution_id, [])
        self.taken[execution_id] = exchanges
        while len(self.taken) > TAKEN_KEPT:
            self.taken.popitem(last=False)
        return exchanges
