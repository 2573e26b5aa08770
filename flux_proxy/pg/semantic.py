"""Semantic request/response of a recorded Postgres exchange, decoded from its raw frames.

Runs off the proxy's hot path: `PgExchange` calls `build_semantics` the first time its
`request` or `response` is read. Raw frames stay the source of truth; these dicts are for
humans, matching and diffs.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from flux_proxy.pg import messages as m
from flux_proxy.pg.codec import decode_backend, decode_frontend, decode_startup
from flux_proxy.pg.errors import ProtocolError


@dataclass(slots=True, eq=False)
class StatementInfo:
    """A prepared statement: its Parse frame and, once described, the server's descriptions."""

    name: bytes
    parse: bytes
    param_description: bytes | None = None
    row_description: bytes | None = None
    _catalog: bool | None = None
    _parsed: m.Parse | None = None

    @property
    def parsed(self) -> m.Parse:
        if self._parsed is None:
            self._parsed = _parse_of(self.parse)
        return self._parsed

    @property
    def sql(self) -> str:
        return self.parsed.sql

    def reads_only_catalog(self) -> bool:
        if self._catalog is None:
            parse = self.parse
            if b"pg_type" not in parse:
                self._catalog = False
            else:
                start = parse.index(b"\0", 5) + 1
                self._catalog = sql_reads_only_catalog(parse[start:parse.index(b"\0", start)])
        return self._catalog


@dataclass(slots=True, eq=False)
class ExchangeContext:
    """What an exchange needs from the session state as it was when the exchange completed."""

    kind: str  # simple | extended | function | session
    statement: StatementInfo | None = None
    bind: bytes | None = None  # the Bind behind its Execute (possibly from an earlier exchange)
    broken: str | None = None  # why the connection broke mid-exchange


# --------------------------------------------------------------------------------------------
# Catalog introspection (driver type lookups are CONNECTION lifetime)


def sql_reads_only_catalog(sql: bytes) -> bool:
    """True for driver type introspection: a SELECT reading only type-system catalogs."""
    if b"pg_type" not in sql:
        return False
    return _catalog_only(sql.rstrip(b"\0").decode("utf-8", "replace"))


# The catalogs drivers read to learn about types (asyncpg, postgres.js fetch_types, pg).
_TYPE_CATALOGS = frozenset((
    "pg_type", "pg_namespace", "pg_range", "pg_attribute", "pg_class", "pg_enum", "pg_proc",
    "pg_collation", "pg_attrdef", "pg_index", "pg_constraint", "pg_description", "pg_depend",
    "pg_multirange"))


@lru_cache(maxsize=1024)
def _catalog_only(sql: str) -> bool:
    """A SELECT over type-system catalogs that reads pg_type: driver type introspection.

    Application reads of catalog views (pg_stat_activity, pg_settings) stay REQUEST lifetime.
    """
    from pglast import parser

    try:
        tree = json.loads(parser.parse_sql_json(sql))
    except Exception:  # pglast raises its own ParseError; anything unparsable is not catalog
        return False
    stmts = tree.get("stmts", [])
    if not stmts or any(set(s.get("stmt", {})) != {"SelectStmt"} for s in stmts):
        return False
    relations: list[dict[str, Any]] = []
    ctes: set[str] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "RangeVar":
                    relations.append(value)
                elif key == "CommonTableExpr":
                    ctes.add(value.get("ctename", ""))
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    reads_types = False
    for rel in relations:
        schema, name = rel.get("schemaname"), rel.get("relname", "")
        if schema is None and name in ctes:
            continue
        if schema not in (None, "pg_catalog") or name not in _TYPE_CATALOGS:
            return False
        reads_types = reads_types or name == "pg_type"
    return reads_types


# --------------------------------------------------------------------------------------------
# Values


def _int(fmt: str) -> Any:
    size = struct.calcsize(fmt)
    return lambda b: struct.unpack(fmt, b)[0] if len(b) == size else _b64(b)


def _float(fmt: str) -> Any:
    def decode(b: bytes) -> Any:
        if len(b) != struct.calcsize(fmt):
            return _b64(b)
        value = struct.unpack(fmt, b)[0]
        return value if math.isfinite(value) else str(value)
    return decode


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _b64(b: bytes) -> dict[str, str]:
    return {"base64": base64.b64encode(b).decode()}


