"""Typed RESP2/RESP3 values.

Each type keeps exactly what is needed to re-encode the bytes a real server sent: the three
null spellings stay distinct, a double keeps its text, and an attribute wraps the value it
annotates. Values are frozen so tests can compare and hash them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class SimpleString:
    """`+OK`: a short binary-safe-less string (no CR or LF)."""

    value: bytes


@dataclass(frozen=True, slots=True)
class SimpleError:
    """`-ERR message`: an error reply."""

    value: bytes


@dataclass(frozen=True, slots=True)
class Integer:
    """`:42`: a signed 64-bit integer (larger values are accepted and kept)."""

    value: int


@dataclass(frozen=True, slots=True)
class BulkString:
    """`$3\\r\\nfoo`: a binary-safe string."""

    value: bytes


class NullKind(Enum):
    """The three spellings of null: RESP2 `$-1` and `*-1`, RESP3 `_`."""

    BULK = b"$-1\r\n"
    ARRAY = b"*-1\r\n"
    RESP3 = b"_\r\n"


@dataclass(frozen=True, slots=True)
class Null:
    kind: NullKind = NullKind.RESP3


@dataclass(frozen=True, slots=True)
class Boolean:
    """`#t` / `#f` (RESP3)."""

    value: bool


@dataclass(frozen=True, slots=True)
class Double:
    """`,3.14` (RESP3). `text` is the wire spelling, kept for exact re-encoding; `value` is
    derived from it and excluded from comparison (nan != nan)."""

    text: bytes
    value: float = field(default=0.0, compare=False)

    @classmethod
    def of(cls, number: float) -> Double:
        if math.isnan(number):
            return cls(b"nan", number)
        if math.isinf(number):
            return cls(b"inf" if number > 0 else b"-inf", number)
        return cls(repr(float(number)).encode(), number)


@dataclass(frozen=True, slots=True)
class BigNumber:
    """`(3492890328409238509324850943850943825024385` (RESP3)."""

    value: int


@dataclass(frozen=True, slots=True)
class BulkError:
    """`!21\\r\\nSYNTAX invalid syntax` (RESP3): a binary-safe error."""

    value: bytes


@dataclass(frozen=True, slots=True)
class VerbatimString:
    """`=15\\r\\ntxt:Some string` (RESP3): a string with a three-byte format tag."""

    format: bytes
    text: bytes


@dataclass(frozen=True, slots=True)
class Array:
    items: tuple[RespValue, ...]


@dataclass(frozen=True, slots=True)
class Set:
    """`~`: an unordered collection (RESP3); order is kept as received."""

    items: tuple[RespValue, ...]


@dataclass(frozen=True, slots=True)
class Push:
    """`>`: out-of-band data (RESP3): pub/sub messages, invalidations, subscribe confirmations."""

    items: tuple[RespValue, ...]


@dataclass(frozen=True, slots=True)
class Map:
    """`%`: key/value pairs (RESP3); order and duplicate keys are kept as received."""

    pairs: tuple[tuple[RespValue, RespValue], ...]


@dataclass(frozen=True, slots=True)
class Attribute:
    """`|`: auxiliary key/value pairs that annotate the `value` that follows on the wire.

    On the wire the attribute and its value form one reply, so they are one value here."""

    pairs: tuple[tuple[RespValue, RespValue], ...]
    value: RespValue


@dataclass(frozen=True, slots=True)
class InlineCommand:
    """A client command sent as a plain text line (`PING\\r\\n`, telnet style).

    `line` is the line without its terminator; `terminator` is `\\r\\n` or `\\n`."""

    line: bytes
    terminator: bytes = b"\r\n"


RespValue: TypeAlias = (
    SimpleString | SimpleError | Integer | BulkString | Null | Boolean | Double | BigNumber
    | BulkError | VerbatimString | Array | Set | Push | Map | Attribute
)
"""Any value a server may send (inline commands only come from clients)."""

AGGREGATES = (Array, Set, Push, Map, Attribute)
ERRORS = (SimpleError, BulkError)
