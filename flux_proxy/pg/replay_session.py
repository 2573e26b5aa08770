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

import time
from typing import Any

from flux_proxy.matcher import Divergence, Match, MatchKind, collapse_whitespace, key_of
from flux_proxy.model import Exchange, Lifetime, Protocol, RequestTag
from flux_proxy.pg import messages as m
from flux_proxy.pg.auth import error_response
from flux_proxy.pg.codec import FrontendParser, decode_frontend
from flux_proxy.pg.errors import ProtocolError
from flux_proxy.pg.frontdoor import Cancel, Greeting, Refuse, Reply, Start
from flux_proxy.pg.replay_catalog import PgCatalog, split_replies
from flux_proxy.pg.semantic import (
    ExchangeContext,
    StatementInfo,
    build_semantics,
    sql_reads_only_catalog,
)

MISS_SQLSTATE = "FX001"  # no recorded answer: the replay stops at this IO boundary
MISMATCH_SQLSTATE = "FX002"  # a recorded answer exists but cannot serve this client as asked

PARSE_COMPLETE = m.ParseComplete().encode()
BIND_COMPLETE = m.BindComplete().encode()
CLOSE_COMPLETE = m.CloseComplete().encode()

_ERROR, _READY, _COPY_IN = ord("E"), ord("Z"), ord("G")


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


def _status_after(command_tag: str | None, sql: str, failed: bool, status: str) -> str:
    """Transaction status after an exchange the recording has no ReadyForQuery for."""
    if failed:
        return "E" if status != "I" else "I"
    word = (command_tag or "").split(" ", 1)[0]
    if word in ("BEGIN", "START"):
        return "T"
    if word in ("COMMIT", "ROLLBACK") and " TO " not in f" {collapse_whitespace(sql).upper()} ":
        return "I"
    return status