_BINARY_DECODERS: dict[int, Any] = {
    16: lambda b: b == b"\x01",  # bool
    20: _int("!q"), 21: _int("!h"), 23: _int("!i"), 26: _int("!I"),  # int8 int2 int4 oid
    700: _float("!f"), 701: _float("!d"),
    25: _text, 1043: _text, 1042: _text, 19: _text, 705: _text, 114: _text,  # text-like, json
    3802: lambda b: _text(b[1:]) if b[:1] == b"\x01" else _b64(b),  # jsonb (version 1)
    2950: lambda b: str(uuid.UUID(bytes=b)) if len(b) == 16 else _b64(b),
}


def decode_value(value: bytes | None, type_oid: int, fmt: int) -> Any:
    """Text values as strings, NULL as None, binary ones decoded for common types."""
    if value is None:
        return None
    if fmt == 0:
        return _text(value)
    decoder = _BINARY_DECODERS.get(type_oid)
    return _b64(value) if decoder is None else decoder(value)


def _format_of(i: int, formats: tuple[int, ...]) -> int:
    if not formats:
        return 0
    return formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)


# --------------------------------------------------------------------------------------------
# Exchanges


def _parse_of(frame: bytes) -> m.Parse:
    return decode_frontend(frame)  # type: ignore[return-value]


def _error_dict(msg: m.ErrorResponse) -> dict[str, Any]:
    out: dict[str, Any] = {"sqlstate": None, "message": None, "severity": None, "detail": None,
                           "hint": None}
    out.update(msg.as_dict())
    return out


def _columns(row_description: m.RowDescription | None,
             result_formats: tuple[int, ...] | None) -> list[dict[str, Any]]:
    if row_description is None:
        return []
    return [{"name": f.name, "type_oid": f.type_oid,
             "format": f.format if result_formats is None else _format_of(i, result_formats)}
            for i, f in enumerate(row_description.fields)]


def _row(values: tuple[bytes | None, ...], columns: list[dict[str, Any]]) -> list[Any]:
    out = []
    for i, value in enumerate(values):
        col = columns[i] if i < len(columns) else {"type_oid": 0, "format": 0}
        out.append(decode_value(value, col["type_oid"], col["format"]))
    return out


def _row_count(tag: str | None, rows: int) -> int:
    if tag:
        last = tag.rsplit(" ", 1)[-1]
        if last.isdigit() and tag.split(" ", 1)[0] in (
                "INSERT", "UPDATE", "DELETE", "SELECT", "MOVE", "FETCH", "COPY", "MERGE"):
            return int(last)
    return rows


