"""Sans-IO RESP2/RESP3 codec: bytes in, frames out; values in, bytes out. No sockets.

Two layers, because the proxy's hot path must not pay for values it does not look at:

* `ReplyScanner` / `CommandScanner` find where each top-level frame ends and hand back its raw
  bytes. They count "values still owed" instead of building a tree, so they need no recursion
  and no stack, and they resume mid-frame when fed the next chunk.
* `decode_reply` / `decode_command` turn one complete frame into values, iteratively (deep but
  valid nesting never touches Python's recursion limit). `RespParser` combines both, h11 style.

Every malformed input raises `ProtocolError` and nothing else; sizes are capped by `Limits`, so
a peer cannot make the parser buffer without bound.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flux_proxy.resp.values import (
    Array,
    Attribute,
    BigNumber,
    Boolean,
    BulkError,
    BulkString,
    Double,
    InlineCommand,
    Integer,
    Map,
    Null,
    NullKind,
    Push,
    RespValue,
    Set,
    SimpleError,
    SimpleString,
    VerbatimString,
)


class ProtocolError(Exception):
    """The peer sent bytes that are not RESP (or exceed a limit). The connection is unusable.

    `frames` holds the complete frames a scanner found before the bad bytes, so a proxy can
    still answer the commands that preceded the garbage, as redis-server does."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.frames: list[bytes] = []


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps that keep a hostile or broken peer from exhausting memory.

    The defaults follow redis-server: 512 MiB bulk strings (`proto-max-bulk-len`), 64 KiB
    inline commands, and INT_MAX elements per aggregate."""

    max_bulk: int = 512 * 1024 * 1024
    max_line: int = 64 * 1024
    max_count: int = 2**31 - 1
    max_frame: int = 1024 * 1024 * 1024


DEFAULT_LIMITS = Limits()

# Type-byte classes for the scanners. One table lookup per header keeps the hot loop short.
_LINE, _BULK, _AGG, _MAP, _ATTR = 1, 2, 3, 4, 5
_KIND = [0] * 256
for _ch in b"+-:#,(_":
    _KIND[_ch] = _LINE
for _ch in b"$!=":
    _KIND[_ch] = _BULK
for _ch in b"*~>":
    _KIND[_ch] = _AGG
_KIND[ord("%")] = _MAP
_KIND[ord("|")] = _ATTR
_KIND_TABLE = tuple(_KIND)

_STAR, _DOLLAR = ord("*"), ord("$")
CRLF = b"\r\n"


def _bad_length(kind: str, text: bytes) -> ProtocolError:
    return ProtocolError(f"invalid {kind} length {text[:32]!r}")


class _Scanner:
    """Shared resumable state of both scanners: partial frame chunks and how far they got."""

    __slots__ = ("_buffered", "_chunks", "_need", "_pos", "_want", "limits", "names")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._chunks: list[bytes] = []  # the unfinished frame, as received
        self._buffered = 0  # total length of _chunks
        self._want = 0  # no progress is possible before this many bytes are buffered
        self._pos = 0  # scan position inside the unfinished frame
        self._need = 0  # values still owed by the unfinished frame (0: none started)
        self.names: list[bytes | None] = []  # CommandScanner: each command's name, if seen

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished frame held back; non-zero at EOF means a truncated frame."""
        return self._buffered

    _c_scan: Any = None  # the subclass's scan in `flux_proxy._scan`, when it was built

    def feed(self, data: bytes) -> list[bytes]:
        """The raw bytes of every frame that `data` completes, in order."""
        scan = self._c_scan
        if scan is not None and not self._chunks and type(data) is bytes:
            # The usual read: nothing held back, so one C call from a clean state.
            limits = self.limits
            found = scan(data, 0, 0, limits.max_bulk, limits.max_line, limits.max_count)
            if found is not None:
                complete, names, start, pos, need, want = found
                if names is not None:
                    self.names = names
                if want >= 0:
                    try:
                        self._keep(data, start, pos, need, want)
                    except ProtocolError as exc:
                        exc.frames = complete
                        raise
                return complete  # type: ignore[no-any-return]
        buf = self._take(data)
        if buf is None:
            return []
        frames: list[bytes] = []
        try:
            return self._scan(buf, frames)
        except ProtocolError as exc:
            exc.frames = frames
            raise

    def _scan(self, buf: bytes, frames: list[bytes]) -> list[bytes]:
        raise NotImplementedError

    def _take(self, data: bytes) -> bytes | None:
        """Join `data` to the unfinished frame, or None while it still cannot progress."""
        if not self._chunks:
            return data
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > self.limits.max_frame:
            raise ProtocolError(f"frame larger than {self.limits.max_frame} bytes")
        if self._buffered < self._want:
            return None
        buf = b"".join(self._chunks)
        self._chunks = []
        self._buffered = 0
        return buf

    def _scan_in_c(self, scan: Any, buf: bytes, frames: list[bytes]
                   ) -> tuple[list[bytes], list[bytes | None] | None] | None:
        """Run a scan of `flux_proxy._scan` from this scanner's state: the frames (and command
        names) it found, or None when it handed the input back (an error or an edge case) for
        the exact scan to take from the same state."""
        limits = self.limits
        found = scan(buf, self._pos, self._need, limits.max_bulk, limits.max_line,
                     limits.max_count)
        if found is None:
            return None
        complete, names, start, pos, need, want = found
        if want < 0:  # nothing left over
            self._pos = self._need = self._want = 0
            return complete, names
        frames += complete  # `feed` reports these if keeping the rest raises
        self._keep(buf, start, pos, need, want)
        return frames, names

    def _keep(self, buf: bytes, start: int, pos: int, need: int, want: int) -> None:
        """Hold back the unfinished frame `buf[start:]`, scanned up to `pos`."""
        rest = buf[start:]
        if len(rest) > self.limits.max_frame:
            raise ProtocolError(f"frame larger than {self.limits.max_frame} bytes")
        self._chunks = [rest]
        self._buffered = len(rest)
        self._pos = pos - start
        self._need = need
        self._want = want - start


