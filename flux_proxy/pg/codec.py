"""Sans-IO Postgres v3 parsers and decoders.

A parser is fed bytes in chunks of any size and returns the complete messages they finish.
Two paths:

* lazy (the proxy's hot path): `feed()` returns raw frames (`bytes`, type byte first). Only the
  5-byte header is read: the type byte is checked and the length bounded, nothing else;
* typed: `feed_messages()` returns decoded dataclasses; `decode_frontend`/`decode_backend`
  decode one raw frame when someone asks.

Every malformed input raises `ProtocolError`, and the parser stays failed afterwards. Buffering
is bounded by `max_message_size`: a header that announces more is refused as soon as it arrives.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Literal

from flux_proxy.pg import messages as m
from flux_proxy.pg.errors import ProtocolError

DEFAULT_MAX_MESSAGE_SIZE = (1 << 30) - 1  # PostgreSQL's own limit (MaxAllocSize)
MAX_STARTUP_PACKET_SIZE = 10000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
MAX_CANCEL_KEY_SIZE = 256  # protocol 3.2

FRONTEND_TYPES = b"QPBDESHCXdcfFp"
BACKEND_TYPES = b"RSKZTDCIEN123ntsGHWdcAvV"

_U32 = struct.Struct("!I")
_unpack_u32 = _U32.unpack_from

AuthHint = Literal["password", "sasl_initial", "sasl", "gss"]


try:  # the same split in C (setup.py builds it); FrameSplitter's loop is the reference
    from flux_proxy._scan import pg_split as _accelerated_split
except ImportError:  # pragma: no cover - only without a compiler at install time
    _accelerated_split = None


def _type_table(types: bytes) -> tuple[bool, ...]:
    return tuple(i in types for i in range(256))


FRONTEND_VALID = bytes(_type_table(FRONTEND_TYPES))  # `valid` tables for split_whole
BACKEND_VALID = bytes(_type_table(BACKEND_TYPES))


def _describe_byte(b: int) -> str:
    return repr(chr(b)) if 32 <= b < 127 else f"0x{b:02x}"


def split_whole(data: bytes, valid: bytes,
                limit: int = DEFAULT_MAX_MESSAGE_SIZE) -> list[bytes] | None:
    """The frames of `data` when it is exactly whole frames with valid headers (`valid`: 256
    bytes, non-zero for each accepted type byte), else None."""
    if _accelerated_split is not None and type(data) is bytes:
        frames, pos, _ = _accelerated_split(data, valid, limit)
    else:  # the splitter's reference loop
        splitter = FrameSplitter(bytes(i for i in range(256) if valid[i]), "any", limit)
        try:
            frames, pos, _ = splitter._split_exact(bytes(data))
        except ProtocolError:
            return None
    return frames if data and pos == len(data) else None  # type: ignore[no-any-return]


class FrameSplitter:
    """Splits a typed-message stream into raw frames reading only each 5-byte header."""

    __slots__ = ("_error", "_max", "_need", "_valid", "_valid_bytes", "buffer", "direction")

    def __init__(self, valid_types: bytes, direction: str,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._valid = _type_table(valid_types)
        self._valid_bytes = bytes(self._valid)  # the same table, for the C split
        self._max = max_message_size
        self.buffer = bytearray()
        self._need = 5  # bytes needed before the buffered prefix can yield a frame
        self._error: ProtocolError | None = None
        self.direction = direction

    @property
    def pending(self) -> int:
        """Bytes buffered towards an incomplete frame."""
        return len(self.buffer)

    def feed(self, data: bytes) -> list[bytes]:
        if self.buffer or self._error is not None or type(data) is not bytes:
            buf = self._take(data)
            if buf is None:
                return []
        else:  # the usual read: nothing buffered
            buf = data
        if _accelerated_split is None:
            frames, pos, need = self._split_exact(buf)
        else:
            frames, pos, need = _accelerated_split(buf, self._valid_bytes, self._max)
        if pos != len(buf):
            self._keep_rest(buf, pos, need)
        return frames  # type: ignore[no-any-return]

    def _take(self, data: bytes) -> bytes | None:
        """`data` after the buffered unfinished frame, as bytes; None while it is still short
        of the next frame's end. Raises the error that stopped an earlier feed."""
        if self._error is not None:
            raise self._error
        if not self.buffer:
            return bytes(data)
        self.buffer += data
        if len(self.buffer) < self._need:
            return None
        buf = bytes(self.buffer)
        self.buffer = bytearray()
        return buf

    def _keep_rest(self, buf: bytes, pos: int, need: int) -> None:
        """Keep the unfinished frame at `pos`, which needs `need` bytes (-1: a bad header)."""
        if need < 0:
            self._bad_header(buf[pos], _unpack_u32(buf, pos + 1)[0], self._max)
        self.buffer = bytearray(buf[pos:] if pos else buf)
        self._need = need

    def _split_exact(self, buf: bytes) -> tuple[list[bytes], int, int]:
        """The reference split: complete frames, where the rest begins, bytes it needs."""
        frames: list[bytes] = []
        append = frames.append
        pos = 0
        end = len(buf)
        last_header = end - 5
        valid = self._valid
        limit = self._max
        need = 5
        while pos <= last_header:
            length = _unpack_u32(buf, pos + 1)[0]
            if not (valid[buf[pos]] and 4 <= length <= limit):
                self._bad_header(buf[pos], length, limit)
            stop = pos + 1 + length
            if stop > end:
                need = stop - pos
                break
            append(buf[pos:stop])
            pos = stop
        return frames, pos, need

    def take_pending(self) -> bytes:
        """Hand over the buffered partial frame (when another reader takes the stream)."""
        data = bytes(self.buffer)
        self.buffer = bytearray()
        self._need = 5
        return data

    def eof(self) -> None:
        """The stream ended: a partially received message is an error."""
        if self.buffer:
            self._fail(f"{self.direction} stream ended inside a message "
                       f"({len(self.buffer)} bytes buffered)")

    def _bad_header(self, type_byte: int, length: int, limit: int) -> None:
        name = _describe_byte(type_byte)
        if not self._valid[type_byte]:
            self._fail(f"unknown {self.direction} message type {name}")
        if length < 4:
            self._fail(f"{self.direction} message {name} has invalid length {length}")
        self._fail(f"{self.direction} message {name} announces {length} bytes, over the "
                   f"{limit}-byte maximum")

    def _fail(self, message: str) -> None:
        self._error = ProtocolError(message)
        self.buffer = bytearray()
        raise self._error


