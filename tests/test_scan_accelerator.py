"""`flux_proxy._scan` (C) against the pure-Python scanners it accelerates.

The Python scanners are the reference: fed the same bytes in the same chunks, both must give
the same frames, the same command names, the same leftover state, and the same error. The
extension is built by `pip install` (setup.py); if it was not, the first test fails, since the
proxies would then run at a fraction of their measured speed.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flux_proxy.pg.codec as pg_codec
import flux_proxy.resp.codec as resp_codec
from flux_proxy.model import Exchange
from flux_proxy.pg import messages as m
from flux_proxy.pg.codec import BACKEND_TYPES, FRONTEND_TYPES, FrameSplitter
from flux_proxy.pg.codec import ProtocolError as PgProtocolError
from flux_proxy.pg.session import batch_shape_reference
from flux_proxy.resp.codec import (
    CommandScanner,
    Limits,
    ProtocolError,
    ReplyScanner,
    encode,
    encode_command,
)
from tests.pg.strategies import backend_messages, frontend_messages
from tests.resp.strategies import command_args, values

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def test_the_extension_is_built_and_used():
    from flux_proxy import _scan

    assert resp_codec._accelerated is _scan
    assert pg_codec._accelerated_split is _scan.pg_split
    assert CommandScanner._c_scan is _scan.resp_commands
    assert ReplyScanner._c_scan is _scan.resp_replies


@contextmanager
def pure_python() -> Iterator[None]:
    saved = (resp_codec._accelerated, pg_codec._accelerated_split,
             CommandScanner._c_scan, ReplyScanner._c_scan)
    resp_codec._accelerated, pg_codec._accelerated_split = None, None
    CommandScanner._c_scan = ReplyScanner._c_scan = None
    try:
        yield
    finally:
        (resp_codec._accelerated, pg_codec._accelerated_split,
         CommandScanner._c_scan, ReplyScanner._c_scan) = saved


def run(make: Callable[[], object], chunks: list[bytes]) -> list[object]:
    """Every feed's outcome, then the leftover state: what the two implementations share."""
    scanner = make()
    outcome: list[object] = []
    for chunk in chunks:
        try:
            frames = scanner.feed(chunk)  # type: ignore[attr-defined]
        except (ProtocolError, PgProtocolError) as exc:
            outcome.append(("error", str(exc), list(getattr(exc, "frames", []))))
            break
        outcome.append((frames, list(getattr(scanner, "names", []))))
    pending = getattr(scanner, "pending_bytes", None)
    outcome.append(pending if pending is not None else scanner.pending)  # type: ignore[attr-defined]
    return outcome


def both(make: Callable[[], object], chunks: list[bytes]) -> tuple[list[object], list[object]]:
    accelerated = run(make, chunks)
    with pure_python():
        reference = run(make, chunks)
    return accelerated, reference


def frames_of(outcome: list[object]) -> list[object]:
    return [step[0] if isinstance(step, tuple) and step[0] != "error" else step
            for step in outcome]


def cut(blob: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(blob)) for c in cuts})
    return [blob[a:b] for a, b in zip([0, *points], [*points, len(blob)], strict=True)]