try:  # the same scans in C (setup.py builds it); the Python ones below are the reference
    from flux_proxy import _scan as _accelerated
except ImportError:  # pragma: no cover - only without a compiler at install time
    _accelerated = None  # type: ignore[assignment]


class ReplyScanner(_Scanner):
    """Finds top-level frame boundaries in a server-to-client stream (RESP2 and RESP3).

    `feed` returns the raw bytes of every frame completed by `data`; an attribute (`|`) and
    the value it annotates come back as one frame. Headers are validated; the contents of
    simple lines are left to the decoder."""

    __slots__ = ()

    _c_scan = None if _accelerated is None else _accelerated.resp_replies

    def feed(self, data: bytes) -> list[bytes]:
        # Unpipelined traffic: `data` is often exactly one line or one bulk string reply.
        if self._c_scan is None and not self._chunks and data.endswith(CRLF):
            kind = data[0]
            nl = data.find(CRLF)
            if nl == len(data) - 2 and (kind == 0x2B or kind == 0x2D or kind == 0x3A):
                return [data]
            if kind == 0x24:
                digits = data[1:nl]
                if digits.isdigit() and nl + 4 + int(digits) == len(data) \
                        and len(data) <= self.limits.max_bulk:
                    return [data]
        return super().feed(data)

    def _scan(self, buf: bytes, frames: list[bytes]) -> list[bytes]:
        if _accelerated is not None:
            found = self._scan_in_c(_accelerated.resp_replies, buf, frames)
            if found is not None:
                return found[0]
        return self._scan_exact(buf, frames)

    def _scan_exact(self, buf: bytes, frames: list[bytes]) -> list[bytes]:
        kinds = _KIND_TABLE
        limits = self.limits
        end_of_buf = len(buf)
        start = 0
        pos = self._pos
        need = self._need
        self._pos = self._need = self._want = 0
        while True:
            if need == 0:
                if pos != start:
                    frames.append(buf[start:pos])
                    start = pos
                if pos >= end_of_buf:
                    return frames
                need = 1
            if pos >= end_of_buf:
                self._keep(buf, start, pos, need, pos + 1)
                return frames
            kind = kinds[buf[pos]]
            nl = buf.find(CRLF, pos + 1)
            if nl < 0:
                if end_of_buf - pos > limits.max_line:
                    raise ProtocolError(f"line longer than {limits.max_line} bytes")
                if kind == 0:
                    raise ProtocolError(f"unknown RESP type byte {buf[pos:pos + 1]!r}")
                self._keep(buf, start, pos, need, end_of_buf + 1)
                return frames
            if kind == _LINE:
                pos = nl + 2
                need -= 1
                continue
            digits = buf[pos + 1:nl]
            if kind == _BULK:
                if digits.isdigit() and len(digits) < 19:
                    length = int(digits)
                    if length > limits.max_bulk:
                        raise ProtocolError(f"bulk length {length} over {limits.max_bulk}")
                    stop = nl + 4 + length
                    if stop > end_of_buf:
                        self._keep(buf, start, pos, need, stop)
                        return frames
                    if buf[stop - 2:stop] != CRLF:
                        raise ProtocolError("bulk string not terminated by CRLF")
                    pos = stop
                elif digits == b"-1" and buf[pos] == _DOLLAR:
                    pos = nl + 2
                else:
                    raise _bad_length("bulk", digits)
                need -= 1
                continue
            if kind == 0:
                raise ProtocolError(f"unknown RESP type byte {buf[pos:pos + 1]!r}")
            if digits.isdigit() and len(digits) < 19:
                count = int(digits)
                if count > limits.max_count:
                    raise ProtocolError(f"aggregate of {count} elements over {limits.max_count}")
                # An aggregate replaces the one value it is with the values it contains;
                # an attribute also still owes the value it annotates.
                need += count - 1 if kind == _AGG else 2 * count - (kind != _ATTR)
            elif digits == b"-1" and buf[pos] == _STAR:
                need -= 1
            else:
                raise _bad_length("aggregate", digits)
            pos = nl + 2


