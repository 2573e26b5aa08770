"""Sans-IO Postgres resume session: the durable prefix answered from the recording, the rest
live, on one client connection.

The client is greeted from the recording, as in replay, and starts in recorded mode:

* start-up IO (no request tag) goes live, exchange by exchange, as any restart of the app
  would; the connection comes back to recorded mode once the live side owes nothing and is
  outside a transaction;
* during the request, an Execute or Query that the recording answers EXACTLY (the next durable
  checkpoint, same statement and parameters, same result formats) is answered from it;
* the first message the recording cannot answer that way (past the prefix, a divergence, a
  miss, a statement it never saw) switches the connection to live for good.

Going live carries the session state the client believes exists: the statements it prepared
against the recording are prepared upstream (their replies swallowed), and the messages of the
current batch that were answered locally but not yet released (the Parse/Bind of the Execute
that triggered the switch) are sent again, so the server answers them itself.

Live bytes are framed for the local record proxy (`PgRecordProxy`), which holds the real
credentials and records what runs live. This module writes no socket: `receive` takes client
bytes and returns what the client may read now, `take_live` gives the bytes owed to the live
connection (its StartupMessage first), `live_received` takes the live connection's bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flux_proxy.matcher import Divergence, Match, MatchKind, RequestKey
from flux_proxy.model import Exchange, RequestTag
from flux_proxy.pg import messages as m
from flux_proxy.pg.auth import error_response
from flux_proxy.pg.codec import BACKEND_TYPES, FrameSplitter, decode_backend
from flux_proxy.pg.errors import ProtocolError
from flux_proxy.pg.frontdoor import Action, Greeting, Start
from flux_proxy.pg.replay_catalog import PgCatalog
from flux_proxy.pg.replay_session import PgReplaySession
from flux_proxy.replay import ReplayBook

log = logging.getLogger("flux.pg.resume")

RESUME_SQLSTATE = "FX003"  # resume cannot go live here without breaking what the client sees

SYNC = m.Sync().encode()
_READY, _ERROR, _TERMINATE, _BACKEND_KEY = ord("Z"), ord("E"), ord("X"), ord("K")
_ENDS_LIVE_BATCH = frozenset(b"SQF")  # each gets one ReadyForQuery


class GoLive(Exception):
    """The recording cannot answer this message exactly: the server must."""

    def __init__(self, divergences: list[Divergence] | None = None) -> None:
        super().__init__("go live")
        self.divergences = divergences or []


class ExactAnswers:
    """The book as the recorded side sees it: an exact match or nothing (then: go live)."""

    def __init__(self, book: ReplayBook) -> None:
        self.book = book

    def take(self, key: RequestKey, during_request: bool) -> Match:
        match = self.book.take(key, during_request)
        if match.kind is not MatchKind.EXACT:
            raise GoLive(match.divergences)
        return match

    def answered(self, exchange: Exchange, match: Match, during_request: bool) -> None:
        self.book.answered(exchange, match, during_request)


class _WatchedGreeting(Greeting):
    """The replay greeting, remembering the client's StartupMessage for the live connection."""

    startup: m.StartupMessage | None = None

    def receive(self, data: bytes) -> list[Action]:
        actions = super().receive(data)
        for action in actions:
            if isinstance(action, Start):
                self.startup = action.startup
        return actions