# --------------------------------------------------------------------------------------------
# Startup phase


def decode_startup(raw: bytes) -> m.StartupPacketMessage:
    """Decode one untyped startup packet (length, code, body)."""
    if len(raw) < 8:
        raise ProtocolError(f"startup packet of {len(raw)} bytes is too short")
    length, code = struct.unpack_from("!II", raw)
    if length != len(raw):
        raise ProtocolError(f"startup packet length {length} does not match {len(raw)} bytes")
    if code == m.SSL_REQUEST_CODE or code == m.GSSENC_REQUEST_CODE:
        if length != 8:
            raise ProtocolError(f"SSLRequest/GSSENCRequest must be 8 bytes, got {length}")
        return m.SSLRequest(raw=raw) if code == m.SSL_REQUEST_CODE else m.GSSENCRequest(raw=raw)
    if code == m.CANCEL_REQUEST_CODE:
        key = raw[12:]
        if length < 16 or len(key) > MAX_CANCEL_KEY_SIZE:
            raise ProtocolError(f"CancelRequest of {length} bytes has an invalid key length")
        return m.CancelRequest(_unpack_u32(raw, 8)[0], key, raw=raw)
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
    reader = m.Reader(raw, 8, "StartupMessage")
    params: list[tuple[str, str]] = []
    while True:
        if reader.at_end():
            raise ProtocolError("StartupMessage: parameter list is not terminated")
        name = reader.cstring("parameter name")
        if name == "":
            break
        params.append((name, reader.cstring(f"value of {name}")))
    reader.finish()
    return m.StartupMessage(code, tuple(params), raw=raw)


def _looks_like_tls(prefix: bytes) -> bool:
    """A TLS record header: handshake (0x16), version 3.x."""
    return len(prefix) >= 2 and prefix[0] == 0x16 and prefix[1] == 0x03


# --------------------------------------------------------------------------------------------
# Frontend decoders


def _query(raw: bytes) -> m.Query:
    r = m.Reader(raw, 5, "Query")
    sql = r.cstring("query string")
    r.finish()
    return m.Query(sql, raw=raw)


def _formats(r: m.Reader, what: str) -> tuple[int, ...]:
    n = r.uint16(f"{what} count")
    return tuple(r.int16(what) for _ in range(n))


