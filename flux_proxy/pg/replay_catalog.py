"""What a Postgres replay answers from besides request checkpoints: greetings and statements.

Built once per replay proxy from the recorded exchanges' raw frames (the source of truth):

* greetings: each successful recorded startup, replayed on any number of connections;
* the statement catalog, per SQL text: did its Parse succeed (or the error it got), its
  ParameterDescription (per the Parse's parameter types) and its RowDescription or NoData.
  Statement names are resolved while walking each recorded connection, and forgotten: the
  client names its statements as it likes in replay. A statement prepared before the
  recording (cached by a pooled connection in an earlier request) is known from what its
  Execute's semantics kept: the described parameter types and the columns;
* catalog reads (driver type lookups, CONNECTION lifetime), answered as often as asked.

`split_replies` pairs each recorded client message with the server frames that answered it,
so a checkpoint's Execute reply can be told from its batch's ParseComplete/BindComplete.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field, replace
from typing import Any

from flux_proxy.matcher import RequestKey, collapse_whitespace, key_of
from flux_proxy.model import Exchange, Lifetime, Protocol
from flux_proxy.pg import messages as m
from flux_proxy.pg.codec import decode_backend, decode_frontend
from flux_proxy.pg.errors import ProtocolError

# Which backend type bytes end the reply to each client message that gets one.
REPLY_ENDS: dict[int, bytes] = {
    ord("P"): b"1", ord("B"): b"2", ord("C"): b"3", ord("D"): b"Tn", ord("E"): b"CIs",
    ord("S"): b"Z", ord("Q"): b"Z", ord("F"): b"Z"}
_EXTENDED = frozenset(b"PBCDE")
_SYNC, _ERROR = ord("S"), ord("E")


@dataclass(slots=True)
class Reply:
    """One client message and the server frames that answered it (none if it was skipped)."""

    message: bytes
    frames: list[bytes] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(f[0] == _ERROR for f in self.frames)


def split_replies(client_frames: list[bytes], server_frames: list[bytes]) -> list[Reply]:
    """Each client message that gets a reply, with its reply, as the server ordered them.

    After an error to an extended-protocol message the server skips to the next Sync: the
    messages in between keep empty replies. Asynchronous frames join the reply they came in.
    """
    replies = [Reply(f) for f in client_frames if f[0] in REPLY_ENDS]
    pending = deque(replies)
    last: Reply | None = None
    for frame in server_frames:
        if not pending:
            if last is not None:
                last.frames.append(frame)
            continue
        head = last = pending[0]
        head.frames.append(frame)
        kind = head.message[0]
        if frame[0] in REPLY_ENDS[kind]:
            pending.popleft()
        elif frame[0] == _ERROR and kind in _EXTENDED:
            pending.popleft()
            while pending and pending[0].message[0] != _SYNC:
                pending.popleft()
    return replies


def _cstring(frame: bytes, pos: int) -> str:
    return frame[pos:frame.index(0, pos)].decode("utf-8", "replace")


def with_formats(row_description: m.RowDescription, formats: list[int]) -> bytes:
    """The RowDescription a portal with these result formats gets (a statement's are 0)."""
    fields = row_description.fields
    if not formats:
        wanted = [0] * len(fields)
    elif len(formats) == 1:
        wanted = formats * len(fields)
    else:
        wanted = formats[:len(fields)] + [0] * (len(fields) - len(formats))
    return m.RowDescription(tuple(replace(f, format=fmt)
                                  for f, fmt in zip(fields, wanted, strict=True))).encode()


@dataclass(slots=True)
class StatementEntry:
    """What the server said about one SQL text, across the whole recording."""

    sql: str
    parsed: bool = False  # some Parse of it succeeded
    parse_error: bytes | None = None  # the ErrorResponse its Parse got, when none succeeded
    param_descriptions: dict[tuple[int, ...], bytes] = field(default_factory=dict)
    row_description: m.RowDescription | None = None
    no_data: bool = False

    @property
    def described(self) -> bool:
        return self.row_description is not None or self.no_data

    def param_description(self, param_oids: tuple[int, ...]) -> bytes | None:
        """The recorded ParameterDescription for a Parse with these declared types."""
        exact = self.param_descriptions.get(param_oids)
        if exact is not None:
            return exact
        return next(iter(self.param_descriptions.values()), None)

    def row_answer(self, formats: list[int]) -> bytes:
        if self.row_description is None:
            return m.NoData().encode()
        return with_formats(self.row_description, formats)


class PgCatalog:
    """Greetings, statements and catalog reads of one recording (see the module docstring)."""

    def __init__(self, exchanges: list[Exchange]) -> None:
        self.greetings: list[tuple[dict[str, str], list[bytes]]] = []
        self.statements: dict[str, StatementEntry] = {}
        self.catalog_reads: dict[str, list[tuple[RequestKey, Exchange]]] = defaultdict(list)
        self._collapsed: dict[str, StatementEntry] | None = None
        by_connection: dict[int, list[Exchange]] = defaultdict(list)
        for exchange in exchanges:
            if exchange.protocol is not Protocol.POSTGRES:
                continue
            if exchange.lifetime is Lifetime.SESSION:
                self._add_greeting(exchange)
            else:
                by_connection[exchange.connection].append(exchange)
        for recorded in by_connection.values():
            self._walk_connection(sorted(recorded, key=lambda x: x.seq))
        for recorded in by_connection.values():
            for exchange in recorded:
                self._learn_from_semantics(exchange)

    # ------------------------------------------------------------------ building

    def _add_greeting(self, exchange: Exchange) -> None:
        startup = exchange.request.get("startup")
        frames = exchange.server_frames
        if startup is None or exchange.failed or not frames or frames[-1][0] != ord("Z"):
            return
        if any(f[:9] == b"R\0\0\0\x08\0\0\0\0" for f in frames):  # AuthenticationOk
            self.greetings.append((dict(startup), list(frames)))

    def entry(self, sql: str) -> StatementEntry:
        found = self.statements.get(sql)
        if found is None:
            found = self.statements[sql] = StatementEntry(sql)
        return found

    def _walk_connection(self, exchanges: list[Exchange]) -> None:
        """Follow statement and portal names through one recorded connection, in order."""
        statements: dict[str, tuple[str, tuple[int, ...]]] = {}  # name: (sql, param oids)
        portals: dict[str, str] = {}  # name: sql
        for exchange in exchanges:
            if exchange.lifetime is Lifetime.CONNECTION and any(
                    f[0] in b"EQ" for f in exchange.client_frames):
                self._add_catalog_read(exchange)
            try:
                replies = split_replies(exchange.client_frames, exchange.server_frames)
                for reply in replies:
                    self._learn(reply, statements, portals)
            except (ProtocolError, ValueError):
                continue  # a malformed recorded frame teaches nothing

    def _learn(self, reply: Reply, statements: dict[str, tuple[str, tuple[int, ...]]],
               portals: dict[str, str]) -> None:
        message, frames = reply.message, reply.frames
        kind = message[0]
        if kind == ord("P"):
            parse = decode_frontend(message)
            assert isinstance(parse, m.Parse)
            statements[parse.statement] = (parse.sql, parse.param_oids)
            entry = self.entry(parse.sql)
            if any(f[0] == ord("1") for f in frames):
                entry.parsed, entry.parse_error = True, None
            elif not entry.parsed and reply.failed:
                entry.parse_error = next(f for f in frames if f[0] == _ERROR)
        elif kind == ord("B"):
            portal = _cstring(message, 5)
            statement = _cstring(message, message.index(0, 5) + 1)
            if statement in statements:
                portals[portal] = statements[statement][0]
        elif kind == ord("D"):
            name = _cstring(message, 6)
            if message[5] == ord("S"):
                if name not in statements:
                    return
                sql, oids = statements[name]
            elif name in portals:
                sql, oids = portals[name], ()
            else:
                return
            self._learn_description(self.entry(sql), oids, frames, message[5] == ord("S"))
        elif kind == ord("C"):
            (statements if message[5] == ord("S") else portals).pop(_cstring(message, 6), None)

    @staticmethod
    def _learn_description(entry: StatementEntry, oids: tuple[int, ...], frames: list[bytes],
                           of_statement: bool) -> None:
        for frame in frames:
            if frame[0] == ord("t") and of_statement:
                entry.param_descriptions.setdefault(oids, frame)
            elif frame[0] == ord("T") and entry.row_description is None:
                described = decode_backend(frame)
                assert isinstance(described, m.RowDescription)
                entry.row_description = described
            elif frame[0] == ord("n"):
                entry.no_data = True

    def _learn_from_semantics(self, exchange: Exchange) -> None:
        """A statement prepared outside this recording (in an earlier request, on a pooled
        connection) and only executed here: what its Execute's semantics tell of it.

        The parameter types are the ones the server described; the columns keep their names
        and types, and the fields the recording does not hold (table, column number, size,
        modifier) are sent as for a computed column.
        """
        frames = exchange.client_frames
        if not any(f[:1] == b"E" for f in frames) or any(f[:1] == b"P" for f in frames):
            return
        request, response = exchange.request, exchange.response
        sql = request.get("sql")
        if not sql or request.get("simple"):
            return
        entry = self.entry(sql)
        if not entry.parsed and entry.parse_error is None:
            entry.parsed = True  # it was executed, so it had parsed
        oids = tuple(request.get("param_oids") or ())
        if all(oids) and not entry.param_descriptions:
            entry.param_descriptions[oids] = m.ParameterDescription(oids).encode()
        if entry.described:
            return
        columns = response.get("columns") or []
        if columns:
            entry.row_description = m.RowDescription(tuple(
                m.FieldDescription(c["name"], type_oid=c["type_oid"]) for c in columns))
        elif response.get("command_tag") is not None:
            entry.no_data = True

    def _add_catalog_read(self, exchange: Exchange) -> None:
        request: dict[str, Any] = exchange.request
        sql = request.get("sql")
        if sql:
            self.catalog_reads[sql].append((key_of(Protocol.POSTGRES, request), exchange))

    # ------------------------------------------------------------------ answering

    def greeting_for(self, startup: dict[str, str]) -> list[bytes] | None:
        """The recorded greeting of the same startup parameters, else of the same user and
        database, else any: the server frames from AuthenticationOk to ReadyForQuery."""
        for recorded, frames in self.greetings:
            if recorded == startup:
                return frames
        for recorded, frames in self.greetings:
            if (recorded.get("user"), recorded.get("database")) == (
                    startup.get("user"), startup.get("database")):
                return frames
        return self.greetings[0][1] if self.greetings else None

    def statement(self, sql: str) -> StatementEntry | None:
        """The entry of this SQL text, else of the same text with other whitespace."""
        found = self.statements.get(sql)
        if found is None:
            if self._collapsed is None:
                self._collapsed = {}
                for text, entry in self.statements.items():
                    self._collapsed.setdefault(collapse_whitespace(text), entry)
            found = self._collapsed.get(collapse_whitespace(sql))
        return found

    def catalog_read(self, key: RequestKey, sql: str) -> Exchange | None:
        """A recorded catalog read of this SQL with these parameters (type lookups are
        answered as often as the driver asks; other parameters are not this lookup)."""
        return next((exchange for candidate, exchange in self.catalog_reads.get(sql, [])
                     if candidate == key), None)
