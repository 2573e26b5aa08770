"""Sans-IO Postgres replay session: client bytes in, recorded answers out. No upstream exists.

One object per client connection. Answers come from three places (DESIGN.md, "Three
lifetimes"): the recorded greeting (session), the statement catalog for Parse/Describe/Close
and catalog reads (connection), and request checkpoints taken from the `ReplayBook` for each
Execute and simple Query (request).

Like a server, the session holds its answers until the client can expect them (Execute,
Flush, Sync, Query): a Bind is answered provisionally with BindComplete, and replaced by the
checkpoint's own answer when the recording shows that Bind failed. After an error (recorded or
a miss) it discards messages until Sync, still taking the checkpoints of discarded Executes as
the recording has them, and each Sync gets one ReadyForQuery with the transaction status the
recording had.

Request dicts are built by the record proxy's own `build_semantics`, from the client frames
grouped as the recorder groups them (messages since the last Execute/Flush/Sync/Query), so the
match keys of the same request recorded and replayed are equal.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from flux_proxy.matcher import Divergence, Match, MatchKind, collapse_whitespace, key_of
from flux_proxy.model import Exchange, Lifetime, Protocol, RequestTag
from flux_proxy.pg import messages as m
from flux_proxy.pg.auth import error_response
from flux_proxy.pg.codec import FrontendParser, decode_frontend
from flux_proxy.pg.errors import ProtocolError
from flux_proxy.pg.frontdoor import Cancel, Greeting, Refuse, Start
from flux_proxy.pg.frontdoor import Reply as GreetingReply
from flux_proxy.pg.replay_catalog import PgCatalog, Reply, split_replies
from flux_proxy.pg.semantic import (
    ExchangeContext,
    StatementInfo,
    build_semantics,
    sql_reads_only_catalog,
)
from flux_proxy.replay import ReplayBook

MISS_SQLSTATE = "FX001"  # no recorded answer: the replay stops at this IO boundary
MISMATCH_SQLSTATE = "FX002"  # a recorded answer exists but cannot serve this client as asked

PARSE_COMPLETE = m.ParseComplete().encode()
BIND_COMPLETE = m.BindComplete().encode()
CLOSE_COMPLETE = m.CloseComplete().encode()

_ERROR, _READY, _COPY_IN, _BACKEND_KEY = ord("E"), ord("Z"), ord("G"), ord("K")


def shorten(sql: str | None, limit: int = 120) -> str:
    text = collapse_whitespace(sql or "")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _cstring(frame: bytes, pos: int) -> tuple[str, int]:
    end = frame.index(0, pos)
    return frame[pos:end].decode("utf-8", "replace"), end + 1


def _effective_formats(formats: list[int], columns: int) -> list[int]:
    if not formats:
        return [0] * columns
    if len(formats) == 1:
        return formats * columns
    return formats[:columns]


class PgReplaySession:
    """One replayed client connection (see the module docstring)."""

    def __init__(self, book: ReplayBook, catalog: PgCatalog, connection: int,
                 tag: RequestTag) -> None:
        self.book = book
        self.catalog = catalog
        self.connection = connection
        self.tag = tag
        self.greeting = Greeting()
        self.frontend: FrontendParser | None = None  # once the greeting is over
        self.closed = False
        self.tx_status = "I"
        self.statements: dict[str, StatementInfo] = {}
        self.portals: dict[str, tuple[bytes, StatementInfo]] = {}  # name: (Bind, statement)
        self.discarding = False  # after an error, until Sync
        self.batch: list[bytes] = []  # client frames since the last boundary
        self.batch_answers: list[bytes] = []  # what those frames were answered
        self.held: list[bytes] = []  # answers the client cannot expect yet
        self.bind_slot: int | None = None  # where in `held` the last Bind's answer is
        # Parse/Describe answers the catalog does not have: their place in `held`, the message,
        # and the request as it stood. The checkpoint of the batch's Execute fills them in (the
        # recording has them there when, say, its Bind failed); without one they are a miss.
        self.unresolved: list[tuple[int, bytes, dict[str, Any]]] = []
        self.copy_rest: list[bytes] | None = None  # a reply's frames after CopyInResponse
        self.seq = 0
        self._out: list[bytes] = []
        # Resume gives each connection its own BackendKeyData (the recorded one is shared),
        # so that a CancelRequest quoting it can be routed to the live query.
        self.backend_key: bytes | None = None
        self.cancel_request: m.CancelRequest | None = None  # what a cancel connection asked

    # ------------------------------------------------------------------ bytes in, bytes out

    def receive(self, data: bytes) -> bytes:
        """Everything the client may read after sending `data`."""
        if self.frontend is None:
            self._greet(data)
        elif not self.closed:
            self._feed(data)
        out, self._out = self._out, []
        return b"".join(out)

    def _feed(self, data: bytes) -> None:
        assert self.frontend is not None
        try:
            frames = self.frontend.feed(data)
        except ProtocolError as exc:
            self._close_with(error_response("FATAL", "08P01", f"invalid frontend message: {exc}"))
            return
        for frame in frames:
            try:
                self._dispatch(frame)
            except (ProtocolError, ValueError, IndexError, struct.error) as exc:
                self._close_with(error_response(
                    "FATAL", "08P01", f"invalid frontend message {chr(frame[0])!r}: {exc}"))
            if self.closed:
                return

    def _dispatch(self, frame: bytes) -> None:
        """One client message; resume routes it between the recording and the server."""
        self._message(frame)

    def _close_with(self, frame: bytes) -> None:
        self._out.append(frame)
        self.closed = True

    def _greet(self, data: bytes) -> None:
        for action in self.greeting.receive(data):
            if isinstance(action, GreetingReply):
                self._out.append(action.data)
            elif isinstance(action, Refuse):
                self._close_with(error_response("FATAL", action.sqlstate, action.message))
            elif isinstance(action, Cancel):
                self.cancel_request = action.request  # resume routes it; replay has no need
                self.closed = True  # accepted: replayed answers never run long
            elif isinstance(action, Start):
                frames = self.catalog.greeting_for(action.startup.params)
                if frames is None:
                    self._close_with(error_response(
                        "FATAL", MISS_SQLSTATE,
                        "flux replay: the recording holds no Postgres session to answer from"))
                    return
                if self.backend_key is not None:
                    frames = [self.backend_key if f[0] == _BACKEND_KEY else f for f in frames]
                self._out += frames
                self.tx_status = chr(frames[-1][5])
                self.frontend = FrontendParser(startup=False)
                if action.rest:
                    self._feed(action.rest)

    def _message(self, frame: bytes) -> None:
        kind = chr(frame[0])
        if kind == "X":
            self.closed = True
            return
        if self.copy_rest is not None:
            if kind in "cf":  # CopyDone / CopyFail: the rest of the recorded reply follows
                self._answer(*self.copy_rest)
                self.copy_rest = None
                self._release()
            if kind in "dcf":
                self.batch.append(frame)
                return
        if kind in "QF":
            self._end_batch()  # as the recorder groups them: a Query is an exchange alone
        if kind in "PBDCEQF":
            self.batch.append(frame)
        if self.discarding:
            # Unanswered, but kept as the recorder keeps them, so that the requests of
            # discarded Executes are built as they were recorded.
            if kind == "P":
                self._remember_parse(frame)
            elif kind == "B":
                self._remember_bind(frame)
            elif kind == "E":
                self._execute(frame, answer=False)
            elif kind == "S":
                self._sync()
        else:
            handler = {"P": self._parse, "B": self._bind, "D": self._describe,
                       "C": self._close, "E": self._execute, "S": self._sync,
                       "H": self._flush, "Q": self._query, "F": self._function_call}.get(kind)
            if handler is not None:
                handler(frame)
        if kind in "ESHQF":
            self._end_batch()

    # ------------------------------------------------------------------ held answers

    def _answer(self, *frames: bytes) -> None:
        self.held += frames
        self.batch_answers += frames

    def _defer(self, frame: bytes, request: dict[str, Any]) -> None:
        self.unresolved.append((len(self.held), frame, request))
        self.held.append(b"")

    def _drop_unresolved(self) -> None:
        if self.unresolved:
            del self.held[self.unresolved[0][0]:]
            self.unresolved = []

    def _release(self) -> None:
        """Send what is held (at Execute, Flush, Sync, Query, or an error)."""
        if self.unresolved:  # no checkpoint came to answer them: a miss
            request = self.unresolved[0][2]
            self._drop_unresolved()
            self._miss(request, "statement")
            return
        self.bind_slot = None
        self._out += self.held
        self.held = []

    def _end_batch(self) -> None:
        self.batch = []
        self.batch_answers = []

    def _fail(self, error: bytes) -> None:
        """Answer an error; the server then ignores everything up to Sync."""
        self._answer(error)
        self.discarding = True
        self.tx_status = _status_after_error(self.tx_status)
        self._release()

    # ------------------------------------------------------------------ statements

    def _remember_parse(self, frame: bytes) -> StatementInfo:
        statement = StatementInfo(frame[5:frame.index(0, 5)], frame)  # type: ignore[arg-type]
        self.statements[_cstring(frame, 5)[0]] = statement
        return statement

    def _remember_bind(self, frame: bytes) -> str | None:
        """The portal's statement name, when that statement does not exist."""
        portal, pos = _cstring(frame, 5)
        name, _ = _cstring(frame, pos)
        statement = self.statements.get(name)
        if statement is None:
            return name
        self.portals[portal] = (frame, statement)
        return None

    def _parse(self, frame: bytes) -> None:
        statement = self._remember_parse(frame)
        entry = self.catalog.statement(statement.sql)
        if entry is None or not (entry.parsed or entry.parse_error):
            self._defer(frame, self._extended_request(None, None))
        elif entry.parse_error is not None:
            self._fail(entry.parse_error)
        else:
            self._answer(PARSE_COMPLETE)

    def _bind(self, frame: bytes) -> None:
        missing = self._remember_bind(frame)
        if missing is not None:
            self._fail(error_response("ERROR", "26000",
                                      f'prepared statement "{missing}" does not exist'))
            return
        self.bind_slot = len(self.held)
        self._answer(BIND_COMPLETE)  # provisional: the checkpoint may show that it failed

    def _describe(self, frame: bytes) -> None:
        name, _ = _cstring(frame, 6)
        if frame[5] == ord("S"):
            statement = self.statements.get(name)
            if statement is None:
                self._fail(error_response("ERROR", "26000",
                                          f'prepared statement "{name}" does not exist'))
                return
            parse = decode_frontend(statement.parse)
            assert isinstance(parse, m.Parse)
            entry = self.catalog.statement(parse.sql)
            params = entry.param_description(parse.param_oids) if entry else None
            if entry is None or params is None or not entry.described:
                self._defer(frame, self._extended_request(statement, None))
                return
            rows = entry.row_answer([])
            statement.param_description = params
            statement.row_description = rows if rows[0] == ord("T") else None
            self._answer(params, rows)
            return
        portal = self.portals.get(name)
        if portal is None:
            self._fail(error_response("ERROR", "34000", f'portal "{name}" does not exist'))
            return
        bind_frame, statement = portal
        entry = self.catalog.statement(statement.sql)
        if entry is None or not entry.described:
            self._defer(frame, self._extended_request(statement, bind_frame))
            return
        bind = decode_frontend(bind_frame)
        assert isinstance(bind, m.Bind)
        self._answer(entry.row_answer(list(bind.result_formats)))

    def _close(self, frame: bytes) -> None:
        name, _ = _cstring(frame, 6)
        (self.statements if frame[5] == ord("S") else self.portals).pop(name, None)
        self._answer(CLOSE_COMPLETE)

    def _flush(self, _frame: bytes) -> None:
        self._release()

    def _sync(self, _frame: bytes | None = None) -> None:
        self._release()  # a pending miss first: its error precedes ReadyForQuery
        self.discarding = False
        self._out.append(m.ReadyForQuery(self.tx_status).encode())
        if self.tx_status == "I":
            self.portals.clear()

    # ------------------------------------------------------------------ request checkpoints

    def _extended_request(self, statement: StatementInfo | None,
                          bind: bytes | None) -> dict[str, Any]:
        context = ExchangeContext("extended", statement, bind)
        request, _ = build_semantics(self.batch, self.batch_answers, context)
        return request

    def _execute(self, frame: bytes, answer: bool = True) -> None:
        portal = self.portals.get(_cstring(frame, 5)[0])
        if portal is None:
            if answer:
                self._fail(error_response("ERROR", "34000",
                                          f'portal "{_cstring(frame, 5)[0]}" does not exist'))
            return
        bind, statement = portal
        request = self._extended_request(statement, bind)
        if statement.reads_only_catalog():
            recorded = self.catalog.catalog_read(key_of(Protocol.POSTGRES, request),
                                                 request.get("sql") or "")
            if recorded is not None:
                if answer:
                    self._answer_extended(request, Match(MatchKind.EXACT, recorded), False,
                                          Lifetime.CONNECTION)
                return
        during_request = self.tag.current is not None
        match = self.book.take(key_of(Protocol.POSTGRES, request), during_request)
        if not answer:  # discarded after an error, as the recording has it
            response = match.checkpoint.response if match.checkpoint is not None else {}
            self._report(request, response, [], match, during_request)
        elif match.kind is MatchKind.MISS:
            self._drop_unresolved()
            self._miss(request, "answer", during_request, match)
        else:
            self._answer_extended(request, match, during_request)

    def _answer_extended(self, request: dict[str, Any], match: Match, during_request: bool,
                         lifetime: Lifetime = Lifetime.REQUEST) -> None:
        """The checkpoint's replies to this Execute, and to the batch's messages the catalog
        could not answer or whose recorded answer was an error (a failed Bind)."""
        checkpoint = match.checkpoint
        assert checkpoint is not None
        mismatch = _mismatch_of(request, checkpoint)
        if mismatch is not None:
            self._drop_unresolved()
            self._answer_mismatch(request, match, during_request, lifetime, *mismatch)
            return
        replies = split_replies(checkpoint.client_frames, checkpoint.server_frames)
        execute = next((r for r in reversed(replies) if r.message[0] == ord("E")), None)
        before = replies[:replies.index(execute)] if execute is not None else replies
        bind = _last_reply(before, b"B")
        start = len(self.held)
        if self.bind_slot is not None and bind is not None and bind.failed:
            start = self.bind_slot  # the recorded Bind failed: nothing after it ran
            del self.held[start:]
            self._answer(*bind.frames)
            execute = None
        unresolved, self.unresolved = self.unresolved, []
        for slot, message, _ in unresolved:
            if slot >= len(self.held):
                continue
            recorded = _last_reply(before, message[:1], message[5:6] if message[:1] == b"D"
                                   else b"")
            if recorded is None or not recorded.frames:
                del self.held[slot:]
                start, execute = min(start, slot), None
                break
            self.held[slot] = b"".join(recorded.frames)
        if execute is not None and execute.frames:
            frames = execute.frames
            copy_in = next((i for i, f in enumerate(frames) if f[0] == _COPY_IN), None)
            if copy_in is not None:
                self.copy_rest = frames[copy_in + 1:]
                frames = frames[:copy_in + 1]
            self._answer(*frames)
        elif start == len(self.held):  # neither a recorded error nor rows: cannot answer
            self._answer(error_response(
                "ERROR", MISMATCH_SQLSTATE, "flux replay: the recording has no reply to this "
                f"Execute as it was sent now: {shorten(request.get('sql'))}"))
        answered = self.held[start:]
        failed = any(f[:1] == b"E" for f in answered)
        if lifetime is Lifetime.REQUEST:
            self.tx_status = _status_from(checkpoint, request, failed, self.tx_status)
        if failed:
            self.discarding = True
        self._release()
        self._report(request, checkpoint.response, answered, match, during_request, lifetime)

    def _answer_mismatch(self, request: dict[str, Any], match: Match, during_request: bool,
                         lifetime: Lifetime, field: str, expected: Any, actual: Any) -> None:
        """An ErrorResponse naming the mismatch; reported as a divergence of that field."""
        checkpoint = match.checkpoint
        assert checkpoint is not None
        message = (f"flux replay: {shorten(request.get('sql'))}: the recording has {field} "
                   f"{expected} but this client asks for {actual}")
        divergences = list(match.divergences)
        if during_request:
            divergences.append(Divergence(checkpoint.seq, field, expected, actual))
        error = self._error(MISMATCH_SQLSTATE, message)
        response = {**checkpoint.response,
                    "error": {"sqlstate": MISMATCH_SQLSTATE, "message": message}}
        self._report(request, response, [error],
                     Match(MatchKind.DIVERGED, checkpoint, divergences), during_request,
                     lifetime)

    def _query(self, frame: bytes) -> None:
        self._release()
        request, _ = build_semantics([frame], [], ExchangeContext("simple"))
        key = key_of(Protocol.POSTGRES, request)
        if sql_reads_only_catalog(frame[5:]):
            recorded = self.catalog.catalog_read(key, request.get("sql") or "")
            if recorded is not None:
                replies = split_replies(recorded.client_frames, recorded.server_frames)
                frames = [f for f in replies[0].frames if f[0] != _READY] if replies else []
                frames.append(m.ReadyForQuery(self.tx_status).encode())
                self._answer(*frames)
                self._release()
                self._report(request, recorded.response, frames,
                             Match(MatchKind.EXACT, recorded), False, Lifetime.CONNECTION)
                return
        during_request = self.tag.current is not None
        match = self.book.take(key, during_request)
        if match.kind is MatchKind.MISS:
            self._miss(request, "answer", during_request, match)
            return
        checkpoint = match.checkpoint
        assert checkpoint is not None
        mismatch = _mismatch_of(request, checkpoint)
        if mismatch is not None:
            self._answer_mismatch(request, match, during_request, Lifetime.REQUEST, *mismatch)
            return
        replies = split_replies(checkpoint.client_frames, checkpoint.server_frames)
        frames = replies[0].frames if replies else []
        copy_in = next((i for i, f in enumerate(frames) if f[0] == _COPY_IN), None)
        if copy_in is not None:
            self.copy_rest, frames = frames[copy_in + 1:], frames[:copy_in + 1]
        ready = [f for f in frames + (self.copy_rest or []) if f[0] == _READY]
        if ready:
            self.tx_status = chr(ready[-1][5])
        self._answer(*frames)
        self._release()
        self._report(request, checkpoint.response, frames, match, during_request)

    def _function_call(self, frame: bytes) -> None:
        request, _ = build_semantics([frame], [], ExchangeContext("function"))
        self._miss(request, "function call", self.tag.current is not None)

    # ------------------------------------------------------------------ misses and reports

    def _error(self, sqlstate: str, message: str) -> bytes:
        """Answer an error as the server would: a simple Query then gets ReadyForQuery, an
        extended message makes the session discard until Sync."""
        error = error_response("ERROR", sqlstate, message)
        if self.batch[:1] and self.batch[0][:1] in (b"Q", b"F"):
            self.tx_status = _status_after_error(self.tx_status)
            self._answer(error, m.ReadyForQuery(self.tx_status).encode())
            self._release()
        else:
            self._fail(error)
        return error

    def _miss(self, request: dict[str, Any], what: str, during_request: bool | None = None,
              match: Match | None = None) -> None:
        """No recorded answer: FX001 naming the exchange, then discard until Sync."""
        if during_request is None:
            during_request = self.tag.current is not None
        label = shorten(request.get("sql")) if request.get("sql") else what
        message = f"flux replay: no recorded {what} for {label}" + (
            "" if during_request else " (during start-up)")
        error = self._error(MISS_SQLSTATE, message)
        response = {"command_tag": None, "columns": [], "rows": [], "row_count": 0,
                    "error": {"sqlstate": MISS_SQLSTATE, "message": message}}
        self._report(request, response, [error], match or Match(MatchKind.MISS),
                     during_request)

    def _report(self, request: dict[str, Any], response: dict[str, Any],
                server_frames: list[bytes], match: Match, during_request: bool,
                lifetime: Lifetime = Lifetime.REQUEST) -> None:
        self.seq += 1
        exchange = Exchange(
            protocol=Protocol.POSTGRES, connection=self.connection, seq=self.seq,
            lifetime=lifetime, request_id=self.tag.current, started_at=time.time(),
            duration=0.0, client_frames=list(self.batch), server_frames=list(server_frames),
            request=request, response=response,
            failed=match.kind is MatchKind.MISS or any(f[0] == _ERROR for f in server_frames))
        self.book.answered(exchange, match, during_request)