_FAST_SCAN_MAX = 256 * 1024


def _fast_scan(buf: bytes, offset: int, frames: list[bytes],
               names: list[bytes | None]) -> int:
    """Cut the leading run of ordinary commands out of `buf` in one C-level split.

    When no argument contains CRLF, a command is the tokens `*N`, then `$len` and data per
    argument. Each header is checked by rebuilding it from the data's real length, so any
    irregularity (CRLF inside data, a non-canonical header, an inline command, a partial
    command) just ends the run; the exact scanner takes over from the returned offset."""
    tokens = (buf[offset:] if offset else buf).split(b"\r\n")
    last = len(tokens) - 1  # the final token is not followed by CRLF
    i = 0
    pos = offset
    while i < last:
        count_line = tokens[i]
        count = count_line[1:]
        if count_line[:1] != b"*" or not count.isdigit() or count[:1] == b"0":
            break
        stop = i + 1 + 2 * int(count)
        if stop > last:
            break
        size = len(count_line) + 2
        j = i + 1
        while j < stop:
            data = tokens[j + 1]
            header = tokens[j]
            if header != b"$%d" % len(data):
                return pos
            size += len(header) + len(data) + 4
            j += 2
        frames.append(buf[pos:pos + size])
        names.append(tokens[i + 2])
        pos += size
        i = stop
    return pos


