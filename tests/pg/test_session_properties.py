"""Property test: whatever the client pipelines, every frame lands in exactly one exchange,
in order, against a simulated server that follows the protocol (errors skip to Sync)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux_proxy.model import Exchange, RequestTag
from flux_proxy.pg import messages as m
from flux_proxy.pg.session import PgSession

CLIENT_MESSAGES = {
    "Q": m.Query("SELECT 1"), "P": m.Parse("", "SELECT 1"), "B": m.Bind(),
    "DS": m.Describe("S", ""), "DP": m.Describe("P", ""), "E": m.Execute(), "S": m.Sync(),
    "H": m.Flush(), "C": m.Close("S", "x"),
}
ERROR = m.ErrorResponse((("S", "ERROR"), ("C", "XX000"), ("M", "boom")))


def simulated_replies(kinds: list[str], errors: list[bool]) -> list[list[m.Message]]:
    """What a server answers to each client message (empty when it has nothing to say)."""
    skipping = False
    out: list[list[m.Message]] = []
    for kind, error in zip(kinds, errors, strict=True):
        replies: list[m.Message] = []
        if kind == "S":
            replies = [m.ReadyForQuery("I")]
            skipping = False
        elif skipping or kind == "H":
            pass
        elif kind == "Q":
            replies = ([ERROR] if error else [m.DataRow((b"1",)), m.CommandComplete("SELECT 1")]
                       ) + [m.ReadyForQuery("I")]
        elif error:
            replies, skipping = [ERROR], True
        else:
            replies = {"P": [m.ParseComplete()], "B": [m.BindComplete()],
                       "DS": [m.ParameterDescription(()), m.NoData()], "DP": [m.NoData()],
                       "E": [m.DataRow((b"1",)), m.CommandComplete("SELECT 1")],
                       "C": [m.CloseComplete()]}[kind]
        out.append(replies)
    return out


BATCH = ["P", "B", "DP", "E", "S"]  # the common shape, which takes the session's fast path


def send(session: PgSession, frames: list[bytes], now: float, whole_reads: bool) -> None:
    """Client frames into the session as the proxy passes them: as a whole read first."""
    if not (whole_reads and frames and session.client_read(b"".join(frames), now)):
        session.client_frames(frames, now)


def answer(session: PgSession, frames: list[bytes], now: float, whole_reads: bool) -> None:
    if not (whole_reads and frames and session.server_read(b"".join(frames), now)):
        session.server_frames(frames, now)


@pytest.mark.parametrize("whole_reads", [False, True], ids=["frames", "whole reads"])
@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.sampled_from(sorted(CLIENT_MESSAGES)), st.booleans(), st.booleans(),
              st.booleans()),
    st.lists(st.booleans(), min_size=5, max_size=5).map(
        lambda errs: [(k, e, False, k != "S") for k, e in zip(BATCH, errs, strict=True)])),
    max_size=20).map(lambda items: [x for item in items
                                    for x in (item if isinstance(item, list) else [item])]))
def test_every_frame_lands_in_exactly_one_exchange(
        whole_reads: bool, steps: list[tuple[str, bool, bool, bool]]) -> None:
    """Each step: message kind, whether the server errors on it, whether the server's replies
    so far go out now, whether the client's frame waits to go out with the next one."""
    kinds = [k for k, _, _, _ in steps]
    errors = [e and k != "S" for k, e, _, _ in steps]
    replies = simulated_replies(kinds, errors)
    exchanges: list[Exchange] = []
    session = PgSession(1, exchanges.append, RequestTag())
    now = 0.0
    sent: list[bytes] = []
    answered: list[bytes] = []
    pending: list[bytes] = []
    unsent: list[bytes] = []
    unanswered: list[bytes] = []
    for (kind, _, reply_now, hold), reply in zip(steps, replies, strict=True):
        frame = CLIENT_MESSAGES[kind].encode()
        sent.append(frame)
        unsent.append(frame)
        unanswered += [x.encode() for x in reply]
        now += 1
        if hold:  # the client writes several messages at once
            continue
        send(session, unsent, now, whole_reads)
        unsent = []
        pending += unanswered
        unanswered = []
        if reply_now:  # sometimes the server answers late, in one burst
            answered += pending
            answer(session, pending, now, whole_reads)
            pending = []
    if unsent:
        send(session, unsent, now, whole_reads)
    pending += unanswered
    answered += pending
    answer(session, pending, now + 1, whole_reads)
    session.connection_lost("end of test", now + 2)

    ordered = sorted(exchanges, key=lambda e: e.seq)
    assert [e.seq for e in ordered] == list(range(1, len(ordered) + 1))
    recorded_client = [f for e in ordered for f in e.client_frames]
    flush = m.Flush().encode()
    assert [f for f in recorded_client if f != flush] == [f for f in sent if f != flush]
    assert [f for e in ordered for f in e.server_frames] == answered
    # Each exchange holds exactly the replies to its own client messages.
    index = 0
    for e in ordered:
        expected: list[bytes] = []
        for frame in e.client_frames:
            while sent[index] != frame:
                assert sent[index] == flush  # only unrecorded Flushes are skipped over
                index += 1
            expected += [x.encode() for x in replies[index]]
            index += 1
        assert e.server_frames == expected
        if any(f[0:1] == b"E" for f in e.server_frames):
            assert e.failed


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["query", "rebind", "named"]),
                          st.sampled_from("ITE")), min_size=1, max_size=8))
