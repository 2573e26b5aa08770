"""Every command runs its event loop here: on uvloop, with the cyclic GC tuned for proxies.

The proxies allocate a few container objects per exchange (the exchange, its frame lists) and
free them by reference counting once shipped; they make no reference cycles. With CPython's
default gen-0 threshold (700) the collector still runs every couple of hundred exchanges and
walks whatever is alive, which `bench/pg_proxy.py` measured at 1-3 µs per transaction (perf:
5% of the proxy's CPU in the collector with a 20,000 threshold, 2% with these). Objects alive
at start (modules, the app's configuration) are frozen out of collection; collections are made
rarer, not switched off, so cycles (exceptions and their tracebacks) are still reclaimed.
"""

from __future__ import annotations

import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")

YOUNG_THRESHOLD = 50_000  # allocations between collections of the young generation (700)
MIDDLE_THRESHOLD = 20  # young collections per middle-generation one (10)
OLD_THRESHOLD = 100  # middle-generation collections before a full one may run (10)


def tune_gc() -> None:
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


def run(coro: Coroutine[Any, Any, T]) -> T:
    tune_gc()
    return uvloop.run(coro)