def _values(r: m.Reader, what: str) -> tuple[bytes | None, ...]:
    n = r.uint16(f"{what} count")
    return tuple(r.nullable_bytes(what) for _ in range(n))


def _parse(raw: bytes) -> m.Parse:
    r = m.Reader(raw, 5, "Parse")
    name = r.cstring("statement name")
    sql = r.cstring("query string")
    n = r.uint16("parameter type count")
    oids = tuple(r.uint32("parameter type") for _ in range(n))
    r.finish()
    return m.Parse(name, sql, oids, raw=raw)


def _bind(raw: bytes) -> m.Bind:
    r = m.Reader(raw, 5, "Bind")
    portal = r.cstring("portal name")
    statement = r.cstring("statement name")
    param_formats = _formats(r, "parameter format")
    params = _values(r, "parameter")
    result_formats = _formats(r, "result format")
    r.finish()
    return m.Bind(portal, statement, param_formats, params, result_formats, raw=raw)


def _describe_or_close(cls: type[m.Describe] | type[m.Close]) -> Callable[[bytes], m.Message]:
    def decode(raw: bytes) -> m.Message:
        r = m.Reader(raw, 5, cls.__name__)
        kind = r.byte("kind")
        if kind not in "SP":
            raise ProtocolError(f"{cls.__name__}: kind must be 'S' or 'P', got {kind!r}")
        name = r.cstring("name")
        r.finish()
        return cls(kind, name, raw=raw)
    return decode


def _execute(raw: bytes) -> m.Execute:
    r = m.Reader(raw, 5, "Execute")
    portal = r.cstring("portal name")
    max_rows = r.uint32("row limit")
    r.finish()
    return m.Execute(portal, max_rows, raw=raw)


def _empty(cls: type[m.Message]) -> Callable[[bytes], m.Message]:
    def decode(raw: bytes) -> m.Message:
        if len(raw) != 5:
            raise ProtocolError(f"{cls.__name__}: expected an empty body, got {len(raw) - 5} "
                                "bytes")
        return cls(raw=raw)  # type: ignore[call-arg]
    return decode


def _copy_data(raw: bytes) -> m.CopyData:
    return m.CopyData(raw[5:], raw=raw)


def _copy_fail(raw: bytes) -> m.CopyFail:
    r = m.Reader(raw, 5, "CopyFail")
    message = r.cstring("message")
    r.finish()
    return m.CopyFail(message, raw=raw)


def _function_call(raw: bytes) -> m.FunctionCall:
    r = m.Reader(raw, 5, "FunctionCall")
    oid = r.uint32("function oid")
    arg_formats = _formats(r, "argument format")
    args = _values(r, "argument")
    result_format = r.int16("result format")
    r.finish()
    return m.FunctionCall(oid, arg_formats, args, result_format, raw=raw)


def _auth_response(raw: bytes, hint: AuthHint | None) -> m.Message:
    """'p' carries four different bodies; which one depends on the server's last request.

    Without a hint: a SASLInitialResponse if it parses as one, a PasswordMessage if the body is
    a single NUL-terminated string, else SASLResponse (opaque bytes, always round-trips).
    """
    body = raw[5:]
    if hint == "password":
        r = m.Reader(raw, 5, "PasswordMessage")
        password = r.cstring("password")
        r.finish()
        return m.PasswordMessage(password, raw=raw)
    if hint == "sasl_initial":
        r = m.Reader(raw, 5, "SASLInitialResponse")
        mechanism = r.cstring("mechanism")
        data = r.nullable_bytes("initial response")
        r.finish()
        return m.SASLInitialResponse(mechanism, data, raw=raw)
    if hint == "sasl":
        return m.SASLResponse(body, raw=raw)
    if hint == "gss":
        return m.GSSResponse(body, raw=raw)
    nul = body.find(b"\0")
    if nul > 0 and body.startswith(b"SCRAM-") and len(body) >= nul + 5:
        n = struct.unpack_from("!i", body, nul + 1)[0]
        if (n == -1 and len(body) == nul + 5) or (n >= 0 and len(body) == nul + 5 + n):
            return _auth_response(raw, "sasl_initial")
    if nul >= 0 and nul == len(body) - 1:
        return _auth_response(raw, "password")
    return m.SASLResponse(body, raw=raw)