def test_the_unnamed_query_shortcut_records_what_the_general_path_does(
        steps: list[tuple[str, str]]) -> None:
    """Parse/Bind/Describe/Execute/Sync, all unnamed, takes a shortcut through the session's
    statement and portal bookkeeping; a Bind that reuses the unnamed statement, and named
    statements, take the general path. Both must leave the same records and state."""
    row = m.RowDescription((m.FieldDescription("n", 0, 0, 23, 4, -1, 0),))
    reply_tail = [m.DataRow((b"1",)), m.CommandComplete("SELECT 1")]

    def run(shortcut: bool, whole_reads: bool = False) -> tuple[object, ...]:
        exchanges: list[Exchange] = []
        session = PgSession(1, exchanges.append, RequestTag())
        if not shortcut:
            general = session._complete_extended
            session._unnamed_query = lambda ex, _catalog: general(ex)  # type: ignore[method-assign]
        for number, (shape, status) in enumerate(steps):
            bind = m.Bind("", "", (0,), (str(number).encode(),), (0,))
            if shape == "query":
                client = [m.Parse("", "SELECT $1::int AS n", (23,)), bind,
                          m.Describe("P", ""), m.Execute(), m.Sync()]
                server = [m.ParseComplete(), m.BindComplete(), row]
            elif shape == "rebind":
                client = [bind, m.Describe("P", ""), m.Execute(), m.Sync()]
                server = [m.BindComplete(), row]
            else:
                client = [m.Parse("s", "SELECT $1::int AS n", (23,)),
                          m.Bind("", "s", (0,), (b"7",), (0,)), m.Describe("P", ""),
                          m.Execute(), m.Sync()]
                server = [m.ParseComplete(), m.BindComplete(), row]
            send(session, [x.encode() for x in client], float(number), whole_reads)
            answer(session, [x.encode() for x in [*server, *reply_tail, m.ReadyForQuery(status)]],
                   number + 0.5, whole_reads)
        return ([(e.seq, e.lifetime, e.request, e.response, e.failed, e.client_frames,
                  e.server_frames, e.duration) for e in exchanges],
                sorted(session.statements), sorted(session.portals))

    general = run(shortcut=False)
    assert run(shortcut=True) == general
    assert run(shortcut=True, whole_reads=True) == general
