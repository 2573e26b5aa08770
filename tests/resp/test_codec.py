"""Properties of the sans-IO RESP codec: round trips, chunking, malformed input, limits."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flux_proxy.resp.codec import (
    CommandScanner,
    Limits,
    ProtocolError,
    ReplyScanner,
    RespParser,
    decode_command,
    decode_reply,
    encode,
    encode_command,
    split_inline,
)
from flux_proxy.resp.values import (
    Array,
    Attribute,
    BulkString,
    Double,
    InlineCommand,
    Integer,
    Map,
    Null,
    NullKind,
    Push,
    SimpleString,
    VerbatimString,
)
from tests.resp.strategies import command_args, inline_tokens, values

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
# Every-cut tests do O(n) feeds per example: fewer examples, same coverage of shapes.
EVERY_CUT = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def feed_in_chunks(parser: RespParser, data: bytes, cuts: list[int]) -> list[bytes]:
    frames: list[bytes] = []
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        frames += [f.raw for f in parser.feed(data[last:cut])]
        last = cut
    return frames


@SETTINGS
@given(values)
def test_every_value_round_trips(value):
    raw = encode(value)
    assert decode_reply(raw) == value
    assert ReplyScanner().feed(raw) == [raw]
    frames = RespParser().feed(raw)
    assert [f.raw for f in frames] == [raw]
    assert frames[0].value == value


@EVERY_CUT
@given(st.lists(values, min_size=1, max_size=4))
def test_stream_split_at_every_boundary_gives_same_frames(stream):
    raws = [encode(v) for v in stream]
    data = b"".join(raws)
    for cut in range(len(data) + 1):
        parser = RespParser()
        frames = parser.feed(data[:cut]) + parser.feed(data[cut:])
        assert [f.raw for f in frames] == raws
        assert [f.value for f in frames] == stream
        parser.eof()


@EVERY_CUT
@given(st.lists(values, min_size=1, max_size=4), st.data())
def test_stream_fed_in_random_chunks_gives_same_frames(stream, data):
    raws = [encode(v) for v in stream]
    blob = b"".join(raws)
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=20))
    assert feed_in_chunks(RespParser(), blob, cuts) == raws


def test_stream_fed_byte_by_byte():
    blob = b"".join(encode(v) for v in [
        Array((BulkString(b"a" * 100), Map(((SimpleString(b"k"), Null()),)))),
        Attribute(((SimpleString(b"ttl"), Integer(3)),), BulkString(b"v")),
        Null(NullKind.ARRAY), Null(NullKind.BULK), Push((BulkString(b"message"),)),
    ])
    scanner = ReplyScanner()
    frames = [f for i in range(len(blob)) for f in scanner.feed(blob[i:i + 1])]
    assert b"".join(frames) == blob
    assert len(frames) == 5
    assert scanner.pending_bytes == 0


@SETTINGS
@given(st.lists(command_args, min_size=1, max_size=4))
def test_commands_round_trip_at_every_boundary(commands):
    raws = [encode_command(*args) for args in commands]
    data = b"".join(raws)
    for cut in range(0, len(data) + 1, 3):
        parser = RespParser(client=True)
        frames = parser.feed(data[:cut]) + parser.feed(data[cut:])
        assert [f.raw for f in frames] == raws
        assert [decode_command(f.raw) for f in frames] == commands
        assert [encode(f.value) for f in frames] == raws


@SETTINGS
@given(inline_tokens, st.sampled_from([b"\r\n", b"\n"]))
def test_inline_commands_round_trip(tokens, terminator):
    line = b" ".join(tokens)
    raw = line + terminator
    frames = RespParser(client=True).feed(raw + encode_command(b"PING"))
    assert frames[0].raw == raw
    assert frames[0].value == InlineCommand(line, terminator)
    assert encode(frames[0].value) == raw
    assert decode_command(raw) == tokens
    assert frames[1].raw == encode_command(b"PING")


def test_inline_quoting_follows_redis():
    assert split_inline(b'SET "a b\\x41\\n" \'it\\\'s\' x') == [b"SET", b"a bA\n", b"it's", b"x"]
    assert split_inline(b"  ") == []
    for bad in (b'SET "abc', b"SET 'abc", b'SET "a"b'):
        with pytest.raises(ProtocolError):
            split_inline(bad)
    with pytest.raises(ProtocolError):
        RespParser(client=True).feed(b'GET "unbalanced\r\n')


def test_empty_commands_are_frames():
    assert CommandScanner().feed(b"\r\n*0\r\n*-1\r\nPING\n") == [b"\r\n", b"*0\r\n", b"*-1\r\n",
                                                              b"PING\n"]
    assert decode_command(b"*0\r\n") == [] and decode_command(b"\r\n") == []


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_error(blob):
    for client in (False, True):
        parser = RespParser(client=client)
        try:
            parser.feed(blob)
            parser.eof()
        except ProtocolError:
            pass


@SETTINGS
@given(st.lists(values, min_size=1, max_size=3), st.data())
def test_mutated_streams_raise_only_protocol_error(stream, data):
    blob = bytearray(b"".join(encode(v) for v in stream))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(blob)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert" or not blob:
            blob[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        elif action == "flip":
            blob[min(at, len(blob) - 1)] = data.draw(st.integers(0, 255))
        else:
            del blob[min(at, len(blob) - 1)]
    for client in (False, True):
        parser = RespParser(client=client)
        try:
            feed_in_chunks(parser, bytes(blob), [len(blob) // 2])
            parser.eof()
        except ProtocolError:
            pass


@pytest.mark.parametrize("raw, message", [
    (b"?what\r\n", "unknown RESP type"),
    (b"$abc\r\n", "invalid bulk length"),
    (b"$-2\r\n", "invalid bulk length"),
    (b"*-2\r\n", "invalid aggregate length"),
    (b"%-1\r\n", "invalid aggregate length"),
    (b"$3\r\nfooXX", "not terminated by CRLF"),
    (b":12a\r\n", "invalid integer"),
    (b"#x\r\n", "invalid boolean"),
    (b",1.2.3\r\n", "invalid double"),
    (b",1_0\r\n", "invalid double"),
    (b"(12x\r\n", "invalid big number"),
    (b"_x\r\n", "null with content"),
    (b"=2\r\nab\r\n", "verbatim"),
    (b"+a\rb\r\n", "CR or LF"),
])
def test_malformed_replies_name_the_problem(raw, message):
    with pytest.raises(ProtocolError, match=message):
        RespParser().feed(raw)


@pytest.mark.parametrize("raw, message", [
    (b"*1\r\n:1\r\n", "expected '\\$'"),
    (b"*x\r\n", "invalid multibulk length"),
    (b"*1\r\n$x\r\n", "invalid bulk length"),
])
def test_malformed_commands_name_the_problem(raw, message):
    with pytest.raises(ProtocolError, match=message):
        RespParser(client=True).feed(raw)


def test_parser_stays_failed_after_an_error():
    parser = RespParser()
    with pytest.raises(ProtocolError):
        parser.feed(b"?\r\n")
    with pytest.raises(ProtocolError, match="already failed"):
        parser.feed(b"+OK\r\n")


def test_truncated_frame_at_eof_is_an_error():
    parser = RespParser()
    assert parser.feed(b"*2\r\n:1\r\n") == []
    with pytest.raises(ProtocolError, match="closed inside a frame"):
        parser.eof()


def test_limits_cap_buffering():
    limits = Limits(max_bulk=1000, max_line=100, max_count=10, max_frame=5000)
    with pytest.raises(ProtocolError, match="over 1000"):
        ReplyScanner(limits).feed(b"$1001\r\n")
    with pytest.raises(ProtocolError, match="longer than 100"):
        ReplyScanner(limits).feed(b"+" + b"a" * 200)
    with pytest.raises(ProtocolError, match="over 10"):
        ReplyScanner(limits).feed(b"*11\r\n")
    with pytest.raises(ProtocolError, match="too big inline"):
        CommandScanner(limits).feed(b"a" * 200)
    scanner = ReplyScanner(limits)
    with pytest.raises(ProtocolError, match="larger than 5000"):
        for _ in range(100):
            scanner.feed(b"*9\r\n" + b"$900\r\n" + b"x" * 900 + b"\r\n")
    # A line is capped even while it arrives in small pieces.
    scanner = ReplyScanner(limits)
    with pytest.raises(ProtocolError, match="longer than 100"):
        for _ in range(200):
            scanner.feed(b"a" if scanner.pending_bytes else b"+")


def test_bulk_body_is_not_rescanned_while_it_arrives():
    scanner = ReplyScanner()
    body = b"x" * 1_000_000
    data = b"$%d\r\n%s\r\n" % (len(body), body)
    out = []
    for i in range(0, len(data), 1000):
        out += scanner.feed(data[i:i + 1000])
    assert out == [data]


def test_deep_nesting_needs_no_recursion():
    depth = 100_000
    raw = b"*1\r\n" * depth + b"%1\r\n+k\r\n:1\r\n"
    assert ReplyScanner().feed(raw) == [raw]
    value = decode_reply(raw)
    assert encode(value) == raw
    inner = value
    for _ in range(depth):
        assert isinstance(inner, Array)
        inner = inner.items[0]
    assert inner == Map(((SimpleString(b"k"), Integer(1)),))


def test_known_wire_forms():
    assert encode(Null(NullKind.BULK)) == b"$-1\r\n"
    assert encode(Null(NullKind.ARRAY)) == b"*-1\r\n"
    assert encode(Null()) == b"_\r\n"
    assert encode(Double.of(float("inf"))) == b",inf\r\n"
    assert encode(VerbatimString(b"txt", b"hi")) == b"=6\r\ntxt:hi\r\n"
    assert decode_reply(b",nan\r\n") == Double(b"nan")
    assert encode_command("SET", b"k", 1) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n"
    with pytest.raises(ValueError):
        encode(SimpleString(b"a\r\nb"))