_FRONTEND_DECODERS: dict[int, Callable[[bytes], m.Message]] = {
    ord("Q"): _query, ord("P"): _parse, ord("B"): _bind,
    ord("D"): _describe_or_close(m.Describe), ord("E"): _execute,
    ord("S"): _empty(m.Sync), ord("H"): _empty(m.Flush), ord("C"): _describe_or_close(m.Close),
    ord("X"): _empty(m.Terminate), ord("d"): _copy_data, ord("c"): _empty(m.CopyDone),
    ord("f"): _copy_fail, ord("F"): _function_call,
}


def decode_frontend(raw: bytes, auth_hint: AuthHint | None = None) -> m.FrontendMessage:
    """Decode one typed frontend frame (as returned by `FrontendParser.feed`)."""
    if len(raw) < 5:
        raise ProtocolError(f"frontend frame of {len(raw)} bytes is shorter than its header")
    _check_length(raw, "frontend")
    try:
        if raw[0] == 0x70:  # 'p'
            return _auth_response(raw, auth_hint)  # type: ignore[return-value]
        decoder = _FRONTEND_DECODERS.get(raw[0])
        if decoder is None:
            raise ProtocolError(f"unknown frontend message type {_describe_byte(raw[0])}")
        return decoder(raw)  # type: ignore[return-value]
    except (struct.error, ValueError, IndexError) as exc:  # pragma: no cover - defensive
        raise ProtocolError(f"malformed frontend message {_describe_byte(raw[0])}: {exc}") from exc


def _check_length(raw: bytes, direction: str) -> None:
    length = _unpack_u32(raw, 1)[0]
    if length != len(raw) - 1:
        raise ProtocolError(f"{direction} frame length {length} does not match "
                            f"{len(raw) - 1} bytes")


# --------------------------------------------------------------------------------------------
# Backend decoders


def _authentication(raw: bytes) -> m.Message:
    r = m.Reader(raw, 5, "Authentication")
    code = r.uint32("authentication code")
    simple: dict[int, type[m.Authentication]] = {
        0: m.AuthenticationOk, 2: m.AuthenticationKerberosV5,
        3: m.AuthenticationCleartextPassword, 7: m.AuthenticationGSS, 9: m.AuthenticationSSPI}
    if code in simple:
        r.finish()
        return simple[code](raw=raw)  # type: ignore[call-arg]
    if code == 5:
        salt = r.raw_bytes(4, "MD5 salt")
        r.finish()
        return m.AuthenticationMD5Password(salt, raw=raw)
    if code == 10:
        mechanisms = []
        while True:
            name = r.cstring("SASL mechanism")
            if name == "":
                break
            mechanisms.append(name)
        r.finish()
        return m.AuthenticationSASL(tuple(mechanisms), raw=raw)
    opaque: dict[int, type[m.AuthenticationGSSContinue] | type[m.AuthenticationSASLContinue]
                 | type[m.AuthenticationSASLFinal]] = {
        8: m.AuthenticationGSSContinue, 11: m.AuthenticationSASLContinue,
        12: m.AuthenticationSASLFinal}
    if code in opaque:
        return opaque[code](r.rest(), raw=raw)
    raise ProtocolError(f"unknown authentication request code {code}")


def _parameter_status(raw: bytes) -> m.ParameterStatus:
    r = m.Reader(raw, 5, "ParameterStatus")
    name = r.cstring("name")
    value = r.cstring("value")
    r.finish()
    return m.ParameterStatus(name, value, raw=raw)


def _backend_key_data(raw: bytes) -> m.BackendKeyData:
    r = m.Reader(raw, 5, "BackendKeyData")
    pid = r.uint32("process id")
    key = r.rest()
    if not 4 <= len(key) <= MAX_CANCEL_KEY_SIZE:
        raise ProtocolError(f"BackendKeyData: secret key of {len(key)} bytes")
    return m.BackendKeyData(pid, key, raw=raw)


def _ready_for_query(raw: bytes) -> m.ReadyForQuery:
    r = m.Reader(raw, 5, "ReadyForQuery")
    status = r.byte("transaction status")
    r.finish()
    if status not in "ITE":
        raise ProtocolError(f"ReadyForQuery: unknown transaction status {status!r}")
    return m.ReadyForQuery(status, raw=raw)


