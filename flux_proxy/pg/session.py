"""Sans-IO session state of one proxied Postgres connection, and exchange grouping.

The proxy feeds raw frames in both directions (`client_frames`, `server_frames`); the session
correlates server replies to client messages with a FIFO of pending client messages and groups
traffic into exchanges (see `flux_proxy.model`):

* a simple Query (or FunctionCall) is one exchange up to its ReadyForQuery, COPY included;
* extended protocol: one exchange per Execute, holding the messages since the previous
  boundary and their replies; a Sync (and its ReadyForQuery) joins the last exchange of the
  batch; a batch without Execute (prepare: Parse/Describe[/Close]) ends at Sync, or at Flush
  once everything since the last boundary has been answered;
* after an ErrorResponse to an extended message the server skips to the next Sync: the pending
  messages before it are answered by nothing;
* asynchronous NoticeResponse/NotificationResponse/ParameterStatus join the open exchange, or
  become a SESSION exchange of their own.

Per frame the work is a type-byte check and list appends; names are resolved when an exchange
completes, and the semantic request/response are built only when someone reads them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from flux_proxy.model import Exchange, ExchangeSink, Lifetime, Protocol, RequestTag
from flux_proxy.pg.semantic import (
    ExchangeContext,
    PortalInfo,
    StatementInfo,
    build_semantics,
    sql_reads_only_catalog,
)

# Frontend type bytes
_Q, _P, _B, _D, _E, _S, _H, _C, _X, _F = b"QPBDESHCXF"
_COPY_FROM_CLIENT = frozenset(b"dcf")
# Backend type bytes
_Z, _ERR, _T, _NODATA, _PARAMS = b"ZETnt"
_ASYNC = frozenset(b"NAS")  # NoticeResponse, NotificationResponse, ParameterStatus

# Which backend type byte completes the reply to each pending client message.
_COMPLETES: dict[int, bytes] = {
    _P: b"1", _B: b"2", _C: b"3", _D: b"Tn", _E: b"CIs", _S: b"Z", _Q: b"Z", _F: b"Z"}
_ERROR_ENDS_REPLY = frozenset((_P, _B, _C, _D, _E))  # extended messages: error, then skip

KIND_SIMPLE = "simple"
KIND_EXTENDED = "extended"
KIND_FUNCTION = "function"
KIND_SESSION = "session"


class OpenExchange:
    """An exchange being assembled; becomes a `PgExchange` when complete."""

    __slots__ = (
        "client_frames",
        "done",
        "failed",
        "has_execute",
        "kind",
        "last_at",
        "pending",
        "request_id",
        "sealed",
        "seq",
        "server_frames",
        "started_at",
    )

    def __init__(self, seq: int, kind: str, request_id: str | None, now: float) -> None:
        self.seq = seq
        self.kind = kind
        self.request_id = request_id
        self.started_at = now
        self.last_at = now
        self.client_frames: list[bytes] = []
        self.server_frames: list[bytes] = []
        self.pending = 0  # client messages still waiting for (the end of) their reply
        self.sealed = False  # no more client frames will join
        self.has_execute = False
        self.failed = False
        self.done = False


class PgExchange(Exchange):
    """An `Exchange` whose semantic `request`/`response` are decoded on first read."""

    __slots__ = ("context",)

    def __init__(self, *, context: ExchangeContext | None = None, **fields: object) -> None:
        self.context = None
        Exchange.__init__(self, **fields)  # type: ignore[arg-type]
        self.context = context

    def _ensure_semantics(self) -> None:
        context = self.context
        if context is not None:
            self.context = None
            request, response = build_semantics(self.client_frames, self.server_frames, context)
            _request_slot.__set__(self, request)
            _response_slot.__set__(self, response)

    def _get_request(self) -> dict:  # type: ignore[type-arg]
        self._ensure_semantics()
        return _request_slot.__get__(self)  # type: ignore[no-any-return]

    def _set_request(self, value: dict) -> None:  # type: ignore[type-arg]
        self._ensure_semantics()  # a later assignment must not be overwritten by the build
        _request_slot.__set__(self, value)

    def _get_response(self) -> dict:  # type: ignore[type-arg]
        self._ensure_semantics()
        return _response_slot.__get__(self)  # type: ignore[no-any-return]

    def _set_response(self, value: dict) -> None:  # type: ignore[type-arg]
        self._ensure_semantics()
        _response_slot.__set__(self, value)

    request = property(_get_request, _set_request)  # type: ignore[assignment]
    response = property(_get_response, _set_response)  # type: ignore[assignment]


_request_slot = Exchange.__dict__["request"]
_response_slot = Exchange.__dict__["response"]


def _cstring_at(frame: bytes, pos: int) -> tuple[str, int]:
    end = frame.index(b"\0", pos)
    return frame[pos:end].decode("utf-8", "replace"), end + 1


class PgSession:
    """Exchange grouping and prepared-statement/portal state for one client connection."""

    def __init__(self, connection: int, sink: ExchangeSink, tag: RequestTag,
                 clock: Callable[[], float] | None = None) -> None:
        self.connection = connection
        self.sink = sink
        self.tag = tag
        self.seq = 0
        self.tx_status = "I"
        self.statements: dict[str, StatementInfo] = {}
        self.portals: dict[str, PortalInfo] = {}
        self._queue: deque[tuple[int, OpenExchange]] = deque()
        self._batch: OpenExchange | None = None  # extended messages since the last boundary
        self._tail: OpenExchange | None = None  # last Execute exchange, open for Sync/Flush
        self._last: OpenExchange | None = None  # most recent client-side exchange
        self.closed = False

    # ---------------------------------------------------------------- client -> server

    def client_frames(self, frames: list[bytes], now: float) -> None:
        for frame in frames:
            t = frame[0]
            if t in (_B, _P, _D, _C, _E):
                batch = self._batch
                if batch is None:
                    self._seal_tail()
                    batch = self._batch = self._open(KIND_EXTENDED, now)
                batch.client_frames.append(frame)
                batch.pending += 1
                self._queue.append((t, batch))
                if t == _E:
                    batch.has_execute = True
                    self._tail = batch
                    self._batch = None
            elif t == _S:
                target = self._batch
                if target is not None:
                    self._batch = None
                else:
                    target = self._tail
                    if target is None or target.sealed:
                        target = self._open(KIND_EXTENDED, now)
                self._tail = None
                target.client_frames.append(frame)
                target.pending += 1
                self._queue.append((t, target))
                self._seal(target)
            elif t in (_Q, _F):
                self._seal_tail()
                self._seal_batch()
                ex = self._open(KIND_SIMPLE if t == _Q else KIND_FUNCTION, now)
                ex.client_frames.append(frame)
                ex.pending = 1
                self._queue.append((t, ex))
                self._seal(ex)
            elif t == _H:
                batch = self._batch
                if batch is not None:
                    batch.client_frames.append(frame)
                    self._batch = None
                    self._seal(batch)
                elif self._tail is not None:
                    self._tail.client_frames.append(frame)
            elif t in _COPY_FROM_CLIENT:
                target = self._queue[0][1] if self._queue else self._last
                if target is not None and not target.done:
                    target.client_frames.append(frame)
            elif t == _X:
                self._seal_tail()
                self._seal_batch()
            # 'p' after startup is not expected (the proxy authenticated upstream): not recorded

    def _open(self, kind: str, now: float) -> OpenExchange:
        self.seq += 1
        ex = OpenExchange(self.seq, kind, self.tag.current, now)
        self._last = ex
        return ex

    def _seal(self, ex: OpenExchange) -> None:
        ex.sealed = True
        if ex.pending == 0 and not ex.done:
            self._complete(ex)

    def _seal_tail(self) -> None:
        tail = self._tail
        if tail is not None:
            self._tail = None
            self._seal(tail)

    def _seal_batch(self) -> None:
        batch = self._batch
        if batch is not None:
            self._batch = None
            self._seal(batch)

    # ---------------------------------------------------------------- server -> client

    def server_frames(self, frames: list[bytes], now: float) -> None:
        queue = self._queue
        for frame in frames:
            t = frame[0]
            if not queue:
                self._unsolicited(frame, now)
                continue
            kind, ex = queue[0]
            ex.server_frames.append(frame)
            ex.last_at = now
            if t in _COMPLETES[kind]:
                queue.popleft()
                if t == _Z:
                    self.tx_status = chr(frame[5])
                ex.pending -= 1
                if ex.pending == 0 and ex.sealed:
                    self._complete(ex)
            elif t == _ERR:
                ex.failed = True
                if kind in _ERROR_ENDS_REPLY:
                    queue.popleft()
                    ex.pending -= 1
                    self._skip_to_sync(now)
                    if ex.pending == 0 and ex.sealed:
                        self._complete(ex)

    def _skip_to_sync(self, now: float) -> None:
        """After an error the server ignores everything up to the next Sync."""
        queue = self._queue
        while queue and queue[0][0] != _S:
            _, skipped = queue.popleft()
            skipped.pending -= 1
            skipped.failed = True
            if skipped.pending == 0 and skipped.sealed:
                skipped.last_at = now
                self._complete(skipped)

    def _unsolicited(self, frame: bytes, now: float) -> None:
        """A server frame no pending client message asked for."""
        open_ex = self._tail if self._tail is not None else None
        if open_ex is not None and frame[0] in _ASYNC and not open_ex.done:
            open_ex.server_frames.append(frame)
            return
        ex = OpenExchange(0, KIND_SESSION, self.tag.current, now)
        self.seq += 1
        ex.seq = self.seq
        ex.server_frames.append(frame)
        ex.failed = frame[0] == _ERR
        self._complete(ex)

    # ---------------------------------------------------------------- endings

    def connection_lost(self, reason: str, now: float, error_frame: bytes | None = None) -> None:
        """Record every unfinished exchange as failed; `error_frame` is what the client got."""
        if self.closed:
            return
        self.closed = True
        unfinished: list[OpenExchange] = []
        for _, ex in self._queue:
            if ex not in unfinished:
                unfinished.append(ex)
        for ex in (self._batch, self._tail):
            if ex is not None and not ex.done and ex not in unfinished:
                unfinished.append(ex)
        self._queue.clear()
        self._batch = self._tail = None
        for i, ex in enumerate(unfinished):
            ex.failed = True
            ex.pending = 0
            if error_frame is not None and i == 0:
                ex.server_frames.append(error_frame)
            ex.last_at = max(ex.last_at, now)
            self._complete(ex, broken=reason)

    def record_startup(self, client_frames: list[bytes], server_frames: list[bytes],
                       started_at: float, finished_at: float, failed: bool = False,
                       request_id: str | None = None) -> None:
        """The SESSION exchange: the client's startup and what the proxy sent back."""
        ex = PgExchange(
            protocol=Protocol.POSTGRES, connection=self.connection, seq=0,
            lifetime=Lifetime.SESSION, request_id=request_id, started_at=started_at,
            duration=finished_at - started_at, client_frames=client_frames,
            server_frames=server_frames, failed=failed,
            context=ExchangeContext(KIND_SESSION))
        self.sink(ex)

    # ---------------------------------------------------------------- completion

    def _complete(self, ex: OpenExchange, broken: str | None = None) -> None:
        ex.done = True
        if self._last is ex and ex.kind == KIND_SESSION:
            self._last = None
        context = ExchangeContext(ex.kind, broken=broken)
        lifetime = Lifetime.REQUEST
        if ex.kind == KIND_EXTENDED:
            self._apply_extended(ex, context)
            statement = context.statement
            if not ex.has_execute or (statement is not None and statement.reads_only_catalog()):
                lifetime = Lifetime.CONNECTION
        elif ex.kind == KIND_SIMPLE:
            sql = ex.client_frames[0][5:-1]
            if sql_reads_only_catalog(sql):
                lifetime = Lifetime.CONNECTION
            if self.tx_status == "I":
                self.portals.clear()
        elif ex.kind == KIND_SESSION:
            lifetime = Lifetime.SESSION
        self.sink(PgExchange(
            protocol=Protocol.POSTGRES, connection=self.connection, seq=ex.seq,
            lifetime=lifetime, request_id=ex.request_id, started_at=ex.started_at,
            duration=ex.last_at - ex.started_at, client_frames=ex.client_frames,
            server_frames=ex.server_frames, failed=ex.failed or broken is not None,
            context=context))

    def _apply_extended(self, ex: OpenExchange, context: ExchangeContext) -> None:
        """Update statements/portals from the exchange's frames; snapshot what it used."""
        describes: deque[StatementInfo | None] = deque()
        statements = self.statements
        for frame in ex.client_frames:
            t = frame[0]
            if t == _P:
                name, _ = _cstring_at(frame, 5)
                statements[name] = StatementInfo(name, frame)
            elif t == _B:
                portal, pos = _cstring_at(frame, 5)
                statement_name, _ = _cstring_at(frame, pos)
                statement = statements.get(statement_name)
                self.portals[portal] = PortalInfo(portal, frame, statement)
                context.statement = statement
                context.bind = frame
            elif t == _D:
                name, _ = _cstring_at(frame, 6)
                describes.append(statements.get(name) if frame[5] == _S else None)
            elif t == _E:
                portal_name, _ = _cstring_at(frame, 5)
                portal = self.portals.get(portal_name)
                if portal is not None:
                    context.bind = portal.bind
                    context.statement = portal.statement
            elif t == _C:
                name, _ = _cstring_at(frame, 6)
                (statements if frame[5] == _S else self.portals).pop(name, None)  # type: ignore[attr-defined]
        if describes:
            for frame in ex.server_frames:
                t = frame[0]
                if t == _PARAMS and describes[0] is not None:
                    describes[0].param_description = frame
                elif t in (_T, _NODATA):
                    target = describes.popleft()
                    if target is not None:
                        target.row_description = frame if t == _T else None
                    if not describes:
                        break
        if context.statement is None and ex.client_frames and ex.client_frames[0][0] == _P:
            name, _ = _cstring_at(ex.client_frames[0], 5)
            context.statement = statements.get(name)
        if self.tx_status == "I" and any(f[0] == _S for f in ex.client_frames[-1:]):
            self.portals.clear()