def mutate(blob: bytes, data: st.DataObject) -> bytes:
    out = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(out)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert" or not out:
            out[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        elif action == "flip":
            out[min(at, len(out) - 1)] = data.draw(st.integers(0, 255))
        else:
            del out[min(at, len(out) - 1)]
    return bytes(out)


cuts = st.lists(st.integers(0, 400), max_size=6)
small = Limits(max_bulk=20, max_line=24, max_count=6, max_frame=400)


@SETTINGS
@given(st.lists(values, min_size=1, max_size=6), cuts, st.booleans())
def test_replies_match(stream, at, tight):
    blob = b"".join(encode(v) for v in stream)
    limits = small if tight else Limits()
    accelerated, reference = both(lambda: ReplyScanner(limits), cut(blob, at))
    assert accelerated == reference


@SETTINGS
@given(st.lists(values, min_size=1, max_size=4), cuts, st.data())
def test_broken_replies_match(stream, at, data):
    blob = mutate(b"".join(encode(v) for v in stream), data)
    accelerated, reference = both(ReplyScanner, cut(blob, at))
    assert accelerated == reference


commands = st.lists(st.one_of(
    command_args.map(lambda args: encode_command(*args)),
    st.sampled_from([b"*0\r\n", b"*-1\r\n", b"PING\r\n", b"\r\n", b"GET k\n", b"SET a 'b c'\r\n"]),
), min_size=1, max_size=8)


@SETTINGS
@given(commands, cuts, st.booleans())
def test_commands_match(stream, at, tight):
    blob = b"".join(stream)
    limits = small if tight else Limits()
    accelerated, reference = both(lambda: CommandScanner(limits), cut(blob, at))
    # Names: the C scan has every array command's, the Python one those it saw for free
    # (None for the rest, which the session then reads from the frame): where both have one,
    # they agree.
    assert frames_of(accelerated) == frames_of(reference)
    for fast, exact in zip(accelerated, reference, strict=True):
        if isinstance(fast, tuple) and fast[0] != "error" and fast[0]:  # names of this feed
            assert len(fast[1]) == len(exact[1]) == len(fast[0])
            assert all(e is None or f == e for f, e in zip(fast[1], exact[1], strict=True))


@SETTINGS
@given(commands, cuts, st.data())
def test_broken_commands_match(stream, at, data):
    blob = mutate(b"".join(stream), data)
    accelerated, reference = both(CommandScanner, cut(blob, at))
    assert frames_of(accelerated) == frames_of(reference)


def test_command_names_come_from_the_c_scan():
    scanner = CommandScanner()
    frames = scanner.feed(encode_command("get", "k") + b"PING\r\n" + b"*0\r\n"
                          + encode_command("SET", "a", "b")[:9])
    assert len(frames) == 3
    assert scanner.names == [b"get", None, None]
    assert scanner.feed(encode_command("SET", "a", "b")[9:]) == [encode_command("SET", "a", "b")]
    assert scanner.names == [None]  # resumed mid-command: the session reads it from the frame


@SETTINGS
@given(st.lists(frontend_messages, min_size=1, max_size=6), cuts, st.booleans())
def test_frontend_frames_match(messages, at, broken):
    blob = b"".join(message.encode() for message in messages)
    if broken:
        blob = blob[:3] + b"\xff" + blob[4:]  # a first length over the maximum
    accelerated, reference = both(lambda: FrameSplitter(FRONTEND_TYPES, "frontend"),
                                  cut(blob, at))
    assert accelerated == reference


@SETTINGS
@given(st.lists(backend_messages, min_size=1, max_size=6), cuts, st.data())
def test_backend_frames_match(messages, at, data):
    blob = b"".join(message.encode() for message in messages)
    if data.draw(st.booleans()):
        blob = mutate(blob, data)
    accelerated, reference = both(lambda: FrameSplitter(BACKEND_TYPES, "backend", 300),
                                  cut(blob, at))
    assert accelerated == reference


@pytest.mark.parametrize("limit", [4, 5, 2**31 - 1])
def test_length_limit_is_the_same(limit):
    blob = b"Q" + (5).to_bytes(4, "big") + b"x"
    accelerated, reference = both(lambda: FrameSplitter(FRONTEND_TYPES, "frontend", limit),
                                  [blob])
    assert accelerated == reference


# Batches as drivers send them, with names, pg_type mentions and short bodies mixed in.
_batch_messages = st.one_of(
    st.builds(m.Parse, st.sampled_from(["", "s1"]),
              st.sampled_from(["SELECT 1", "SELECT typname FROM pg_type", "pg_typ"])),
    st.builds(m.Bind, st.sampled_from(["", "p"]), st.sampled_from(["", "s1"])),
    st.builds(m.Describe, st.sampled_from("PS"), st.sampled_from(["", "x"])),
    st.builds(m.Execute, st.sampled_from(["", "p"])),
    st.builds(m.Close, st.sampled_from("PS"), st.just("")),
    st.just(m.Sync()), st.just(m.Flush()), st.builds(m.Query, st.just("SELECT 1")),
).map(lambda message: message.encode())


# The usual five-message batch with one or two positions swapped for a near miss.
_USUAL = [m.Parse("", "SELECT 1"), m.Bind("", ""), m.Describe("P", ""), m.Execute(), m.Sync()]
_NEAR_MISSES = [
    [m.Parse("", "SELECT oid FROM pg_type"), m.Parse("s", "SELECT 1"), m.Bind("", "")],
    [m.Bind("p", ""), m.Bind("", "s"), m.Describe("P", "")],
    [m.Describe("S", ""), m.Describe("P", "p"), m.Close("P", "")],
    [m.Execute("p"), m.Sync()],
    [m.Flush(), m.Execute()],
]
_near_usual = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2)), max_size=2).map(
    lambda swaps: [x.encode() for x in _swap(_USUAL, swaps)])


def _swap(messages: list[m.Message], swaps: list[tuple[int, int]]) -> list[m.Message]:
    out = list(messages)
    for at, choice in swaps:
        out[at] = _NEAR_MISSES[at][choice % len(_NEAR_MISSES[at])]
    return out


@SETTINGS
@given(st.one_of(
    st.lists(st.one_of(_batch_messages, _batch_messages.map(lambda f: f[:5])), max_size=7),
    _near_usual,
    _near_usual.flatmap(lambda frames: st.integers(0, 4).map(
        lambda i: [*frames[:i], frames[i][:5], *frames[i + 1:]])),  # one short body
))
def test_batch_shape_matches_the_reference(frames):
    from flux_proxy._scan import pg_batch_shape

    assert pg_batch_shape(frames) == batch_shape_reference(frames)


def test_batch_shapes():
    from flux_proxy._scan import pg_batch_shape

    usual = [m.Parse("", "SELECT 1"), m.Bind("", ""), m.Describe("P", ""), m.Execute(),
             m.Sync()]
    catalog = [m.Parse("", "SELECT oid FROM pg_type"), *usual[1:]]
    named = [m.Parse("s", "SELECT 1"), *usual[1:]]
    for messages, shape in [(usual, 2), (catalog, 3), (named, 1), (usual[1:], 1),
                            (usual[:4], 0), ([m.Query("SELECT 1")], 4), (usual + usual, 0)]:
        assert pg_batch_shape([x.encode() for x in messages]) == shape