class RecordedSide(PgReplaySession):
    """The replay session, with every answer that is not an exact recorded one turned into
    `GoLive`, and each client message handed to `route` (which decides recorded or live)."""

    def __init__(self, book: ReplayBook, catalog: PgCatalog, connection: int, tag: RequestTag,
                 route: Callable[[bytes], None]) -> None:
        super().__init__(ExactAnswers(book), catalog, connection, tag)  # type: ignore[arg-type]
        self.greeting: _WatchedGreeting = _WatchedGreeting()
        self.route = route

    def _dispatch(self, frame: bytes) -> None:
        self.route(frame)

    def message(self, frame: bytes) -> None:
        """Answer one client message from the recording, or raise `GoLive`."""
        self._message(frame)

    def _execute(self, frame: bytes, answer: bool = True) -> None:
        if answer:  # a discarded Execute (after a local error) takes no checkpoint here
            super()._execute(frame)

    def _miss(self, request: dict[str, Any], what: str, during_request: bool | None = None,
              match: Match | None = None) -> None:
        raise GoLive(match.divergences if match is not None else [])

    def _answer_mismatch(self, request: dict[str, Any], match: Match, during_request: bool,
                         lifetime: Any, field: str, expected: Any, actual: Any) -> None:
        seq = match.checkpoint.seq if match.checkpoint is not None else 0
        raise GoLive([*match.divergences, Divergence(seq, field, expected, actual)])

    def _function_call(self, frame: bytes) -> None:
        raise GoLive()

    def drop_unreleased(self) -> list[bytes]:
        """Forget the answers not yet released and the batch they answer; the batch's
        messages are returned, for the server to answer instead."""
        batch = self.batch
        self.held, self.unresolved, self.bind_slot, self.copy_rest = [], [], None, None
        self.batch, self.batch_answers = [], []
        self.discarding = False
        return batch

    def learn(self, frame: bytes) -> None:
        """A Parse/Close the server answered: the client's statements change the same way."""
        name = _cstring(frame, 6 if frame[0] == ord("C") else 5)
        if frame[0] == ord("P"):
            known = self.statements.get(name)
            if known is None or known.parse != frame:
                statement = self._remember_parse(frame)
                # Its parameter types, as the recording described them: binary parameters of
                # a later Bind are decoded with them, as they were when recorded.
                entry = self.catalog.statement(statement.sql)
                if entry is not None:
                    statement.param_description = entry.param_description(
                        statement.parsed.param_oids)
        elif frame[5] == ord("S"):
            self.statements.pop(name, None)

    def send_to_client(self, frame: bytes) -> None:
        self._out.append(frame)

    def take_output(self) -> bytes:
        out, self._out = self._out, []
        return b"".join(out)


def _cstring(frame: bytes, pos: int) -> str:
    return frame[pos:frame.index(0, pos)].decode("utf-8", "replace")


