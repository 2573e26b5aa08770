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

Per frame the work is a type-byte check and list appends; statement and portal names are
resolved when an exchange completes, and nothing is decoded until someone reads the semantics.
The usual traffic takes a faster path still: a read that is exactly one simple Query or one
extended batch (`client_read`), and a read that is exactly the whole reply to the one query
outstanding (`server_read`), are recorded as the bytes they came in, classified by C scans
and split into frames only when someone reads them.
"""

from __future__ import annotations

from collections import deque

from flux_proxy.model import ExchangeSink, Lifetime, RequestTag
from flux_proxy.pg.codec import (
    BACKEND_VALID,
    DEFAULT_MAX_MESSAGE_SIZE,
    FRONTEND_VALID,
    split_whole,
)
from flux_proxy.pg.exchange import (
    KIND_EXTENDED,
    KIND_FUNCTION,
    KIND_SESSION,
    KIND_SIMPLE,
    PgExchange,
    recorded_client,
    recorded_server,
    whole_exchange,
)
from flux_proxy.pg.semantic import StatementInfo, sql_reads_only_catalog

# Frontend type bytes
_Q, _P, _B, _D, _E, _S, _H, _C, _X, _F = b"QPBDESHCXF"
_EXTENDED = frozenset((_P, _B, _D, _C, _E))
_COPY_FROM_CLIENT = frozenset(b"dcf")
# Backend type bytes
_Z, _ERR, _T, _NODATA, _PARAMS = b"ZETnt"
_PORTAL = ord("P")  # Describe/Close target
_ASYNC = frozenset(b"NAS")  # NoticeResponse, NotificationResponse, ParameterStatus

# Which backend type bytes complete the reply to each kind of pending client message.
_COMPLETES: dict[int, bytes] = {
    _P: b"1", _B: b"2", _C: b"3", _D: b"Tn", _E: b"CIs", _S: b"Z", _Q: b"Z", _F: b"Z"}
_EXTENDED_COMPLETES = {t: _COMPLETES[t] for t in _EXTENDED}
_ERROR_ENDS_REPLY = frozenset(_EXTENDED)  # an error answers it, then the server skips to Sync
# Queue kinds of a fast-path batch (one read holding one whole Execute batch): one exchange,
# answered by everything up to its ReadyForQuery. The negated `batch_shape` of the read.
_WHOLE, _WHOLE_UNNAMED, _WHOLE_UNNAMED_CATALOG = -1, -2, -3
_ANSWERED_TO_READY = frozenset((_WHOLE, _WHOLE_UNNAMED, _WHOLE_UNNAMED_CATALOG, _Q, _F))
_BATCH_HEAD = frozenset(b"PBDC")
_TX_STATUS = tuple(chr(b) for b in range(256))  # ReadyForQuery's status byte as a str

SHAPE_NONE, SHAPE_BATCH, SHAPE_UNNAMED, SHAPE_UNNAMED_CATALOG, SHAPE_QUERY = range(5)


def batch_shape_reference(frames: list[bytes]) -> int:
    """What a read of client frames is: SHAPE_NONE unless it is one extended batch,
    [Parse|Bind|Describe|Close]* Execute Sync (SHAPE_BATCH); SHAPE_UNNAMED when it is exactly
    the unnamed Parse, Bind, Describe (portal), Execute, Sync most drivers send per query, and
    SHAPE_UNNAMED_CATALOG when that Parse also mentions pg_type; SHAPE_QUERY for one simple
    Query. The C version is used."""
    n = len(frames)
    if n == 1 and frames[0][0] == _Q:
        return SHAPE_QUERY
    if n < 2 or frames[-1][0] != _S or frames[-2][0] != _E:
        return SHAPE_NONE
    for frame in frames[:-2]:
        if frame[0] not in _BATCH_HEAD:
            return SHAPE_NONE
    if n != 5:
        return SHAPE_BATCH
    parse, bind, describe, execute, _ = frames
    if len(parse) < 6 or len(bind) < 7 or len(describe) < 7 or len(execute) < 6:
        return SHAPE_BATCH  # malformed: the general path records it as failed
    if not (parse[0] == _P and parse[5] == 0 and bind[0] == _B and bind[5] == 0
            and bind[6] == 0 and describe[0] == _D and describe[5] == _PORTAL
            and describe[6] == 0 and execute[5] == 0):
        return SHAPE_BATCH
    return SHAPE_UNNAMED_CATALOG if b"pg_type" in parse else SHAPE_UNNAMED


def read_shape_reference(data: bytes, valid: bytes, limit: int) -> int:
    """`batch_shape` of a whole read's frames, SHAPE_NONE unless it is exactly whole frames."""
    frames = split_whole(data, valid, limit)
    return batch_shape_reference(frames) if frames else SHAPE_NONE