def _row_description(raw: bytes) -> m.RowDescription:
    r = m.Reader(raw, 5, "RowDescription")
    n = r.uint16("field count")
    fields = []
    for _ in range(n):
        name = r.cstring("field name")
        fields.append(m.FieldDescription(
            name, r.uint32("table oid"), r.int16("column number"), r.uint32("type oid"),
            r.int16("type size"), r.int32("type modifier"), r.int16("format code")))
    r.finish()
    return m.RowDescription(tuple(fields), raw=raw)


def _data_row(raw: bytes) -> m.DataRow:
    r = m.Reader(raw, 5, "DataRow")
    values = _values(r, "column value")
    r.finish()
    return m.DataRow(values, raw=raw)


def _command_complete(raw: bytes) -> m.CommandComplete:
    r = m.Reader(raw, 5, "CommandComplete")
    tag = r.cstring("command tag")
    r.finish()
    return m.CommandComplete(tag, raw=raw)


def _fields(cls: type[m.ErrorResponse] | type[m.NoticeResponse]) -> Callable[[bytes], m.Message]:
    def decode(raw: bytes) -> m.Message:
        r = m.Reader(raw, 5, cls.__name__)
        fields = []
        while True:
            code = r.byte("field code")
            if code == "\0":
                break
            fields.append((code, r.cstring(f"field {code!r}")))
        r.finish()
        return cls(tuple(fields), raw=raw)
    return decode


def _parameter_description(raw: bytes) -> m.ParameterDescription:
    r = m.Reader(raw, 5, "ParameterDescription")
    n = r.uint16("parameter count")
    oids = tuple(r.uint32("parameter type") for _ in range(n))
    r.finish()
    return m.ParameterDescription(oids, raw=raw)


def _copy_response(cls: type[m.CopyInResponse] | type[m.CopyOutResponse]
                   | type[m.CopyBothResponse]) -> Callable[[bytes], m.Message]:
    def decode(raw: bytes) -> m.Message:
        r = m.Reader(raw, 5, cls.__name__)
        fmt = struct.unpack("!b", r.raw_bytes(1, "overall format"))[0]
        columns = _formats(r, "column format")
        r.finish()
        return cls(fmt, columns, raw=raw)
    return decode


def _notification(raw: bytes) -> m.NotificationResponse:
    r = m.Reader(raw, 5, "NotificationResponse")
    pid = r.uint32("process id")
    channel = r.cstring("channel")
    payload = r.cstring("payload")
    r.finish()
    return m.NotificationResponse(pid, channel, payload, raw=raw)


def _negotiate(raw: bytes) -> m.NegotiateProtocolVersion:
    r = m.Reader(raw, 5, "NegotiateProtocolVersion")
    minor = r.uint32("newest minor version")
    n = r.uint32("unrecognized option count")
    options = []
    for _ in range(n):
        options.append(r.cstring("option name"))
    r.finish()
    return m.NegotiateProtocolVersion(minor, tuple(options), raw=raw)


def _function_call_response(raw: bytes) -> m.FunctionCallResponse:
    r = m.Reader(raw, 5, "FunctionCallResponse")
    value = r.nullable_bytes("result")
    r.finish()
    return m.FunctionCallResponse(value, raw=raw)


_BACKEND_DECODERS: dict[int, Callable[[bytes], m.Message]] = {
    ord("R"): _authentication, ord("S"): _parameter_status, ord("K"): _backend_key_data,
    ord("Z"): _ready_for_query, ord("T"): _row_description, ord("D"): _data_row,
    ord("C"): _command_complete, ord("I"): _empty(m.EmptyQueryResponse),
    ord("E"): _fields(m.ErrorResponse), ord("N"): _fields(m.NoticeResponse),
    ord("1"): _empty(m.ParseComplete), ord("2"): _empty(m.BindComplete),
    ord("3"): _empty(m.CloseComplete), ord("n"): _empty(m.NoData),
    ord("t"): _parameter_description, ord("s"): _empty(m.PortalSuspended),
    ord("G"): _copy_response(m.CopyInResponse), ord("H"): _copy_response(m.CopyOutResponse),
    ord("W"): _copy_response(m.CopyBothResponse), ord("d"): _copy_data,
    ord("c"): _empty(m.CopyDone), ord("A"): _notification, ord("v"): _negotiate,
    ord("V"): _function_call_response,
}