class CommandScanner(_Scanner):
    """Finds command boundaries in a client-to-server stream, as redis-server reads it.

    A command is an array of bulk strings (`*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n`), or, when
    the first byte is not `*`, an inline command line ending in `\\n`. `*0` and `*-1` are
    empty commands that the server skips without a reply, as is an empty inline line.

    After each `feed`, `names[i]` is the command name of `frames[i]` as sent (any case) when
    the scan saw it for free, else None."""

    __slots__ = ()
    _c_scan = None if _accelerated is None else _accelerated.resp_commands

    def _scan(self, buf: bytes, frames: list[bytes]) -> list[bytes]:
        if _accelerated is not None:
            found = self._scan_in_c(_accelerated.resp_commands, buf, frames)
            if found is not None:
                complete, self.names = found
                return complete
        return self._scan_exact(buf, frames)

    def _scan_exact(self, buf: bytes, frames: list[bytes]) -> list[bytes]:
        names: list[bytes | None] = []
        self.names = names
        limits = self.limits
        end_of_buf = len(buf)
        start = 0
        pos = self._pos
        need = self._need
        fast = end_of_buf <= _FAST_SCAN_MAX  # one split-based run per feed, at a boundary
        self._pos = self._need = self._want = 0
        while True:
            if need == 0:
                if pos != start:
                    frames.append(buf[start:pos])
                    names.append(None)
                    start = pos
                if fast and pos < end_of_buf and buf[pos] == _STAR:
                    fast = False
                    start = pos = _fast_scan(buf, pos, frames, names)
                    continue
                if pos >= end_of_buf:
                    return frames
                if buf[pos] != _STAR:
                    nl = buf.find(b"\n", pos)
                    if nl < 0:
                        if end_of_buf - pos > limits.max_line:
                            raise ProtocolError("too big inline request")
                        self._keep(buf, start, pos, 0, end_of_buf + 1)
                        return frames
                    pos = nl + 1
                    continue
                nl = buf.find(CRLF, pos + 1)
                if nl < 0:
                    if end_of_buf - pos > limits.max_line:
                        raise ProtocolError("too big multibulk header")
                    self._keep(buf, start, pos, 0, end_of_buf + 1)
                    return frames
                digits = buf[pos + 1:nl]
                if digits.isdigit() and len(digits) < 19:
                    need = int(digits)
                    if need > limits.max_count:
                        raise ProtocolError("invalid multibulk length")
                elif digits != b"-1":
                    raise ProtocolError(f"invalid multibulk length {digits[:32]!r}")
                pos = nl + 2
                continue
            max_bulk = limits.max_bulk
            while need:  # the bulk strings of the current command
                if pos >= end_of_buf:
                    self._keep(buf, start, pos, need, pos + 1)
                    return frames
                if buf[pos] != _DOLLAR:
                    raise ProtocolError(f"expected '$', got {buf[pos:pos + 1]!r}")
                nl = buf.find(CRLF, pos + 1)
                if nl < 0:
                    if end_of_buf - pos > limits.max_line:
                        raise ProtocolError("too big bulk header")
                    self._keep(buf, start, pos, need, end_of_buf + 1)
                    return frames
                digits = buf[pos + 1:nl]
                if not digits.isdigit():
                    raise ProtocolError(f"invalid bulk length {digits[:32]!r}")
                stop = nl + 4 + int(digits)
                if stop - nl - 4 > max_bulk:
                    raise ProtocolError(f"invalid bulk length {stop - nl - 4}")
                if stop > end_of_buf:
                    self._keep(buf, start, pos, need, stop)
                    return frames
                if not buf.startswith(CRLF, stop - 2):
                    raise ProtocolError("bulk string not terminated by CRLF")
                pos = stop
                need -= 1


# ---------------------------------------------------------------------------------------------
# Full decoding of one complete frame.

_DOUBLE_RE = re.compile(rb"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?inf|[+-]?nan",
                        re.IGNORECASE)
_INT_RE = re.compile(rb"[+-]?\d+")


def _int(text: bytes, what: str) -> int:
    if _INT_RE.fullmatch(text) is None:
        raise ProtocolError(f"invalid {what} {text[:32]!r}")
    return int(text)


def _check_line(text: bytes) -> bytes:
    if b"\r" in text or b"\n" in text:
        raise ProtocolError("CR or LF inside a simple line")
    return text


def _build(kind: int, items: list[RespValue]) -> RespValue:
    if kind == 0x2A:  # *
        return Array(tuple(items))
    if kind == 0x7E:  # ~
        return Set(tuple(items))
    if kind == 0x3E:  # >
        return Push(tuple(items))
    pairs = tuple(zip(items[0::2], items[1::2], strict=False))
    if kind == 0x25:  # %
        return Map(pairs)
    return Attribute(pairs, items[-1])  # |: 2n items of pairs, then the annotated value


