"""Semantic JSON of Redis exchanges: `{command, args}` requests and `{value, error}` responses.

Done off the proxy's hot path (the raw frames are the source of truth). Rendering rules:

* strings (bulk, simple, verbatim) are `str` when UTF-8, else `{"base64": ...}`;
* integers are numbers; big numbers are decimal strings (JavaScript cannot hold them);
* doubles are numbers, except `"inf"`, `"-inf"` and `"nan"`, which JSON cannot hold;
* nulls (all three spellings) are `null`; booleans are booleans;
* arrays, sets and pushes are lists;
* maps are objects when every key renders as a string and no key repeats, else lists of
  `[key, value]` pairs (order kept);
* attributes are dropped (the annotated value is rendered; the raw frame keeps them);
* an error nested in an aggregate (an EXEC result) is `{"error": "..."}`; a top-level error
  reply is `{"value": null, "error": "..."}`.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from typing import Any

from flux_proxy.model import Exchange
from flux_proxy.resp.codec import ProtocolError, decode_command, decode_reply
from flux_proxy.resp.values import (
    Array,
    Attribute,
    BigNumber,
    Boolean,
    BulkError,
    BulkString,
    Double,
    Integer,
    Map,
    Null,
    Push,
    RespValue,
    Set,
    SimpleError,
    SimpleString,
    VerbatimString,
)

REDACTED = "<redacted>"


def text_or_base64(data: bytes) -> str | dict[str, str]:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def command_json(args: list[bytes]) -> dict[str, Any]:
    """`{command, args}`: the command name upper-cased, AUTH passwords redacted."""
    if not args:
        return {"command": "", "args": []}
    command = args[0].decode("utf-8", "replace").upper()
    try:
        rendered: list[Any] = [a.decode() for a in args[1:]]
    except UnicodeDecodeError:
        rendered = [text_or_base64(a) for a in args[1:]]
    if command == "AUTH" or command == "HELLO":
        for index in password_positions(command, args):
            rendered[index - 1] = REDACTED
    return {"command": command, "args": rendered}


def password_positions(command: str, args: list[bytes]) -> list[int]:
    """Indexes in `args` that hold a password: `AUTH [user] pw`, `HELLO v AUTH user pw`."""
    if command == "AUTH" and len(args) >= 2:
        return [len(args) - 1]
    if command == "HELLO":
        for i in range(2, len(args) - 2):
            if args[i].upper() == b"AUTH":
                return [i + 2]
    return []


_END = object()


def value_json(value: RespValue) -> Any:
    """The JSON rendering of a value (module docstring); iterative, so deep nesting is fine."""
    stack: list[tuple[RespValue, list[Any], Iterator[RespValue]]] = []
    current: Any = value
    while True:
        kind = type(current)
        if kind is Attribute:
            current = current.value
            continue
        if kind is Array or kind is Set or kind is Push:
            stack.append((current, [], iter(current.items)))
            rendered: Any = _END
        elif kind is Map:
            stack.append((current, [], iter([v for pair in current.pairs for v in pair])))
            rendered = _END
        else:
            rendered = _scalar_json(current)
        while stack:
            node, done, children = stack[-1]
            if rendered is not _END:
                done.append(rendered)
            current = next(children, _END)
            if current is not _END:
                break
            stack.pop()
            rendered = _fold_map(done) if type(node) is Map else done
        else:
            return rendered


def _fold_map(flat: list[Any]) -> Any:
    pairs = [flat[i:i + 2] for i in range(0, len(flat), 2)]
    keys = [k for k, _ in pairs]
    if all(isinstance(k, str) for k in keys) and len(set(keys)) == len(keys):
        return dict(pairs)
    return pairs


def _scalar_json(item: RespValue) -> Any:
    kind = type(item)
    if kind is BulkString or kind is SimpleString:
        return text_or_base64(item.value)
    if kind is Integer or kind is Boolean:
        return item.value
    if kind is Null:
        return None
    if kind is SimpleError or kind is BulkError:
        return {"error": item.value.decode("utf-8", "replace")}
    if kind is Double:
        number = item.value
        if math.isfinite(number):
            return number
        return "nan" if math.isnan(number) else "inf" if number > 0 else "-inf"
    if kind is BigNumber:
        return str(item.value)
    if kind is VerbatimString:
        return text_or_base64(item.text)
    raise TypeError(f"not a RESP value: {item!r}")


def reply_json(value: RespValue) -> dict[str, Any]:
    """`{value, error}` of one reply."""
    if isinstance(value, Attribute):
        value = value.value
    if isinstance(value, (SimpleError, BulkError)):
        return {"value": None, "error": value.value.decode("utf-8", "replace")}
    return {"value": value_json(value), "error": None}


def request_from_frame(raw: bytes) -> dict[str, Any]:
    """`{command, args}` of one complete command frame, as the scanner returned it."""
    if raw[:1] == b"*":
        # Fast path: when no argument contains CRLF, a valid frame splits into exactly the
        # count line, then a length line and the data for each argument, then b"".
        parts = raw.split(b"\r\n")
        count = parts[0][1:]
        if count.isdigit() and len(parts) == 2 * int(count) + 2:
            return command_json(parts[2:-1:2])
    try:
        return command_json(decode_command(raw))
    except ProtocolError as exc:
        return {"command": "", "args": [], "undecodable": str(exc)}


def _simple_reply(frame: bytes) -> dict[str, Any] | None:
    """The common one-line replies without a full decode; None for anything else."""
    kind = frame[0]
    if kind == 0x2B:  # +OK
        return {"value": text_or_base64(frame[1:-2]), "error": None}
    if kind == 0x24:  # $
        if frame[1] == 0x2D:
            return {"value": None, "error": None} if frame == b"$-1\r\n" else None
        return {"value": text_or_base64(frame[frame.index(b"\r\n") + 2:-2]), "error": None}
    if kind == 0x3A and frame[1:-2].lstrip(b"-").isdigit():  # :
        return {"value": int(frame[1:-2]), "error": None}
    if kind == 0x2D:  # -ERR
        return {"value": None, "error": frame[1:-2].decode("utf-8", "replace")}
    if frame == b"_\r\n":
        return {"value": None, "error": None}
    return None


def response_from_frames(frames: list[bytes]) -> dict[str, Any]:
    """One reply; several frames (a multi-channel SUBSCRIBE) render as a list of values."""
    if len(frames) == 1:
        simple = _simple_reply(frames[0])
        if simple is not None:
            return simple
    try:
        values = [decode_reply(f) for f in frames]
    except ProtocolError as exc:
        return {"value": None, "error": f"flux: undecodable reply: {exc}"}
    if not values:
        return {"value": None, "error": None}
    if len(values) == 1:
        return reply_json(values[0])
    rendered = [reply_json(v) for v in values]
    errors = [r["error"] for r in rendered if r["error"]]
    return {"value": [r["value"] for r in rendered], "error": errors[0] if errors else None}


def fill_semantics(exchange: Exchange) -> Exchange:
    """Derive `request` and `response` from the raw frames, unless already set (pushes and
    failures set their own)."""
    if not exchange.request:
        exchange.request = (request_from_frame(exchange.client_frames[0])
                            if exchange.client_frames else {"command": "", "args": []})
    if not exchange.response:
        exchange.response = response_from_frames(exchange.server_frames)
    return exchange