def decode_backend(raw: bytes) -> m.BackendMessage:
    """Decode one typed backend frame (as returned by `BackendParser.feed`)."""
    if len(raw) < 5:
        raise ProtocolError(f"backend frame of {len(raw)} bytes is shorter than its header")
    _check_length(raw, "backend")
    decoder = _BACKEND_DECODERS.get(raw[0])
    if decoder is None:
        raise ProtocolError(f"unknown backend message type {_describe_byte(raw[0])}")
    try:
        return decoder(raw)  # type: ignore[return-value]
    except (struct.error, ValueError, IndexError) as exc:  # pragma: no cover - defensive
        raise ProtocolError(f"malformed backend message {_describe_byte(raw[0])}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Parsers


class BackendParser:
    """Server -> client stream. `feed()` is the lazy path, `feed_messages()` the typed one."""

    __slots__ = ("_splitter",)

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._splitter = FrameSplitter(BACKEND_TYPES, "backend", max_message_size)

    @property
    def pending(self) -> int:
        return self._splitter.pending

    def feed(self, data: bytes) -> list[bytes]:
        return self._splitter.feed(data)

    def feed_messages(self, data: bytes) -> list[m.BackendMessage]:
        return [decode_backend(f) for f in self._splitter.feed(data)]

    def take_pending(self) -> bytes:
        return self._splitter.take_pending()

    def eof(self) -> None:
        self._splitter.eof()


class FrontendParser:
    """Client -> server stream, starting with the untyped startup phase.

    The startup phase lasts until a StartupMessage: SSLRequest and GSSENCRequest keep it open
    (after a server 'S'/'G' the stream is encrypted; feed the plaintext to a new parser), and a
    CancelRequest ends the stream. `startup=False` starts directly with typed messages.
    """

    __slots__ = ("_cancelled", "_splitter", "_startup", "_startup_buf", "auth_hint")

    def __init__(self, startup: bool = True,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._splitter = FrameSplitter(FRONTEND_TYPES, "frontend", max_message_size)
        self._startup = startup
        self._startup_buf = bytearray()
        self._cancelled = False
        self.auth_hint: AuthHint | None = None  # set by whoever sees the server's auth request

    @property
    def in_startup(self) -> bool:
        return self._startup

    @property
    def pending(self) -> int:
        return len(self._startup_buf) + self._splitter.pending

    def feed(self, data: bytes) -> list[bytes]:
        """Raw frames: startup packets (untyped) first if any, then typed frames."""
        if not self._startup and not self._cancelled:
            return self._splitter.feed(data)
        startup, rest = self._feed_startup(data)
        frames = [p.raw for p in startup]
        if rest:
            frames += self._splitter.feed(rest)
        return frames

    def feed_messages(self, data: bytes) -> list[m.StartupPacketMessage | m.FrontendMessage]:
        if not self._startup and not self._cancelled:
            return [decode_frontend(f, self.auth_hint) for f in self._splitter.feed(data)]
        startup, rest = self._feed_startup(data)
        out: list[m.StartupPacketMessage | m.FrontendMessage] = list(startup)
        if rest:
            out += [decode_frontend(f, self.auth_hint) for f in self._splitter.feed(rest)]
        return out

    def eof(self) -> None:
        if self._startup_buf:
            raise ProtocolError(f"frontend stream ended inside a startup packet "
                                f"({len(self._startup_buf)} bytes buffered)")
        self._splitter.eof()

    def _feed_startup(self, data: bytes) -> tuple[list[m.StartupPacketMessage], bytes]:
        if self._cancelled:
            if data:
                raise ProtocolError("data after CancelRequest")
            return [], b""
        buf = self._startup_buf
        buf += data
        packets: list[m.StartupPacketMessage] = []
        while self._startup and len(buf) >= 4:
            if _looks_like_tls(buf):
                raise ProtocolError("received a TLS ClientHello: direct TLS connections are not "
                                    "supported here; connect with sslmode=disable")
            length = _unpack_u32(buf, 0)[0]
            if length < 8 or length > MAX_STARTUP_PACKET_SIZE:
                raise ProtocolError(f"invalid startup packet length {length}")
            if len(buf) < length:
                break
            packet = decode_startup(bytes(buf[:length]))
            del buf[:length]
            packets.append(packet)
            if isinstance(packet, m.StartupMessage):
                self._startup = False
            elif isinstance(packet, m.CancelRequest):
                self._cancelled = True
                if buf:
                    raise ProtocolError("data after CancelRequest")
        if self._startup:
            return packets, b""
        rest = bytes(buf)
        buf.clear()
        return packets, rest