def _last_reply(replies: list[Reply], kind: bytes, describe_kind: bytes = b"") -> Reply | None:
    """The last reply to a message of this type (and Describe kind, S or P)."""
    for reply in reversed(replies):
        if reply.message[:1] == kind and (not describe_kind or
                                          reply.message[5:6] == describe_kind):
            return reply
    return None


def _status_after_error(status: str) -> str:
    return "E" if status != "I" else "I"


def _status_from(checkpoint: Exchange, request: dict[str, Any], failed: bool,
                 status: str) -> str:
    """The transaction status after a checkpoint: its recorded ReadyForQuery if it has one
    (the batch's Sync joined it), else what its command tag implies."""
    ready = [f for f in checkpoint.server_frames if f[0] == _READY]
    if ready:
        return chr(ready[-1][5])
    if failed:
        return _status_after_error(status)
    word = (checkpoint.response.get("command_tag") or "").split(" ", 1)[0]
    if word in ("BEGIN", "START"):
        return "T"
    sql = f" {collapse_whitespace(request.get('sql') or '').upper()} "
    if word in ("COMMIT", "ROLLBACK") and " TO " not in sql:
        return "I"
    return status


def _mismatch_of(request: dict[str, Any], checkpoint: Exchange) -> tuple[str, Any, Any] | None:
    """Why a recorded answer cannot be given to this client as it asks, if it cannot: result
    formats (binary/text) other than recorded, or another protocol flavour."""
    recorded = checkpoint.request
    simple_now, simple_then = bool(request.get("simple")), bool(recorded.get("simple"))
    columns = len(checkpoint.response.get("columns") or [])
    expected = _effective_formats([] if simple_then else list(recorded.get("result_formats")
                                                              or []), columns)
    actual = _effective_formats([] if simple_now else list(request.get("result_formats")
                                                           or []), columns)
    if expected != actual:
        return ("result formats", ["binary" if f else "text" for f in expected],
                ["binary" if f else "text" for f in actual])
    if simple_now != simple_then:
        return ("protocol", "simple Query" if simple_then else "Execute",
                "simple Query" if simple_now else "Execute")
    return None