class PgResumeSession:
    """One resumed client connection (see the module docstring)."""

    def __init__(self, book: ReplayBook, catalog: PgCatalog, connection: int, tag: RequestTag,
                 divergences: list[Divergence] | None = None) -> None:
        self.tag = tag
        self.recorded = RecordedSide(book, catalog, connection, tag, self._route)
        self.divergences = divergences if divergences is not None else []
        self.live_for_good = False
        self.setup_errors: list[str] = []  # the server refused a statement we re-prepared
        self._live_out: list[bytes] = []
        self._link_opened = False  # its StartupMessage is queued
        self._link_greeted = False
        self._live_frames = FrameSplitter(BACKEND_TYPES, "backend")
        self._upstream_statements: dict[str, bytes] = {}  # name: Parse frame, as sent live
        self._owed_ready = 0  # ReadyForQuery the client awaits from the live side
        self._live_batch_open = False  # extended messages sent live since the last Sync
        self._upstream_tx = "I"
        self._swallow_ready = 0  # our own Syncs, answered up to their ReadyForQuery, unseen
        # The live connection's own cancel key (from the recording proxy's greeting): a client
        # cancelling its query is forwarded with it.
        self.live_key: tuple[int, bytes] | None = None

    # ------------------------------------------------------------------ bytes in, bytes out

    @property
    def closed(self) -> bool:
        return self.recorded.closed

    @property
    def live_link_wanted(self) -> bool:
        return self._link_opened

    def receive(self, data: bytes) -> bytes:
        """Client bytes in; what the client may read now (recorded answers) out."""
        return self.recorded.receive(data)

    def take_live(self) -> bytes:
        """The bytes owed to the live connection since the last call."""
        out, self._live_out = self._live_out, []
        return b"".join(out)

    def live_received(self, data: bytes) -> bytes:
        """Live connection bytes in; what the client may read out (our own replies removed)."""
        out: list[bytes] = []
        try:
            frames = self._live_frames.feed(data)
        except ProtocolError as exc:
            self._fatal("08P01", f"flux resume: invalid message from the live side: {exc}")
            return self._with_own_output(out)
        for frame in frames:
            kind = frame[0]
            if not self._link_greeted:  # the live connection's own greeting: the client has one
                if kind == _ERROR:
                    self.recorded.closed = True
                    out.append(frame)
                    break
                if kind == _BACKEND_KEY and len(frame) >= 9:
                    self.live_key = (int.from_bytes(frame[5:9], "big"), bytes(frame[9:]))
                self._link_greeted = kind == _READY
                continue
            if self._swallow_ready:  # replies to the session set-up the client never sent
                if kind == _READY:
                    self._swallow_ready -= 1
                elif kind == _ERROR:
                    self.setup_errors.append(_error_text(frame))
                    log.warning("pg resume: re-preparing upstream failed: %s", _error_text(frame))
                continue
            if kind == _READY:
                self._owed_ready = max(0, self._owed_ready - 1)
                self._upstream_tx = self.recorded.tx_status = chr(frame[5])
            out.append(frame)
        return self._with_own_output(out)

    def live_lost(self) -> bytes:
        """The live connection closed: the client is told, once."""
        if not self.closed:
            self._fatal("08006", "flux resume: the live Postgres connection closed")
        return self._with_own_output([])

    def _with_own_output(self, frames: list[bytes]) -> bytes:
        """Live frames, then what this session itself told the client meanwhile."""
        own = self.recorded.take_output()
        return b"".join(frames) + own

    # ------------------------------------------------------------------ routing

    def _live_busy(self) -> bool:
        """Live answers are still owed, or the live side holds state (a batch, a transaction)
        the recording knows nothing of: the connection stays live until that is over."""
        return bool(self._owed_ready or self._swallow_ready or self._live_batch_open
                    or self._upstream_tx != "I")

    def _route(self, frame: bytes) -> None:
        if frame[0] == _TERMINATE:
            if self._link_opened:
                self._send_live([frame])
            self.recorded.closed = True
            return
        if self.live_for_good or (self._link_opened and self._live_busy()):
            self._send_live([frame])
            return
        if self.tag.current is None:  # start-up IO runs live, as any restart would
            self._switch(frame, for_good=False)
            return
        try:
            self.recorded.message(frame)
        except GoLive as reason:
            self.divergences += reason.divergences
            self._switch(frame, for_good=True)

    def _switch(self, trigger: bytes, for_good: bool) -> None:
        """Send `trigger` live, after the state the client believes the server has."""
        recorded = self.recorded
        if recorded.tx_status != "I":
            self._fatal(RESUME_SQLSTATE, "flux resume: the request left the recording inside a "
                        "transaction that was answered from it; resume cannot continue that "
                        "transaction on the real server")
            return
        batch = recorded.drop_unreleased()
        if not (batch and batch[-1] is trigger):
            batch.append(trigger)
        setup = self._statement_setup(batch)
        if setup:
            self._swallow_ready += 1
            self._send_live([*setup, SYNC], counted=False)
        self._send_live(batch)
        self.live_for_good = self.live_for_good or for_good

    def _statement_setup(self, batch: list[bytes]) -> list[bytes]:
        """Parse (and Close) messages that make the server's prepared statements the ones the
        client believes exist, except those the batch itself parses or closes."""
        touched = {_cstring(f, 5) for f in batch if f[0] == ord("P")}
        touched |= {_cstring(f, 6) for f in batch if f[0] == ord("C") and f[5] == ord("S")}
        believed = {name: s.parse for name, s in self.recorded.statements.items()
                    if name not in touched}
        setup: list[bytes] = []
        for name in list(self._upstream_statements):
            if name not in touched and believed.get(name) != self._upstream_statements[name]:
                setup.append(m.Close("S", name).encode())
        for name, parse in believed.items():
            if self._upstream_statements.get(name) != parse:
                setup.append(parse)
        return setup

    def _send_live(self, frames: list[bytes], counted: bool = True) -> None:
        if not self._link_opened:
            startup = self.recorded.greeting.startup
            assert startup is not None, "live traffic before the client's startup"
            self._live_out.append(m.StartupMessage(startup.protocol,
                                                   startup.parameters).encode())
            self._link_opened = True
        for frame in frames:
            kind = frame[0]
            if kind == ord("P"):
                self._upstream_statements[_cstring(frame, 5)] = frame
            elif kind == ord("C") and frame[5] == ord("S"):
                self._upstream_statements.pop(_cstring(frame, 6), None)
            elif kind == ord("Q"):
                self._upstream_statements.pop("", None)  # a simple Query drops the unnamed one
            if counted:  # the client's own message (the set-up only mirrors what it believes)
                if kind in b"PC":
                    self.recorded.learn(frame)
                if kind in _ENDS_LIVE_BATCH:
                    self._owed_ready += 1
                    self._live_batch_open = False
                elif kind in b"PBDEC":
                    self._live_batch_open = True
        self._live_out += frames

    def _fatal(self, sqlstate: str, message: str) -> None:
        """End the connection with a FATAL error the client can read."""
        self.recorded.send_to_client(error_response("FATAL", sqlstate, message))
        self.recorded.closed = True


def _error_text(frame: bytes) -> str:
    try:
        error = decode_backend(frame)
    except ProtocolError:
        return "(undecodable error)"
    fields = dict(getattr(error, "fields", ()))
    return f"{fields.get('C', '?')}: {fields.get('M', '')}"