class _Results:
    """Walks server frames into result sets, errors, notices and the final tx status."""

    def __init__(self, result_formats: tuple[int, ...] | None,
                 row_description: m.RowDescription | None) -> None:
        self.result_formats = result_formats
        self.results: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None
        self.described = row_description
        self.error: dict[str, Any] | None = None
        self.tx_status: str | None = None
        self.notices: list[dict[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []
        self.parameters: dict[str, str] = {}
        self.param_oids: tuple[int, ...] | None = None

    def _open(self, columns: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if self.current is None:
            if columns is None:
                columns = _columns(self.described, self.result_formats)
            self.current = {"command_tag": None, "columns": columns, "rows": []}
        return self.current

    def feed_frames(self, frames: list[bytes]) -> None:
        """The common reply frames are read in place; the rest are decoded to messages."""
        for frame in frames:
            t = frame[0]
            if t == 0x44 and len(frame) >= 7:  # DataRow
                current = self.current if self.current is not None else self._open()
                values = _data_row_values(frame)
                if values is None:
                    continue
                current["rows"].append(_row(values, current["columns"]))
            elif t == 0x43 and frame[-1] == 0:  # CommandComplete
                current = self.current if self.current is not None else self._open()
                current["command_tag"] = frame[5:-1].decode("utf-8", "replace")
                self.results.append(current)
                self.current = None
                if self.result_formats is None:
                    self.described = None
            elif t == 0x5A and len(frame) == 6:  # ReadyForQuery
                self.tx_status = chr(frame[5])
            elif t in _NOTHING_TO_SAY:  # ParseComplete, BindComplete, CloseComplete, NoData
                continue
            else:
                try:
                    msg = decode_backend(frame)
                except ProtocolError:
                    continue
                self.feed(msg)

    def feed(self, msg: m.Message) -> None:
        if isinstance(msg, m.RowDescription):
            self.described = msg
            self.current = None
            self._open(_columns(msg, self.result_formats))
        elif isinstance(msg, m.DataRow):
            current = self._open()
            current["rows"].append(_row(msg.values, current["columns"]))
        elif isinstance(msg, m.CommandComplete | m.EmptyQueryResponse | m.PortalSuspended):
            current = self._open()
            current["command_tag"] = msg.tag if isinstance(msg, m.CommandComplete) else None
            if isinstance(msg, m.PortalSuspended):
                current["suspended"] = True
            self.results.append(current)
            self.current = None
            self.described = None if self.result_formats is None else self.described
        elif isinstance(msg, m.CopyInResponse | m.CopyOutResponse | m.CopyBothResponse):
            current = self._open([])
            current["copy"] = {"direction": type(msg).__name__[4:-8].lower(),
                               "format": msg.format, "column_formats": list(msg.column_formats)}
        elif isinstance(msg, m.CopyData):
            current = self._open([])
            current["rows"].append(_text(msg.data) if current.get("copy", {}).get(
                "format") == 0 else _b64(msg.data))
        elif isinstance(msg, m.ErrorResponse):
            if self.error is None:
                self.error = _error_dict(msg)
        elif isinstance(msg, m.NoticeResponse):
            self.notices.append(msg.as_dict())
        elif isinstance(msg, m.NotificationResponse):
            self.notifications.append({"process_id": msg.process_id, "channel": msg.channel,
                                       "payload": msg.payload})
        elif isinstance(msg, m.ParameterStatus):
            self.parameters[msg.name] = msg.value
        elif isinstance(msg, m.ReadyForQuery):
            self.tx_status = msg.status
        elif isinstance(msg, m.ParameterDescription):
            self.param_oids = msg.type_oids
        elif isinstance(msg, m.FunctionCallResponse):
            self.results.append({"command_tag": None, "columns": [],
                                 "rows": [[decode_value(msg.value, 0, 1)]]})

    def response(self, broken: str | None) -> dict[str, Any]:
        last = self.results[-1] if self.results else (self.current or {})
        rows = last.get("rows", [])
        error = self.error
        if error is None and broken is not None:
            error = {"sqlstate": "08006", "message": broken, "severity": "FATAL",
                     "detail": None, "hint": None}
        out: dict[str, Any] = {
            "command_tag": last.get("command_tag"), "columns": last.get("columns", []),
            "rows": rows, "row_count": _row_count(last.get("command_tag"), len(rows)),
            "error": error, "tx_status": self.tx_status}
        if len(self.results) > 1:
            out["results"] = [{**r, "row_count": _row_count(r["command_tag"], len(r["rows"]))}
                              for r in self.results]
        if "copy" in last:
            out["copy"] = last["copy"]
        if self.notices:
            out["notices"] = self.notices
        if self.notifications:
            out["notifications"] = self.notifications
        if self.parameters:
            out["parameters"] = self.parameters
        return out


_NOTHING_TO_SAY = frozenset(b"123n")
_I32 = struct.Struct("!i")


def _data_row_values(frame: bytes) -> tuple[bytes | None, ...] | None:
    """DataRow column values, or None when the frame is malformed."""
    count = (frame[5] << 8) | frame[6]
    pos, end = 7, len(frame)
    values: list[bytes | None] = []
    unpack = _I32.unpack_from
    for _ in range(count):
        if pos + 4 > end:
            return None
        n = unpack(frame, pos)[0]
        pos += 4
        if n < 0:
            values.append(None)
            continue
        if pos + n > end:
            return None
        values.append(frame[pos:pos + n])
        pos += n
    return tuple(values) if pos == end else None


def _decode_all(frames: list[bytes]) -> list[m.Message]:
    out: list[m.Message] = []
    for frame in frames:
        try:
            out.append(decode_backend(frame))
        except ProtocolError:
            continue
    return out


def build_semantics(client_frames: list[bytes], server_frames: list[bytes],
                    context: ExchangeContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """The exchange's semantic request and response."""
    try:
        if context.kind == "session":
            return _session(client_frames, server_frames, context)
        if context.kind in ("simple", "function"):
            return _simple(client_frames, server_frames, context)
        return _extended(client_frames, server_frames, context)
    except ProtocolError as exc:
        return {"decode_error": str(exc)}, {"decode_error": str(exc)}


def _empty_request(sql: str | None, simple: bool) -> dict[str, Any]:
    return {"sql": sql, "params": [], "param_formats": [], "param_oids": [],
            "result_formats": [], "statement": None, "portal": None, "simple": simple}


def _simple(client_frames: list[bytes], server_frames: list[bytes],
            context: ExchangeContext) -> tuple[dict[str, Any], dict[str, Any]]:
    first = decode_frontend(client_frames[0])
    if isinstance(first, m.FunctionCall):
        request = _empty_request(None, True)
        request.update(function_oid=first.function_oid, param_formats=list(first.arg_formats),
                       params=[decode_value(v, 0, _format_of(i, first.arg_formats))
                               for i, v in enumerate(first.args)])
    else:
        request = _empty_request(first.sql if isinstance(first, m.Query) else None, True)
    copy_in = [f for f in client_frames[1:] if f[0] == 0x64]
    if copy_in:
        request["copy_data"] = [_text(f[5:]) for f in copy_in]
    results = _Results(None, None)
    results.feed_frames(server_frames)
    return request, results.response(context.broken)


def _extended(client_frames: list[bytes], server_frames: list[bytes],
              context: ExchangeContext) -> tuple[dict[str, Any], dict[str, Any]]:
    parse: m.Parse | None = None
    bind: m.Bind | None = None
    execute: m.Execute | None = None
    statement_name: str | None = None
    statement = context.statement
    for frame in client_frames:
        t = frame[0]
        if t == 0x50 and parse is None:
            parse = (statement.parsed if statement is not None and statement.parse is frame
                     else _parse_of(frame))
        elif t == 0x42:
            bind = decode_frontend(frame)  # type: ignore[assignment]
        elif t == 0x45:
            execute = decode_frontend(frame)  # type: ignore[assignment]
        elif t in (0x44, 0x43) and statement_name is None and frame[5] == 0x53:
            statement_name = frame[6:-1].decode("utf-8", "replace")
    if bind is None and context.bind is not None and execute is not None:
        bind = decode_frontend(context.bind)  # type: ignore[assignment]
    if statement is not None and (parse is None or bind is not None):
        parse = statement.parsed  # the statement the Bind/Execute actually used
    described_params = None
    described_rows = None
    if statement is not None:
        if statement.param_description is not None:
            described_params = decode_backend(statement.param_description)
        if statement.row_description is not None:
            described_rows = decode_backend(statement.row_description)
    results = _Results(bind.result_formats if bind is not None else None,
                       described_rows if execute is not None else None)  # type: ignore[arg-type]
    results.feed_frames(server_frames)
    oids = list(parse.param_oids) if parse is not None else []
    described = results.param_oids or (
        described_params.type_oids if isinstance(described_params, m.ParameterDescription)
        else None)
    if described:
        oids = [o or (described[i] if i < len(described) else 0)
                for i, o in enumerate(oids + [0] * (len(described) - len(oids)))]
    request = _empty_request(parse.sql if parse is not None else None, False)
    request["param_oids"] = oids
    request["statement"] = (bind.statement if bind is not None else
                            parse.statement if parse is not None else statement_name)
    if bind is not None:
        request["params"] = [
            decode_value(v, oids[i] if i < len(oids) else 0, _format_of(i, bind.param_formats))
            for i, v in enumerate(bind.params)]
        request["param_formats"] = list(bind.param_formats)
        request["result_formats"] = list(bind.result_formats)
        request["portal"] = bind.portal
    if execute is not None:
        request["portal"] = execute.portal
        if execute.max_rows:
            request["max_rows"] = execute.max_rows
    copy_in = [f for f in client_frames if f[0] == 0x64]
    if copy_in:
        request["copy_data"] = [_b64(f[5:]) for f in copy_in]
    response = results.response(context.broken)
    if execute is None and results.described is not None:
        response["columns"] = _columns(results.described, None)
    return request, response


def _session(client_frames: list[bytes], server_frames: list[bytes],
             context: ExchangeContext) -> tuple[dict[str, Any], dict[str, Any]]:
    request: dict[str, Any] = {}
    for frame in client_frames:
        startup = decode_startup(frame)
        if isinstance(startup, m.StartupMessage):
            major, minor = startup.version
            request = {"startup": startup.params, "protocol": f"{major}.{minor}"}
    results = _Results(None, None)
    backend_key = None
    for msg in _decode_all(server_frames):
        if isinstance(msg, m.BackendKeyData):
            backend_key = msg.process_id
        results.feed(msg)
    response = results.response(context.broken)
    response["backend_pid"] = backend_key
    return request, response