def decode_reply(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> RespValue:
    """Decode exactly one complete frame (as returned by `ReplyScanner`) into a value."""
    value, end = _decode_at(raw, 0, limits)
    if end != len(raw):
        raise ProtocolError(f"{len(raw) - end} bytes after the end of the frame")
    return value


def _decode_at(buf: bytes, pos: int, limits: Limits) -> tuple[RespValue, int]:
    """Decode the value starting at `pos`; an explicit stack instead of recursion."""
    stack: list[tuple[int, int, list[RespValue]]] = []  # (type byte, owed, items so far)
    size = len(buf)
    while True:
        if pos >= size:
            raise ProtocolError("frame truncated")
        kind = buf[pos]
        nl = buf.find(CRLF, pos + 1)
        if nl < 0:
            raise ProtocolError("frame truncated (no CRLF)")
        text = buf[pos + 1:nl]
        pos = nl + 2
        value: RespValue
        if kind == 0x2B:  # +
            value = SimpleString(_check_line(text))
        elif kind == 0x2D:  # -
            value = SimpleError(_check_line(text))
        elif kind == 0x3A:  # :
            value = Integer(_int(text, "integer"))
        elif kind == 0x23:  # #
            if text == b"t":
                value = Boolean(True)
            elif text == b"f":
                value = Boolean(False)
            else:
                raise ProtocolError(f"invalid boolean {text[:32]!r}")
        elif kind == 0x2C:  # ,
            if _DOUBLE_RE.fullmatch(text) is None:
                raise ProtocolError(f"invalid double {text[:32]!r}")
            value = Double(text, float(text))
        elif kind == 0x28:  # (
            value = BigNumber(_int(text, "big number"))
        elif kind == 0x5F:  # _
            if text:
                raise ProtocolError("null with content")
            value = Null(NullKind.RESP3)
        elif kind in (0x24, 0x21, 0x3D):  # $ ! =
            if kind == 0x24 and text == b"-1":
                value = Null(NullKind.BULK)
            else:
                if not text.isdigit() or len(text) > 18:
                    raise _bad_length("bulk", text)
                length = int(text)
                if length > limits.max_bulk:
                    raise ProtocolError(f"bulk length {length} over {limits.max_bulk}")
                stop = pos + length
                if stop + 2 > size:
                    raise ProtocolError("frame truncated inside a bulk string")
                if buf[stop:stop + 2] != CRLF:
                    raise ProtocolError("bulk string not terminated by CRLF")
                data = buf[pos:stop]
                pos = stop + 2
                if kind == 0x24:
                    value = BulkString(data)
                elif kind == 0x21:
                    value = BulkError(data)
                else:
                    if length < 4 or data[3:4] != b":":
                        raise ProtocolError("verbatim string without a 3-byte format")
                    value = VerbatimString(data[:3], data[4:])
        elif kind in (0x2A, 0x7E, 0x3E, 0x25, 0x7C):  # * ~ > % |
            if kind == 0x2A and text == b"-1":
                value = Null(NullKind.ARRAY)
            else:
                if not text.isdigit() or len(text) > 18:
                    raise _bad_length("aggregate", text)
                count = int(text)
                if count > limits.max_count:
                    raise ProtocolError(f"aggregate of {count} elements over {limits.max_count}")
                owed = count * 2 if kind in (0x25, 0x7C) else count
                if kind == 0x7C:
                    owed += 1
                if owed:
                    stack.append((kind, owed, []))
                    continue
                value = _build(kind, [])
        else:
            raise ProtocolError(f"unknown RESP type byte {bytes([kind])!r}")
        # Hand the finished value up the stack, closing every aggregate it completes.
        while stack:
            parent_kind, owed, items = stack[-1]
            items.append(value)
            if owed > 1:
                stack[-1] = (parent_kind, owed - 1, items)
                break
            stack.pop()
            value = _build(parent_kind, items)
        else:
            return value, pos


def decode_command(raw: bytes) -> list[bytes]:
    """The arguments of one complete client command (multibulk or inline)."""
    if raw[:1] != b"*":
        return split_inline(raw.rstrip(b"\n").removesuffix(b"\r"))
    nl = raw.find(CRLF)
    if nl < 0:
        raise ProtocolError("command truncated")
    count_text = raw[1:nl]
    if count_text == b"-1":
        count = 0
    elif count_text.isdigit():
        count = int(count_text)
    else:
        raise ProtocolError(f"invalid multibulk length {count_text[:32]!r}")
    pos = nl + 2
    args: list[bytes] = []
    for _ in range(count):
        if raw[pos:pos + 1] != b"$":
            raise ProtocolError(f"expected '$', got {raw[pos:pos + 1]!r}")
        nl = raw.find(CRLF, pos)
        if nl < 0:
            raise ProtocolError("command truncated")
        length_text = raw[pos + 1:nl]
        if not length_text.isdigit():
            raise ProtocolError(f"invalid bulk length {length_text[:32]!r}")
        start = nl + 2
        stop = start + int(length_text)
        if raw[stop:stop + 2] != CRLF:
            raise ProtocolError("bulk string not terminated by CRLF")
        args.append(raw[start:stop])
        pos = stop + 2
    if pos != len(raw):
        raise ProtocolError(f"{len(raw) - pos} bytes after the end of the command")
    return args


_INLINE_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b",
                   ord("a"): b"\a"}
