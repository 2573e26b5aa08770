"""Typed Postgres v3 protocol messages.

Every message is a frozen dataclass that keeps the exact bytes it was decoded from in `raw`
(excluded from equality, so a decoded message equals one built by hand). `encode()` builds
the wire bytes from the fields; for a decoded message it returns bytes identical to `raw`.

Strings are decoded as UTF-8 with `surrogateescape`, so bytes in any client encoding survive a
decode/encode round trip unchanged. OIDs and process ids are unsigned 32-bit integers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

from flux_proxy.pg.errors import ProtocolError

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")

PROTOCOL_3_0 = (3 << 16) | 0
PROTOCOL_3_2 = (3 << 16) | 2
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


def _str(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _cstr(value: str) -> bytes:
    data = _str(value)
    if b"\0" in data:
        raise ValueError(f"a protocol string cannot contain NUL: {value!r}")
    return data + b"\0"


def _byte(value: str) -> bytes:
    """A one-byte field (Describe kind, tx status, error field code); decoded with chr()."""
    data = value.encode("latin-1")
    if len(data) != 1:
        raise ValueError(f"expected exactly one byte, got {value!r}")
    return data


def frame(type_byte: bytes, body: bytes) -> bytes:
    """A typed message: type byte, Int32 length (including itself), body."""
    return type_byte + _U32.pack(len(body) + 4) + body


class Reader:
    """Cursor over one message body; every read is bounds-checked into a ProtocolError."""

    __slots__ = ("buf", "end", "pos", "what")

    def __init__(self, buf: bytes, pos: int, what: str) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf)
        self.what = what

    def _truncated(self, field_name: str) -> ProtocolError:
        return ProtocolError(f"{self.what}: truncated {field_name} at byte {self.pos}")

    # Each reader checks bounds inline (no helper call): the typed decoders use them a lot.

    def byte(self, field_name: str) -> str:
        pos = self.pos
        if pos >= self.end:
            raise self._truncated(field_name)
        self.pos = pos + 1
        return chr(self.buf[pos])

    def int16(self, field_name: str) -> int:
        pos = self.pos
        if self.end - pos < 2:
            raise self._truncated(field_name)
        self.pos = pos + 2
        return _I16.unpack_from(self.buf, pos)[0]  # type: ignore[no-any-return]

    def uint16(self, field_name: str) -> int:
        pos = self.pos
        if self.end - pos < 2:
            raise self._truncated(field_name)
        self.pos = pos + 2
        return _U16.unpack_from(self.buf, pos)[0]  # type: ignore[no-any-return]

    def int32(self, field_name: str) -> int:
        pos = self.pos
        if self.end - pos < 4:
            raise self._truncated(field_name)
        self.pos = pos + 4
        return _I32.unpack_from(self.buf, pos)[0]  # type: ignore[no-any-return]

    def uint32(self, field_name: str) -> int:
        pos = self.pos
        if self.end - pos < 4:
            raise self._truncated(field_name)
        self.pos = pos + 4
        return _U32.unpack_from(self.buf, pos)[0]  # type: ignore[no-any-return]

    def raw_bytes(self, n: int, field_name: str) -> bytes:
        if n < 0:
            raise ProtocolError(f"{self.what}: negative length {n} for {field_name}")
        pos = self.pos
        if self.end - pos < n:
            raise self._truncated(field_name)
        self.pos = pos + n
        return self.buf[pos:pos + n]

    def cstring(self, field_name: str) -> str:
        pos = self.pos
        nul = self.buf.find(b"\0", pos, self.end)
        if nul < 0:
            raise ProtocolError(f"{self.what}: unterminated string {field_name}")
        self.pos = nul + 1
        return self.buf[pos:nul].decode("utf-8", "surrogateescape")

    def nullable_bytes(self, field_name: str) -> bytes | None:
        """Int32 length (-1 for NULL) followed by that many bytes."""
        pos = self.pos
        if self.end - pos < 4:
            raise self._truncated(f"{field_name} length")
        n = _I32.unpack_from(self.buf, pos)[0]
        pos += 4
        if n == -1:
            self.pos = pos
            return None
        if n < 0:
            raise ProtocolError(f"{self.what}: negative length {n} for {field_name}")
        if self.end - pos < n:
            self.pos = pos
            raise self._truncated(field_name)
        self.pos = pos + n
        return self.buf[pos:pos + n]

    def rest(self) -> bytes:
        data = self.buf[self.pos:self.end]
        self.pos = self.end
        return data

    def at_end(self) -> bool:
        return self.pos >= self.end

    def finish(self) -> None:
        if self.pos != self.end:
            raise ProtocolError(f"{self.what}: {self.end - self.pos} unexpected trailing bytes")


class Message:
    """Base of all messages. `TYPE` is the type byte (b"" for untyped startup packets)."""

    __slots__ = ()
    TYPE: ClassVar[bytes] = b""
    raw: bytes

    def body(self) -> bytes:
        return b""

    def encode(self) -> bytes:
        return frame(self.TYPE, self.body())


def _raw() -> bytes:
    return field(default=b"", compare=False, repr=False)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Startup phase (untyped: Int32 length, Int32 code, body)


class StartupPacket(Message):
    __slots__ = ()

    def encode(self) -> bytes:
        body = self.body()
        return _U32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class StartupMessage(StartupPacket):
    protocol: int = PROTOCOL_3_0  # (major << 16) | minor: 3.0 and 3.2 in practice
    parameters: tuple[tuple[str, str], ...] = ()
    raw: bytes = _raw()

    @property
    def version(self) -> tuple[int, int]:
        return self.protocol >> 16, self.protocol & 0xFFFF

    @property
    def params(self) -> dict[str, str]:
        return dict(self.parameters)

    def body(self) -> bytes:
        parts = [_U32.pack(self.protocol)]
        for name, value in self.parameters:
            parts.append(_cstr(name))
            parts.append(_cstr(value))
        parts.append(b"\0")
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class SSLRequest(StartupPacket):
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _U32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest(StartupPacket):
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _U32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest(StartupPacket):
    """Secret key: 4 bytes in protocol 3.0, up to 256 bytes in 3.2."""

    process_id: int = 0
    secret_key: bytes = b"\0\0\0\0"
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _U32.pack(CANCEL_REQUEST_CODE) + _U32.pack(self.process_id) + self.secret_key


# --------------------------------------------------------------------------------------------
# Messages sent in both directions


@dataclass(frozen=True, slots=True)
class CopyData(Message):
    TYPE: ClassVar[bytes] = b"d"
    data: bytes = b""
    raw: bytes = _raw()

    def body(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class CopyDone(Message):
    TYPE: ClassVar[bytes] = b"c"
    raw: bytes = _raw()


# --------------------------------------------------------------------------------------------
# Frontend (client -> server)


@dataclass(frozen=True, slots=True)
class Query(Message):
    TYPE: ClassVar[bytes] = b"Q"
    sql: str = ""
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _cstr(self.sql)


@dataclass(frozen=True, slots=True)
class Parse(Message):
    TYPE: ClassVar[bytes] = b"P"
    statement: str = ""
    sql: str = ""
    param_oids: tuple[int, ...] = ()
    raw: bytes = _raw()

    def body(self) -> bytes:
        oids = self.param_oids
        return (_cstr(self.statement) + _cstr(self.sql) + _U16.pack(len(oids))
                + struct.pack(f"!{len(oids)}I", *oids))


def _nullable(value: bytes | None) -> bytes:
    return b"\xff\xff\xff\xff" if value is None else _U32.pack(len(value)) + value


def _formats(codes: tuple[int, ...]) -> bytes:
    return _U16.pack(len(codes)) + struct.pack(f"!{len(codes)}h", *codes)


@dataclass(frozen=True, slots=True)
class Bind(Message):
    TYPE: ClassVar[bytes] = b"B"
    portal: str = ""
    statement: str = ""
    param_formats: tuple[int, ...] = ()  # none = all text, one = applies to all, else per param
    params: tuple[bytes | None, ...] = ()  # None is SQL NULL
    result_formats: tuple[int, ...] = ()
    raw: bytes = _raw()

    def body(self) -> bytes:
        return b"".join((
            _cstr(self.portal), _cstr(self.statement), _formats(self.param_formats),
            _U16.pack(len(self.params)), *map(_nullable, self.params),
            _formats(self.result_formats)))


@dataclass(frozen=True, slots=True)
class Describe(Message):
    TYPE: ClassVar[bytes] = b"D"
    kind: str = "S"  # "S" prepared statement, "P" portal
    name: str = ""
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _byte(self.kind) + _cstr(self.name)


@dataclass(frozen=True, slots=True)
class Execute(Message):
    TYPE: ClassVar[bytes] = b"E"
    portal: str = ""
    max_rows: int = 0  # 0 = no limit
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _cstr(self.portal) + _U32.pack(self.max_rows)


@dataclass(frozen=True, slots=True)
class Sync(Message):
    TYPE: ClassVar[bytes] = b"S"
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class Flush(Message):
    TYPE: ClassVar[bytes] = b"H"
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class Close(Message):
    TYPE: ClassVar[bytes] = b"C"
    kind: str = "S"
    name: str = ""
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _byte(self.kind) + _cstr(self.name)


@dataclass(frozen=True, slots=True)
class Terminate(Message):
    TYPE: ClassVar[bytes] = b"X"
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    TYPE: ClassVar[bytes] = b"f"
    message: str = ""
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _cstr(self.message)


@dataclass(frozen=True, slots=True)
class FunctionCall(Message):
    TYPE: ClassVar[bytes] = b"F"
    function_oid: int = 0
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0
    raw: bytes = _raw()

    def body(self) -> bytes:
        return b"".join((_U32.pack(self.function_oid), _formats(self.arg_formats),
                         _U16.pack(len(self.args)), *map(_nullable, self.args),
                         _I16.pack(self.result_format)))


@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    """Cleartext or MD5 password ('p'); the same type byte carries the SASL/GSS replies."""

    TYPE: ClassVar[bytes] = b"p"
    password: str = ""
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _cstr(self.password)


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(Message):
    TYPE: ClassVar[bytes] = b"p"
    mechanism: str = "SCRAM-SHA-256"
    data: bytes | None = None
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _cstr(self.mechanism) + _nullable(self.data)


@dataclass(frozen=True, slots=True)
class SASLResponse(Message):
    TYPE: ClassVar[bytes] = b"p"
    data: bytes = b""
    raw: bytes = _raw()

    def body(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class GSSResponse(Message):
    TYPE: ClassVar[bytes] = b"p"
    data: bytes = b""
    raw: bytes = _raw()

    def body(self) -> bytes:
        return self.data


# --------------------------------------------------------------------------------------------
# Backend (server -> client)


class Authentication(Message):
    """Base of the 'R' messages; `CODE` is the Int32 that tells the variants apart."""

    __slots__ = ()
    TYPE: ClassVar[bytes] = b"R"
    CODE: ClassVar[int] = 0

    def payload(self) -> bytes:
        return b""

    def body(self) -> bytes:
        return _U32.pack(self.CODE) + self.payload()


@dataclass(frozen=True, slots=True)
class AuthenticationOk(Authentication):
    CODE: ClassVar[int] = 0
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class AuthenticationKerberosV5(Authentication):
    CODE: ClassVar[int] = 2
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(Authentication):
    CODE: ClassVar[int] = 3
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(Authentication):
    CODE: ClassVar[int] = 5
    salt: bytes = b"\0\0\0\0"
    raw: bytes = _raw()

    def payload(self) -> bytes:
        if len(self.salt) != 4:
            raise ValueError("an MD5 salt is 4 bytes")
        return self.salt


@dataclass(frozen=True, slots=True)
class AuthenticationGSS(Authentication):
    CODE: ClassVar[int] = 7
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class AuthenticationGSSContinue(Authentication):
    CODE: ClassVar[int] = 8
    data: bytes = b""
    raw: bytes = _raw()

    def payload(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class AuthenticationSSPI(Authentication):
    CODE: ClassVar[int] = 9
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(Authentication):
    CODE: ClassVar[int] = 10
    mechanisms: tuple[str, ...] = ("SCRAM-SHA-256",)
    raw: bytes = _raw()

    def payload(self) -> bytes:
        return b"".join(map(_cstr, self.mechanisms)) + b"\0"


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(Authentication):
    CODE: ClassVar[int] = 11
    data: bytes = b""
    raw: bytes = _raw()

    def payload(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(Authentication):
    CODE: ClassVar[int] = 12
    data: bytes = b""
    raw: bytes = _raw()

    def payload(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    TYPE: ClassVar[bytes] = b"S"
    name: str = ""
    value: str = ""
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _cstr(self.name) + _cstr(self.value)


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    """Secret key: 4 bytes in protocol 3.0, up to 256 bytes in 3.2."""

    TYPE: ClassVar[bytes] = b"K"
    process_id: int = 0
    secret_key: bytes = b"\0\0\0\0"
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _U32.pack(self.process_id) + self.secret_key


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    TYPE: ClassVar[bytes] = b"Z"
    status: str = "I"  # I idle, T in transaction, E failed transaction
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _byte(self.status)


@dataclass(frozen=True, slots=True)
class FieldDescription:
    name: str
    table_oid: int = 0
    column_attr: int = 0
    type_oid: int = 0
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0

    def encode(self) -> bytes:
        return _cstr(self.name) + struct.pack(
            "!IhIhih", self.table_oid, self.column_attr, self.type_oid, self.type_size,
            self.type_modifier, self.format)


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    TYPE: ClassVar[bytes] = b"T"
    fields: tuple[FieldDescription, ...] = ()
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _U16.pack(len(self.fields)) + b"".join(f.encode() for f in self.fields)


@dataclass(frozen=True, slots=True)
class DataRow(Message):
    TYPE: ClassVar[bytes] = b"D"
    values: tuple[bytes | None, ...] = ()
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _U16.pack(len(self.values)) + b"".join(map(_nullable, self.values))


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    TYPE: ClassVar[bytes] = b"C"
    tag: str = ""
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _cstr(self.tag)


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(Message):
    TYPE: ClassVar[bytes] = b"I"
    raw: bytes = _raw()


ERROR_FIELD_NAMES = {
    "S": "severity", "V": "severity_nonlocalized", "C": "sqlstate", "M": "message",
    "D": "detail", "H": "hint", "P": "position", "p": "internal_position",
    "q": "internal_query", "W": "where", "s": "schema_name", "t": "table_name",
    "c": "column_name", "d": "data_type_name", "n": "constraint_name", "F": "file",
    "L": "line", "R": "routine",
}


class _FieldsMessage(Message):
    """ErrorResponse and NoticeResponse: (code, value) pairs, NUL-terminated."""

    __slots__ = ()
    fields: tuple[tuple[str, str], ...]

    def body(self) -> bytes:
        parts = []
        for code, value in self.fields:
            if code == "\0":
                raise ValueError("an error field code cannot be NUL")
            parts.append(_byte(code) + _cstr(value))
        parts.append(b"\0")
        return b"".join(parts)

    def get(self, code: str) -> str | None:
        for c, v in self.fields:
            if c == code:
                return v
        return None

    @property
    def sqlstate(self) -> str | None:
        return self.get("C")

    @property
    def message(self) -> str | None:
        return self.get("M")

    @property
    def severity(self) -> str | None:
        return self.get("V") or self.get("S")

    def as_dict(self) -> dict[str, str]:
        """Every field under its documented name; unknown codes under `field_<code>`."""
        return {ERROR_FIELD_NAMES.get(c, f"field_{c}"): v for c, v in self.fields}


@dataclass(frozen=True, slots=True)
class ErrorResponse(_FieldsMessage):
    TYPE: ClassVar[bytes] = b"E"
    fields: tuple[tuple[str, str], ...] = ()
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class NoticeResponse(_FieldsMessage):
    TYPE: ClassVar[bytes] = b"N"
    fields: tuple[tuple[str, str], ...] = ()
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class ParseComplete(Message):
    TYPE: ClassVar[bytes] = b"1"
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class BindComplete(Message):
    TYPE: ClassVar[bytes] = b"2"
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class CloseComplete(Message):
    TYPE: ClassVar[bytes] = b"3"
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class NoData(Message):
    TYPE: ClassVar[bytes] = b"n"
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class PortalSuspended(Message):
    TYPE: ClassVar[bytes] = b"s"
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    TYPE: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...] = ()
    raw: bytes = _raw()

    def body(self) -> bytes:
        oids = self.type_oids
        return _U16.pack(len(oids)) + struct.pack(f"!{len(oids)}I", *oids)


class _CopyResponse(Message):
    __slots__ = ()
    format: int
    column_formats: tuple[int, ...]

    def body(self) -> bytes:
        return struct.pack("!bH", self.format, len(self.column_formats)) + struct.pack(
            f"!{len(self.column_formats)}h", *self.column_formats)


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"G"
    format: int = 0
    column_formats: tuple[int, ...] = ()
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"H"
    format: int = 0
    column_formats: tuple[int, ...] = ()
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"W"
    format: int = 0
    column_formats: tuple[int, ...] = ()
    raw: bytes = _raw()


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    TYPE: ClassVar[bytes] = b"A"
    process_id: int = 0
    channel: str = ""
    payload: str = ""
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _U32.pack(self.process_id) + _cstr(self.channel) + _cstr(self.payload)


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    TYPE: ClassVar[bytes] = b"v"
    newest_minor: int = 0
    unrecognized: tuple[str, ...] = ()
    raw: bytes = _raw()

    def body(self) -> bytes:
        return (_U32.pack(self.newest_minor) + _U32.pack(len(self.unrecognized))
                + b"".join(map(_cstr, self.unrecognized)))


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(Message):
    TYPE: ClassVar[bytes] = b"V"
    value: bytes | None = None
    raw: bytes = _raw()

    def body(self) -> bytes:
        return _nullable(self.value)


FrontendMessage = (Query | Parse | Bind | Describe | Execute | Sync | Flush | Close | Terminate
                   | CopyData | CopyDone | CopyFail | FunctionCall | PasswordMessage
                   | SASLInitialResponse | SASLResponse | GSSResponse)
StartupPacketMessage = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest
BackendMessage = (AuthenticationOk | AuthenticationKerberosV5 | AuthenticationCleartextPassword
                  | AuthenticationMD5Password | AuthenticationGSS | AuthenticationGSSContinue
                  | AuthenticationSSPI | AuthenticationSASL | AuthenticationSASLContinue
                  | AuthenticationSASLFinal | ParameterStatus | BackendKeyData | ReadyForQuery
                  | RowDescription | DataRow | CommandComplete | EmptyQueryResponse
                  | ErrorResponse | NoticeResponse | ParseComplete | BindComplete
                  | CloseComplete | NoData | PortalSuspended | ParameterDescription
                  | CopyInResponse | CopyOutResponse | CopyBothResponse | CopyData | CopyDone
                  | NotificationResponse | NegotiateProtocolVersion | FunctionCallResponse)