def reply_end_reference(data: bytes, valid: bytes, limit: int) -> int:
    """For a read that is exactly whole frames ending in its only ReadyForQuery: that frame's
    status byte, plus 256 when an ErrorResponse is among them; else 0."""
    frames = split_whole(data, valid, limit)
    if not frames or len(frames[-1]) != 6 or frames[-1][0] != _Z or not frames[-1][5]:
        return 0
    types = [frame[0] for frame in frames]
    if types.count(_Z) != 1:
        return 0
    return frames[-1][5] + (256 if _ERR in types else 0)


try:
    from flux_proxy._scan import pg_batch_shape as batch_shape
    from flux_proxy._scan import pg_read_shape as read_shape
    from flux_proxy._scan import pg_reply_end as reply_end
except ImportError:  # pragma: no cover - only without a compiler at install time
    batch_shape = batch_shape_reference
    read_shape = read_shape_reference
    reply_end = reply_end_reference

_LIMIT = DEFAULT_MAX_MESSAGE_SIZE


def _frame_end(data: bytes, start: int) -> int:
    return start + 1 + int.from_bytes(data[start + 1:start + 5], "big")


class PgSession:
    """Exchange grouping and prepared-statement/portal state for one client connection."""

    def __init__(self, connection: int, sink: ExchangeSink, tag: RequestTag) -> None:
        self.connection = connection
        self.sink = sink
        self.tag = tag
        self.seq = 0
        self.tx_status = "I"
        self.statements: dict[bytes, StatementInfo] = {}
        self.portals: dict[bytes, tuple[bytes, StatementInfo | None]] = {}  # name: Bind, stmt
        # (type byte, type bytes that complete its reply, exchange), oldest first
        self._queue: deque[tuple[int, bytes, PgExchange]] = deque()
        self._batch: PgExchange | None = None  # extended messages since the last boundary
        self._tail: PgExchange | None = None  # last Execute exchange, open for Sync/Flush
        self.closed = False
        self.terminated = False  # the client sent Terminate: the upstream will close
        self._server_skipping = False  # an error was answered and no Sync has been sent yet

    @property
    def idle(self) -> bool:
        """No client message is waiting for a reply."""
        return not self._queue

    # ---------------------------------------------------------------- client -> server

    def client_read(self, data: bytes, now: float) -> bool:
        """The fast path for a read that is exactly one simple Query or one extended batch,
        with nothing buffered before it: recorded as it came, as one bytes object. False
        when it is anything else: then split it and pass the frames to `client_frames`."""
        if self._batch is not None or self._tail is not None or self._server_skipping:
            return False
        shape = read_shape(data, FRONTEND_VALID, _LIMIT)
        if not shape:
            return False
        self._queue_whole(shape, data, now)
        return True

    def _queue_whole(self, shape: int, sent: bytes | list[bytes], now: float) -> None:
        """One exchange for a whole Query or batch (`sent`: its read, or its frames), answered
        by everything up to its ReadyForQuery."""
        self.seq += 1
        kind = _Q if shape == SHAPE_QUERY else -shape
        self._queue.append((kind, b"Z", whole_exchange(
            self.connection, self.seq, KIND_SIMPLE if kind == _Q else KIND_EXTENDED,
            self.tag.current, now, now, sent, kind < 0)))  # the caller hands `sent` over

    def client_frames(self, frames: list[bytes], now: float) -> None:
        """Frames the client sent (the session may keep the list: pass a fresh one)."""
        queue = self._queue
        if self._batch is None and self._tail is None and not self._server_skipping:
            # Fast path: the read is one simple Query, or one complete extended batch with one
            # Execute (the usual shapes). It is one exchange, answered by everything up to
            # its ReadyForQuery.
            shape = batch_shape(frames)
            if shape:
                self._queue_whole(shape, frames, now)
                return
        for frame in frames:
            t = frame[0]
            completes = _EXTENDED_COMPLETES.get(t)
            if completes is not None:
                batch = self._batch
                if batch is None:
                    if self._tail is not None:
                        self._seal_tail()
                    batch = self._batch = self._open(KIND_EXTENDED, now)
                batch.client_frames.append(frame)
                if self._server_skipping:
                    batch.failed = True  # the server discards it: no reply will come
                else:
                    batch.pending += 1
                    queue.append((t, completes, batch))
                if t == _E:
                    batch.has_execute = True
                    self._tail = batch
                    self._batch = None
            elif t == _S:
                self._server_skipping = False
                target = self._batch
                if target is not None:
                    self._batch = None
                else:
                    target = self._tail
                    if target is None:
                        target = self._open(KIND_EXTENDED, now)
                self._tail = None
                target.client_frames.append(frame)
                target.pending += 1
                queue.append((t, b"Z", target))
                self._seal(target)
            elif t in (_Q, _F):
                if self._tail is not None:
                    self._seal_tail()
                if self._batch is not None:
                    self._seal_batch()
                ex = self._open(KIND_SIMPLE if t == _Q else KIND_FUNCTION, now)
                ex.client_frames.append(frame)
                if self._server_skipping:  # discarded by the server until the next Sync
                    ex.failed = True
                    self._seal(ex)
                else:
                    ex.pending = 1
                    ex.sealed = True
                    queue.append((t, b"Z", ex))
            elif t == _H:
                batch = self._batch
                if batch is not None:
                    batch.client_frames.append(frame)
                    self._batch = None
                    self._seal(batch)
                elif self._tail is not None:
                    self._tail.client_frames.append(frame)
            elif t in _COPY_FROM_CLIENT:
                if queue:
                    queue[0][2].client_frames.append(frame)
            elif t == _X:
                self.terminated = True
                self._seal_tail()
                self._seal_batch()
            # 'p' after startup is not expected (the proxy authenticated upstream): not recorded

    def _open(self, kind: str, now: float, client_frames: list[bytes] | None = None
              ) -> PgExchange:
        self.seq += 1
        return PgExchange(self.connection, self.seq, kind, self.tag.current, now,
                          client_frames=client_frames)

    def _seal(self, ex: PgExchange) -> None:
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

    def server_read(self, data: bytes, now: float) -> bool:
        """The fast path for a read that is exactly the whole reply, up to ReadyForQuery, to
        the one Query or batch outstanding, with nothing buffered before it: recorded as it
        came. False when it is anything else: then split it and call `server_frames`."""
        queue = self._queue
        if len(queue) != 1:
            return False
        kind, _, ex = queue[0]
        if kind not in _ANSWERED_TO_READY or recorded_server(ex):
            return False
        end = reply_end(data, BACKEND_VALID, _LIMIT)
        if not end:
            return False
        queue.popleft()
        ex.server_frames = data  # type: ignore[assignment]  # split when first read
        if end > 255:
            ex.failed = True
        self.tx_status = _TX_STATUS[end & 255]
        self._answered(ex, kind, now)
        return True

    def _answered(self, ex: PgExchange, kind: int, now: float) -> None:
        """A fast-path or simple exchange got its whole reply (tx status already updated)."""
        ex.pending = 0
        ex.last_at = now
        if kind == _Q:
            ex.done = True
            ex.duration = now - ex.started_at
            self._simple_query(ex)
            self.sink(ex)
        elif kind <= _WHOLE_UNNAMED:
            ex.done = True
            ex.duration = now - ex.started_at
            self._unnamed_query(ex, kind == _WHOLE_UNNAMED_CATALOG)
            self.sink(ex)
        else:
            self._complete(ex)

    def server_frames(self, frames: list[bytes], now: float) -> None:
        """Frames the server sent (the session may keep the list: pass a fresh one)."""
        queue = self._queue
        if len(queue) == 1 and frames and frames[-1][0] == _Z:
            kind, _, ex = queue[0]
            if kind in _ANSWERED_TO_READY and not ex.server_frames:
                # Fast path: the whole reply to the one query or fast-path batch outstanding,
                # in one read (one ReadyForQuery per Query or Sync: this one is its).
                for frame in frames:
                    if frame[0] == _ERR:
                        ex.failed = True
                        break
                ex.server_frames = frames
                queue.popleft()
                ready = frames[-1]
                if len(ready) > 5:
                    self.tx_status = _TX_STATUS[ready[5]]
                self._answered(ex, kind, now)
                return
        i, n = 0, len(frames)
        while i < n:
            if not queue:
                self._unsolicited(frames[i], now)
                i += 1
                continue
            kind, completes, ex = queue[0]
            if kind < 0:  # a fast-path batch
                i = self._whole_reply(ex, frames, i, n, now)
                continue
            frame = frames[i]
            i += 1
            t = frame[0]
            ex.server_frames.append(frame)
            if t in completes:
                queue.popleft()
                if t == _Z:
                    self.tx_status = chr(frame[5]) if len(frame) > 5 else self.tx_status
                ex.pending -= 1
                if ex.pending == 0 and ex.sealed:
                    ex.last_at = now
                    self._complete(ex)
            elif t == _ERR:
                ex.failed = True
                if kind in _ERROR_ENDS_REPLY:
                    queue.popleft()
                    ex.pending -= 1
                    self._skip_to_sync(now)
                    if ex.pending == 0 and ex.sealed and not ex.done:
                        ex.last_at = now
                        self._complete(ex)
        if queue:
            queue[0][2].last_at = now

    def _whole_reply(self, ex: PgExchange, frames: list[bytes], i: int, n: int,
                     now: float) -> int:
        """Frames up to the ReadyForQuery of a fast-path batch; returns the next index."""
        start = i
        while i < n:
            t = frames[i][0]
            i += 1
            if t == _Z:
                if start == 0 and i == n and not ex.server_frames:
                    ex.server_frames = frames  # the whole reply in one read: keep its list
                else:
                    ex.server_frames += frames[start:i]
                self._queue.popleft()
                self.tx_status = chr(frames[i - 1][5]) if len(frames[i - 1]) > 5 else self.tx_status
                ex.pending = 0
                ex.last_at = now
                self._complete(ex)
                return i
            if t == _ERR:
                ex.failed = True
        ex.server_frames += frames[start:i]
        return i

    def _skip_to_sync(self, now: float) -> None:
        """After an error the server ignores everything up to the next Sync.

        Messages already sent are popped here; if no Sync was sent yet, the ones the client
        sends before it are discarded by the server too (`_server_skipping`).
        """
        queue = self._queue
        while queue and queue[0][0] != _S:
            if queue[0][0] < 0:  # a fast-path batch: its Sync ends the skipping
                queue[0][2].failed = True
                break
            _, _, skipped = queue.popleft()
            skipped.pending -= 1
            skipped.failed = True
            if skipped.pending == 0 and skipped.sealed:
                skipped.last_at = now
                self._complete(skipped)
        if not queue:
            self._server_skipping = True

    def _unsolicited(self, frame: bytes, now: float) -> None:
        """A server frame no pending client message asked for."""
        tail = self._tail
        if tail is not None and frame[0] in _ASYNC and not tail.done:
            tail.server_frames.append(frame)
            tail.last_at = now
            return
        self.seq += 1
        ex = PgExchange(self.connection, self.seq, KIND_SESSION, self.tag.current, now,
                        Lifetime.SESSION)
        ex.server_frames.append(frame)
        ex.failed = frame[0] == _ERR
        self._complete(ex)

    # ---------------------------------------------------------------- endings

    def connection_lost(self, reason: str, now: float, error_frame: bytes | None = None) -> None:
        """Record every unfinished exchange as failed; `error_frame` is what the client got."""
        if self.closed:
            return
        self.closed = True
        # By identity: Exchange equality compares (and so would decode) the semantics.
        unfinished: dict[int, PgExchange] = {}
        for _, _, ex in self._queue:
            unfinished.setdefault(id(ex), ex)
        for maybe in (self._batch, self._tail):
            if maybe is not None and not maybe.done:
                unfinished.setdefault(id(maybe), maybe)
        self._queue.clear()
        self._batch = self._tail = None
        for i, ex in enumerate(sorted(unfinished.values(), key=lambda e: e.seq)):
            ex.failed = True
            ex.pending = 0
            ex.broken = reason
            if error_frame is not None and i == 0:
                ex.server_frames.append(error_frame)
            ex.last_at = max(ex.last_at, now)
            self._complete(ex)

    def record_startup(self, client_frames: list[bytes], server_frames: list[bytes],
                       started_at: float, finished_at: float, failed: bool = False,
                       request_id: str | None = None) -> None:
        """The SESSION exchange: the client's startup and what the proxy sent back."""
        ex = PgExchange(self.connection, 0, KIND_SESSION, request_id, started_at,
                        Lifetime.SESSION)
        ex.client_frames = client_frames
        ex.server_frames = server_frames
        ex.failed = failed
        ex.last_at = finished_at
        self._complete(ex)

    # ---------------------------------------------------------------- completion

    def _complete(self, ex: PgExchange) -> None:
        ex.done = True
        ex.duration = ex.last_at - ex.started_at
        kind = ex.kind
        if kind == KIND_SIMPLE:
            self._simple_query(ex)
        elif kind == KIND_EXTENDED:
            shape = batch_shape(ex.client_frames)
            if shape >= SHAPE_UNNAMED:
                self._unnamed_query(ex, shape == SHAPE_UNNAMED_CATALOG)
            else:
                self._complete_extended(ex)
        if ex.broken is not None:
            ex.failed = True
        self.sink(ex)

    def _simple_query(self, ex: PgExchange) -> None:
        query = recorded_client(ex)
        if type(query) is not bytes:  # frames: the Query, then any COPY data
            query = query[0]
        if query.find(b"pg_type") >= 0 and sql_reads_only_catalog(query[5:]):
            ex.lifetime = Lifetime.CONNECTION
        if self.portals and self.tx_status == "I":
            self.portals.clear()

    def _complete_extended(self, ex: PgExchange) -> None:
        """Statements, portals and lifetime after an extended-protocol exchange."""
        try:
            parsed_here = self._apply_extended(ex)
        except (IndexError, ValueError):
            # A client message with a sound header but a short body: the server answered
            # it with an 08P01 error; the exchange is recorded as failed, never lost.
            parsed_here = None
            ex.failed = True
        statement = ex.statement
        if not ex.has_execute or (statement is not None and statement.reads_only_catalog()):
            ex.lifetime = Lifetime.CONNECTION
        if statement is parsed_here:
            # Its Parse is among the exchange's own frames: the semantics need nothing
            # more, and a recorded exchange then keeps one object less alive.
            ex.statement = None

    def _unnamed_query(self, ex: PgExchange, mentions_pg_type: bool) -> None:
        """`_complete_extended` for the batch most drivers send per query (SHAPE_UNNAMED):
        its statement is its own Parse, so the semantics need no snapshot of it, and its Bind
        is its own too."""
        sent = recorded_client(ex)  # Parse, Bind, Describe, Execute, Sync
        if type(sent) is not bytes:
            sent = sent[0] + sent[1]
        statement = self.statements.get(b"")
        if (statement is None or not sent.startswith(statement.parse)
                or statement.param_description is not None
                or statement.row_description is not None):
            # Drivers parse the same SQL again and again: an undescribed statement of the
            # same Parse is what a new one would be, so it is kept.
            statement = self.statements[b""] = StatementInfo(b"", sent[:_frame_end(sent, 0)])
        if self.tx_status != "I":
            start = len(statement.parse)
            self.portals[b""] = (sent[start:_frame_end(sent, start)], statement)
        elif self.portals:
            self.portals.clear()  # as at any Sync outside a transaction
        if mentions_pg_type and statement.reads_only_catalog():
            ex.lifetime = Lifetime.CONNECTION

    def _apply_extended(self, ex: PgExchange) -> StatementInfo | None:
        """Update statements/portals from the exchange's frames; snapshot what it used.

        Names stay bytes (no decoding on this path); the unnamed ones are the common case.
        Returns the statement the exchange's last Parse created, if any.
        """
        described: list[tuple[int, StatementInfo | None]] | None = None  # (ordinal, stmt)
        n_describes = 0
        parsed_here: StatementInfo | None = None
        statements = self.statements
        portals = self.portals
        for frame in ex.client_frames:
            t = frame[0]
            if t == _P:
                name = frame[5:frame.index(0, 5)] if frame[5] else b""
                statements[name] = ex.statement = parsed_here = StatementInfo(name, frame)
            elif t == _B:
                if frame[5] == 0 and frame[6] == 0:  # unnamed portal, unnamed statement
                    portal_name = statement_name = b""
                else:
                    end = frame.index(0, 5)
                    portal_name = frame[5:end]
                    statement_name = frame[end + 1:frame.index(0, end + 1)]
                statement = statements.get(statement_name)
                portals[portal_name] = (frame, statement)
                ex.statement = statement
                ex.bind = frame
            elif t == _D:
                if frame[5] == _S:
                    if described is None:
                        described = []
                    described.append((n_describes, statements.get(frame[6:-1])))
                n_describes += 1
            elif t == _E:
                portal = portals.get(frame[5:frame.index(0, 5)] if frame[5] else b"")
                if portal is not None:
                    ex.bind, ex.statement = portal
            elif t == _C:
                (statements if frame[5] == _S else portals).pop(frame[6:-1], None)
        if described is not None:
            self._attach_descriptions(ex.server_frames, described)
        if self.tx_status == "I" and ex.client_frames[-1][0] == _S:
            self.portals.clear()
        return parsed_here

    @staticmethod
    def _attach_descriptions(server_frames: list[bytes],
                             described: list[tuple[int, StatementInfo | None]]) -> None:
        """Give each described statement its ParameterDescription and RowDescription/NoData.

        Replies come in Describe order: every Describe gets one RowDescription or NoData, and
        a statement Describe a ParameterDescription before it.
        """
        pending = iter(described)
        ordinal, target = next(pending)
        seen = 0
        for frame in server_frames:
            t = frame[0]
            if t == _PARAMS and seen == ordinal and target is not None:
                target.param_description = frame
            elif t in (_T, _NODATA):
                if seen == ordinal:
                    if target is not None:
                        target.row_description = frame if t == _T else None
                    following = next(pending, None)
                    if following is None:
                        return
                    ordinal, target = following
                seen += 1