_HEX = b"0123456789abcdefABCDEF"


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command line into arguments the way redis-server's sdssplitargs does:
    spaces separate, "double quotes" take C escapes and \\xHH, 'single quotes' take \\'."""
    args: list[bytes] = []
    pos, size = 0, len(line)
    while True:
        while pos < size and line[pos] in b" \t\n\r\x0b\x0c\x00":
            pos += 1
        if pos >= size:
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            if in_double:
                if pos >= size:
                    raise ProtocolError("unbalanced quotes in inline command")
                ch = line[pos]
                if (ch == 0x5C and pos + 3 < size and line[pos + 1] == 0x78
                        and line[pos + 2] in _HEX and line[pos + 3] in _HEX):
                    current.append(int(line[pos + 2:pos + 4], 16))
                    pos += 3
                elif ch == 0x5C and pos + 1 < size:
                    pos += 1
                    current += _INLINE_ESCAPES.get(line[pos], line[pos:pos + 1])
                elif ch == 0x22:
                    if pos + 1 < size and line[pos + 1] not in b" \t\n\r\x0b\x0c":
                        raise ProtocolError("closing quote must be followed by a space")
                    in_double = False
                    pos += 1
                    break
                else:
                    current.append(ch)
            elif in_single:
                if pos >= size:
                    raise ProtocolError("unbalanced quotes in inline command")
                ch = line[pos]
                if ch == 0x5C and pos + 1 < size and line[pos + 1] == 0x27:
                    pos += 1
                    current.append(0x27)
                elif ch == 0x27:
                    if pos + 1 < size and line[pos + 1] not in b" \t\n\r\x0b\x0c":
                        raise ProtocolError("closing quote must be followed by a space")
                    in_single = False
                    pos += 1
                    break
                else:
                    current.append(ch)
            else:
                if pos >= size:
                    break
                ch = line[pos]
                if ch in b" \t\n\r\x00":
                    break
                if ch == 0x22:
                    in_double = True
                elif ch == 0x27:
                    in_single = True
                else:
                    current.append(ch)
            pos += 1
        args.append(bytes(current))


# ---------------------------------------------------------------------------------------------
# Encoding.


def _line(prefix: bytes, text: bytes) -> bytes:
    if b"\r" in text or b"\n" in text:
        raise ValueError(f"a RESP simple line cannot contain CR or LF: {text[:32]!r}")
    return prefix + text + CRLF