def test_whole_exchange_in_c_is_the_python_one():
    """The session's fast-path exchange is built by `new_with_slots`; without the extension,
    by `PgExchange(...)`: every field, and the undecoded semantics, must be the same."""
    from flux_proxy.pg.exchange import PgExchange, _whole_exchange, whole_exchange

    assert whole_exchange is not _whole_exchange  # the C one is in use
    names = [*Exchange.__dataclass_fields__, *PgExchange.__slots__]
    frames = [m.Query("SELECT 1").encode()]
    built = whole_exchange(3, 7, "simple", "req", 1.5, 1.5, frames, False)
    reference = _whole_exchange(3, 7, "simple", "req", 1.5, 1.5, frames, False)
    for name in names:
        if name not in ("request", "response"):
            assert getattr(built, name) == getattr(reference, name), name
    assert built.server_frames is not reference.server_frames  # each its own list
    assert not built._decoded() and not reference._decoded()
    assert built.request == reference.request and built.request["sql"] == "SELECT 1"
    assert not gc.is_tracked(built)


def test_new_with_slots_refuses_what_is_not_a_slot():
    from flux_proxy._scan import new_with_slots, slot_offsets

    class Point:
        __slots__ = ("x", "y")

    with pytest.raises(TypeError):
        slot_offsets(Point, ("z",))
    offsets = slot_offsets(Point, ("x",))
    with pytest.raises(TypeError):
        new_with_slots(Point, offsets, 1, 2)  # one value per offset
    with pytest.raises(ValueError):
        new_with_slots(object, offsets, 1)  # offsets of another type
    point = new_with_slots(Point, offsets, 5)
    assert point.x == 5 and not hasattr(point, "y")


_replies = st.lists(st.one_of(
    backend_messages,
    st.sampled_from([m.ReadyForQuery("I"), m.ReadyForQuery("T"), m.CommandComplete("SELECT 1"),
                     m.ErrorResponse((("S", "ERROR"), ("C", "XX000"), ("M", "boom")))]),
), max_size=6).map(lambda messages: b"".join(x.encode() for x in messages))


@SETTINGS
@given(st.one_of(_near_usual.map(b"".join), _replies,
                 st.lists(_batch_messages, max_size=6).map(b"".join)),
       st.integers(0, 80), st.booleans())
def test_whole_read_scans_match_the_reference(read, cut_at, truncate):
    """The session's whole-read fast paths (C) against their references, on whole reads and
    on reads that end inside a frame."""
    from flux_proxy._scan import pg_read_shape, pg_reply_end

    from flux_proxy.pg.codec import BACKEND_VALID, DEFAULT_MAX_MESSAGE_SIZE, FRONTEND_VALID
    from flux_proxy.pg.session import read_shape_reference, reply_end_reference

    if truncate:
        read = read[:cut_at]
    limit = DEFAULT_MAX_MESSAGE_SIZE
    assert pg_read_shape(read, FRONTEND_VALID, limit) == read_shape_reference(
        read, FRONTEND_VALID, limit)
    assert pg_reply_end(read, BACKEND_VALID, limit) == reply_end_reference(
        read, BACKEND_VALID, limit)
    with pure_python():  # the references' own split, without the C one
        assert pg_read_shape(read, FRONTEND_VALID, limit) == read_shape_reference(
            read, FRONTEND_VALID, limit)
        assert pg_reply_end(read, BACKEND_VALID, limit) == reply_end_reference(
            read, BACKEND_VALID, limit)


def test_reply_end_reads_status_and_errors():
    from flux_proxy._scan import pg_reply_end

    from flux_proxy.pg.codec import BACKEND_VALID

    done = m.CommandComplete("SELECT 1").encode()
    error = m.ErrorResponse((("S", "ERROR"), ("C", "XX000"), ("M", "boom"))).encode()
    ready, in_tx = m.ReadyForQuery("I").encode(), m.ReadyForQuery("T").encode()
    for read, end in [(done + ready, ord("I")), (done + in_tx, ord("T")),
                      (error + ready, ord("I") + 256), (ready + ready, 0), (done, 0),
                      ((done + ready)[:-1], 0), (b"", 0)]:
        assert pg_reply_end(read, BACKEND_VALID, 1 << 30) == end


def test_new_redis_exchange_in_c_is_the_python_one():
    from flux_proxy.model import Lifetime
    from flux_proxy.resp.exchange import RedisExchange, new_exchange

    assert new_exchange is not RedisExchange  # the C one is in use
    args = (4, 9, Lifetime.REQUEST, "req", 2.5, 0.25, [b"*1\r\n$4\r\nPING\r\n"], [b"+PONG\r\n"],
            False)
    built, reference = new_exchange(*args), RedisExchange(*args)
    assert built == reference  # every field, the decoded request and response included
    assert built.source is None and built.protocol == reference.protocol
    assert not gc.is_tracked(built) and gc.is_tracked(reference)  # left out of GC walks