class PgReplaySession:
    """One replayed client connection (see the module docstring)."""

    def __init__(self, book: Any, catalog: PgCatalog, connection: int, tag: RequestTag) -> None:
        self.book = book  # a flux_proxy.replay.ReplayBook
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
        self.copy_rest: list[bytes] | None = None  # a reply's frames after CopyInResponse
        self.seq = 0
        self._out: list[bytes] = []

    # ------------------------------------------------------------------ bytes in, bytes out

    def receive(self, data: bytes) -> bytes:
        """Everything the client may read after sending `data`."""
        if self.frontend is None:
            self._greet(data)
        elif not self.closed:
            try:
                frames = self.frontend.feed(data)
            except ProtocolError as exc:
                self._close_with(error_response("FATAL", "08P01",
                                                f"invalid frontend message: {exc}"))
                frames = []
            for frame in frames:
                self._message(frame)
                if self.closed:
                    break
        out, self._out = self._out, []
        return b"".join(out)

    def _close_with(self, frame: bytes) -> None:
        self._out.append(frame)
        self.closed = True

    def _greet(self, data: bytes) -> None:
        for action in self.greeting.receive(data):
            if isinstance(action, Reply):
                self._out.append(action.data)
            elif isinstance(action, Refuse):
                self._close_with(error_response("FATAL", action.sqlstate, action.message))
            elif isinstance(action, Cancel):
                self.closed = True  # accepted: replayed answers never run long
            elif isinstance(action, Start):
                frames = self.catalog.greeting_for(action.startup.params)
                if frames is None:
                    self._close_with(error_response(
                        "FATAL", MISS_SQLSTATE,
                        "flux replay: the recording holds no Postgres session to answer from"))
                    return
                self._out += frames
                self.tx_status = chr(frames[-1][5])
                self.frontend = FrontendParser(startup=False)
                if action.rest:
                    self._out.append(self.receive(action.rest))

    # ------------------------------------------------------------------ dispatch

    def _message(self, frame: bytes) -> None:
        kind = chr(frame[0])
        if kind == "X":
            self.closed = True
            return
        if self.copy_rest is not None:
            if kind in "cf":  # CopyDone / CopyFail: the rest of the recorded reply follows
                self.held += self.copy_rest
                self.batch_answers += self.copy_rest
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
            if kind == "E":
                self._execute(frame, answer=False)
            elif kind == "S":
                self._sync()
            if kind in "ESHQ":
                self._end_batch()
            return
        handler = {"P": self._parse, "B": self._bind, "D": self._describe, "C": self._close,
                   "E": self._execute, "S": self._sync, "H": self._release,
                   "Q": self._query, "F": self._function_call}.get(kind)
        if handler is not None:
            handler(frame)  # type: ignore[operator]
        if kind in "ESHQF":
            self._end_batch()

    def _answer(self, *frames: bytes) -> None:
        self.held += frames
        self.batch_answers += frames

    def _release(self, _flush: bytes | None = None) -> None:
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
        if self.tx_status == "T":
            self.tx_status = "E"
        self._release()

    # ------------------------------------------------------------------ statements

    def _parse(self, frame: bytes) -> None:
        parse = decode_frontend(frame)
        assert isinstance(parse, m.Parse)
        entry = self.catalog.statement(parse.sql)
        if entry is None or not (entry.parsed or entry.parse_error):
            self._miss(self._extended_request(None, None), "statement")
            return
        if entry.parse_error is not None:
            self._fail(entry.parse_error)
            return
        self.statements[parse.statement] = StatementInfo(frame[5:frame.index(0, 5)], frame)
        self._answer(PARSE_COMPLETE)

    def _bind(self, frame: bytes) -> None:
        portal, pos = _cstring(frame, 5)
        name, _ = _cstring(frame, pos)
        statement = self.statements.get(name)
        if statement is None:
            self._fail(error_response("ERROR", "26000",
                                      f'prepared statement "{name}" does not exist'))
            return
        self.portals[portal] = (frame, statement)
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
                self._miss(self._extended_request(statement, None), "description")
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
            self._miss(self._extended_request(statement, bind_frame), "description")
            return
        bind = decode_frontend(bind_frame)
        assert isinstance(bind, m.Bind)
        self._answer(entry.row_answer(list(bind.result_formats)))

    def _close(self, frame: bytes) -> None:
        name, _ = _cstring(frame, 6)
        (self.statements if frame[5] == ord("S") else self.portals).pop(name, None)
        self._answer(CLOSE_COMPLETE)

    def _sync(self, _frame: bytes | None = None) -> None:
        self.discarding = False
        self.held.append(m.ReadyForQuery(self.tx_status).encode())
        if self.tx_status == "I":
            self.portals.clear()
        self._release()

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
            self._miss(request, "answer", during_request, match)
        else:
            self._answer_extended(request, match, during_request)

    def _answer_extended(self, request: dict[str, Any], match: Match, during_request: bool,
                         lifetime: Lifetime = Lifetime.REQUEST) -> None:
        checkpoint = match.checkpoint
        assert checkpoint is not None
        if self._mismatch(request, match, during_request, lifetime):
            return
        replies = split_replies(checkpoint.client_frames, checkpoint.server_frames)
        executes = [i for i, r in enumerate(replies) if r.message[0] == ord("E")]
        execute = replies[executes[-1]] if executes else None
        binds = [r for r in replies[:executes[-1] if executes else 0] if r.message[0] == ord("B")]
        start = len(self.held)
        if self.bind_slot is not None and binds and binds[-1].failed:
            del self.held[self.bind_slot:]  # the recorded Bind failed: nothing after it ran
            start = len(self.held)
            self._answer(*binds[-1].frames)
            frames: list[bytes] = []
        elif execute is None or not execute.frames:
            sql = shorten(request.get("sql"))
            self._answer(error_response(
                "ERROR", MISMATCH_SQLSTATE, "flux replay: the recording has no reply to this "
                f"Execute (the server skipped it after an earlier error): {sql}"))
            frames = []
        else:
            frames = execute.frames
            copy_in = next((i for i, f in enumerate(frames) if f[0] == _COPY_IN), None)
            if copy_in is not None:
                self.copy_rest = frames[copy_in + 1:]
                frames = frames[:copy_in + 1]
            self._answer(*frames)
        answered = self.held[start:]
        failed = any(f[0] == _ERROR for f in answered)
        if lifetime is Lifetime.REQUEST:
            self._track_status(checkpoint, request, failed)
        if failed:
            self.discarding = True
        self._release()
        self._report(request, checkpoint.response, answered, match, during_request, lifetime)

    def _track_status(self, checkpoint: Exchange, request: dict[str, Any],
                      failed: bool) -> None:
        ready = [f for f in checkpoint.server_frames if f[0] == _READY]
        if ready:
            self.tx_status = chr(ready[-1][5])
        else:
            self.tx_status = _status_after(checkpoint.response.get("command_tag"),
                                           request.get("sql") or "", failed, self.tx_status)

    def _mismatch(self, request: dict[str, Any], match: Match, during_request: bool,
                  lifetime: Lifetime) -> bool:
        """A recorded answer this client cannot be given as it asks: an explicit error."""
        checkpoint = match.checkpoint
        assert checkpoint is not None
        recorded = checkpoint.request
        simple_now, simple_then = bool(request.get("simple")), bool(recorded.get("simple"))
        columns = len(checkpoint.response.get("columns") or [])
        if simple_now != simple_then:
            field, expected, actual = ("protocol", "simple Query" if simple_then else "Execute",
                                       "simple Query" if simple_now else "Execute")
        else:
            expected = _effective_formats(list(recorded.get("result_formats") or []), columns)
            actual = _effective_formats(list(request.get("result_formats") or []), columns)
            if simple_now or expected == actual:
                return False
            field = "result formats"
            expected = ["binary" if f else "text" for f in expected]
            actual = ["binary" if f else "text" for f in actual]
        message = (f"flux replay: {shorten(request.get('sql'))}: the recording has {field} "
                   f"{expected} but this client asks for {actual}")
        error = error_response("ERROR", MISMATCH_SQLSTATE, message)
        divergences = list(match.divergences)
        if during_request:
            divergences.append(Divergence(checkpoint.seq, field, expected, actual))
        if simple_now:
            self.tx_status = self._status_after_error()
            self.held += [error, m.ReadyForQuery(self.tx_status).encode()]
            self._release()
        else:
            self._fail(error)
        self._report(request, {**checkpoint.response, "error": {"sqlstate": MISMATCH_SQLSTATE,
                                                              "message": message}},
                     [error], Match(MatchKind.DIVERGED, checkpoint, divergences),
                     during_request, lifetime)
        return True

    def _status_after_error(self) -> str:
        return "E" if self.tx_status != "I" else "I"

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
        if self._mismatch(request, match, during_request, Lifetime.REQUEST):
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

    def _miss(self, request: dict[str, Any], what: str, during_request: bool | None = None,
              match: Match | None = None) -> None:
        """No recorded answer: FX001 naming the exchange, then discard until Sync."""
        if during_request is None:
            during_request = self.tag.current is not None
        label = shorten(request.get("sql")) if request.get("sql") else what
        message = f"flux replay: no recorded {what} for {label}" + (
            "" if during_request else " (during start-up)")
        error = error_response("ERROR", MISS_SQLSTATE, message)
        if request.get("simple"):
            status = self._status_after_error()
            self.held += [error, m.ReadyForQuery(status).encode()]
            self.tx_status = status
            self._release()
        else:
            self._fail(error)
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
