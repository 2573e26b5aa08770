"""Checks shared by the Redis driver modules."""

from __future__ import annotations

from typing import Any

from flux_server.records import BootRecord, Execution


def calls(execution: Execution) -> list[tuple[Any, ...]]:
    """(command, args, reply value, reply error) of each exchange, in order."""
    return [(x.request["command"], x.request["args"], x.response["value"], x.response["error"])
            for x in execution.exchanges]


def handshake(boot: BootRecord) -> list[tuple[str, list[str]]]:
    """The connection set-up commands of the boot, with their first argument."""
    return [(x.request["command"], x.request["args"][:1]) for x in boot.exchanges
            if x.lifetime.value == "session"]
