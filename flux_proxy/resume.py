"""The durable prefix of a recording: what `flux resume` must not apply again.

Walking the request's exchanges in the order they started, the prefix ends at the first one
that failed, or was not durable: inside a Postgres transaction that did not commit (told by
the ReadyForQuery status after each exchange and the COMMIT/ROLLBACK command tags), or inside
a Redis MULTI that had no EXEC. Everything before it took effect in the original run, so resume
answers it from the recording; everything from it on runs live.
"""

from __future__ import annotations

from flux_proxy.model import Exchange, Lifetime, Protocol

IN_TRANSACTION = frozenset({"T", "E"})


def _failed(x: Exchange) -> bool:
    return x.failed or bool(x.response.get("error"))


def _pg_committed_at(exchanges: list[Exchange], start: int) -> int | None:
    """Index of the exchange that commits the transaction open after `exchanges[start]`, on
    the same connection; None when it rolled back or never ended."""
    conn = exchanges[start].connection
    for i in range(start + 1, len(exchanges)):
        x = exchanges[i]
        if x.protocol is not Protocol.POSTGRES or x.connection != conn:
            continue
        status = x.response.get("tx_status")
        if status in IN_TRANSACTION:
            continue
        tag = str(x.response.get("command_tag") or "")
        return i if status == "I" and tag.startswith("COMMIT") and not _failed(x) else None
    return None


def _redis_exec_at(exchanges: list[Exchange], start: int) -> int | None:
    conn = exchanges[start].connection
    for i in range(start + 1, len(exchanges)):
        x = exchanges[i]
        if x.protocol is not Protocol.REDIS or x.connection != conn:
            continue
        command = str(x.request.get("command", "")).upper()
        if command == "EXEC":
            return None if _failed(x) or x.response.get("value") is None else i
        if command == "DISCARD":
            return None
    return None


def durable_prefix(exchanges: list[Exchange]) -> list[Exchange]:
    """The request exchanges, in start order, up to the first failed or non-durable one."""
    ordered = sorted((x for x in exchanges if x.lifetime is Lifetime.REQUEST),
                     key=lambda x: (x.started_at, x.connection, x.seq))
    prefix: list[Exchange] = []
    durable_until = -1  # exchanges up to this index belong to a transaction that committed
    for i, x in enumerate(ordered):
        if _failed(x):
            break
        if i > durable_until:
            if x.protocol is Protocol.POSTGRES and x.response.get("tx_status") in IN_TRANSACTION:
                end = _pg_committed_at(ordered, i)
                if end is None:
                    break
                durable_until = end
            elif x.protocol is Protocol.REDIS and str(x.request.get("command", "")).upper() \
                    == "MULTI":
                end = _redis_exec_at(ordered, i)
                if end is None:
                    break
                durable_until = end
        prefix.append(x)
    return prefix