def encode(value: RespValue | InlineCommand) -> bytes:
    """The wire bytes of `value`; aggregates are walked with an explicit stack."""
    out: list[bytes] = []
    stack: list[Iterable[RespValue]] = [iter((value,))]
    while stack:
        item = next(stack[-1], None)  # type: ignore[call-overload]
        if item is None:
            stack.pop()
            continue
        kind = type(item)
        if kind is BulkString:
            out.append(b"$%d\r\n%s\r\n" % (len(item.value), item.value))
        elif kind is SimpleString:
            out.append(_line(b"+", item.value))
        elif kind is SimpleError:
            out.append(_line(b"-", item.value))
        elif kind is Integer:
            out.append(b":%d\r\n" % item.value)
        elif kind is Array or kind is Set or kind is Push:
            prefix = b"*" if kind is Array else b"~" if kind is Set else b">"
            out.append(b"%s%d\r\n" % (prefix, len(item.items)))
            stack.append(iter(item.items))
        elif kind is Map:
            out.append(b"%%%d\r\n" % len(item.pairs))
            stack.append(iter([v for pair in item.pairs for v in pair]))
        elif kind is Attribute:
            out.append(b"|%d\r\n" % len(item.pairs))
            stack.append(iter([*(v for pair in item.pairs for v in pair), item.value]))
        elif kind is Null:
            out.append(item.kind.value)
        elif kind is Boolean:
            out.append(b"#t\r\n" if item.value else b"#f\r\n")
        elif kind is Double:
            if _DOUBLE_RE.fullmatch(item.text) is None:
                raise ValueError(f"not a RESP double: {item.text[:32]!r}")
            out.append(b",%s\r\n" % item.text)
        elif kind is BigNumber:
            out.append(b"(%d\r\n" % item.value)
        elif kind is BulkError:
            out.append(b"!%d\r\n%s\r\n" % (len(item.value), item.value))
        elif kind is VerbatimString:
            if len(item.format) != 3:
                raise ValueError(f"verbatim format must be 3 bytes: {item.format!r}")
            body = item.format + b":" + item.text
            out.append(b"=%d\r\n%s\r\n" % (len(body), body))
        elif kind is InlineCommand:
            if b"\n" in item.line or item.line.startswith(b"*"):
                raise ValueError("an inline command is one line that does not start with '*'")
            out.append(item.line + item.terminator)
        else:
            raise TypeError(f"not a RESP value: {item!r}")
    return b"".join(out)


def encode_command(*args: bytes | str | int) -> bytes:
    """A client command as an array of bulk strings, the form every driver sends."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


# ---------------------------------------------------------------------------------------------
# The h11-style parser: frames with their raw bytes, values decoded on demand.


class Frame:
    """One complete top-level frame: its exact raw bytes, and its value decoded on first use."""

    __slots__ = ("_value", "from_client", "raw")

    def __init__(self, raw: bytes, from_client: bool = False) -> None:
        self.raw = raw
        self.from_client = from_client
        self._value: RespValue | InlineCommand | None = None

    @property
    def value(self) -> RespValue | InlineCommand:
        """A reply's value; for a client frame an `Array` of `BulkString` or an `InlineCommand`."""
        if self._value is None:
            self._value = _decode_client_frame(self.raw) if self.from_client \
                else decode_reply(self.raw)
        return self._value

    @property
    def is_push(self) -> bool:
        return self.raw[:1] == b">"

    def __repr__(self) -> str:
        return f"Frame({self.raw[:60]!r}{'...' if len(self.raw) > 60 else ''})"


def _decode_client_frame(raw: bytes) -> RespValue | InlineCommand:
    if raw[:1] == b"*":
        if raw.startswith(b"*-1\r\n"):
            decode_command(raw)
            return Null(NullKind.ARRAY)
        return Array(tuple(BulkString(a) for a in decode_command(raw)))
    split_inline(raw.rstrip(b"\n").removesuffix(b"\r"))  # validates the quoting
    return InlineCommand(raw.rstrip(b"\n").removesuffix(b"\r"),
                         b"\r\n" if raw.endswith(b"\r\n") else b"\n")


class RespParser:
    """Feed bytes in any chunking, get back complete, fully validated frames.

    `client=True` reads what a client sends (commands, inline or multibulk); otherwise what a
    server sends (any RESP2/RESP3 value). After a `ProtocolError` the parser is unusable."""

    def __init__(self, *, client: bool = False, limits: Limits = DEFAULT_LIMITS) -> None:
        self.client = client
        self._scanner: _Scanner = CommandScanner(limits) if client else ReplyScanner(limits)
        self._broken: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        if self._broken is not None:
            raise ProtocolError(f"parser already failed: {self._broken}")
        try:
            raws = self._scanner.feed(data)
            frames = [Frame(raw, self.client) for raw in raws]
            for frame in frames:
                frame.value  # noqa: B018 - validate now, so errors surface at the bad frame
        except ProtocolError as exc:
            self._broken = exc
            raise
        return frames

    def eof(self) -> None:
        """The peer closed: an unfinished frame is an error."""
        if self._scanner.pending_bytes:
            raise ProtocolError(f"connection closed inside a frame "
                                f"({self._scanner.pending_bytes} bytes pending)")
