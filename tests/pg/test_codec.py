"""Property and edge-case tests of the sans-IO Postgres codec."""

from __future__ import annotations

import contextlib
import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux_proxy.pg import messages as m
from flux_proxy.pg.codec import (
    BackendParser,
    FrontendParser,
    decode_backend,
    decode_frontend,
    decode_startup,
)
from flux_proxy.pg.errors import ProtocolError
from tests.pg import strategies as s

PROPS = settings(max_examples=150, deadline=None)


@PROPS
@given(s.frontend_messages)
def test_frontend_round_trip(msg: m.Message) -> None:
    raw = msg.encode()
    decoded = decode_frontend(raw)
    assert decoded == msg
    assert decoded.raw == raw
    assert decoded.encode() == raw


@PROPS
@given(s.auth_responses)
def test_auth_response_round_trip(case: tuple[str, m.Message]) -> None:
    hint, msg = case
    raw = msg.encode()
    decoded = decode_frontend(raw, hint)  # type: ignore[arg-type]
    assert decoded == msg and decoded.raw == raw
    # Without a hint the guess may differ in type, but never in bytes.
    assert decode_frontend(raw).encode() == raw


@PROPS
@given(s.backend_messages)
def test_backend_round_trip(msg: m.Message) -> None:
    raw = msg.encode()
    decoded = decode_backend(raw)
    assert decoded == msg
    assert decoded.raw == raw
    assert decoded.encode() == raw


@PROPS
@given(s.startup_messages)
def test_startup_round_trip(msg: m.Message) -> None:
    raw = msg.encode()
    decoded = decode_startup(raw)
    assert decoded == msg and decoded.raw == raw


def _concrete_message_classes() -> list[type[m.Message]]:
    return [c for c in vars(m).values() if isinstance(c, type) and issubclass(c, m.Message)
            and dataclasses.is_dataclass(c)]


def test_every_message_type_round_trips_with_defaults() -> None:
    classes = _concrete_message_classes()
    assert len(classes) >= 50
    for cls in classes:
        msg = cls()
        raw = msg.encode()
        if isinstance(msg, m.StartupPacket):
            decoded = decode_startup(raw)
        elif cls in (m.PasswordMessage, m.SASLInitialResponse, m.SASLResponse, m.GSSResponse):
            hint = {m.PasswordMessage: "password", m.SASLInitialResponse: "sasl_initial",
                    m.SASLResponse: "sasl", m.GSSResponse: "gss"}[cls]
            decoded = decode_frontend(raw, hint)  # type: ignore[arg-type]
        elif cls.TYPE in b"QPBDESHCXdcfF" and cls not in _backend_only():
            decoded = decode_frontend(raw)
        else:
            decoded = decode_backend(raw)
        assert type(decoded) is cls and decoded == msg and decoded.raw == raw, cls


def _backend_only() -> set[type[m.Message]]:
    return {m.ParameterStatus, m.DataRow, m.CommandComplete, m.ErrorResponse, m.CopyOutResponse,
            m.ReadyForQuery, m.RowDescription, m.NoticeResponse, m.BackendKeyData,
            m.EmptyQueryResponse}


def _feed_in_chunks(parser: FrontendParser | BackendParser, data: bytes,
                    cuts: list[int]) -> list[bytes]:
    frames: list[bytes] = []
    previous = 0
    for cut in [*sorted(cuts), len(data)]:
        frames += parser.feed(data[previous:cut])
        previous = cut
    return frames


@PROPS
@given(s.startup_messages.filter(lambda x: isinstance(x, m.StartupMessage)),
       st.lists(s.frontend_messages, max_size=6))
def test_frontend_stream_split_at_every_boundary(startup: m.Message,
                                                 msgs: list[m.Message]) -> None:
    stream = [m.SSLRequest(), startup, *msgs]
    expected = [x.encode() for x in stream]
    data = b"".join(expected)
    for cut in range(len(data) + 1):
        assert _feed_in_chunks(FrontendParser(), data, [cut]) == expected
    assert _feed_in_chunks(FrontendParser(), data, list(range(len(data)))) == expected
    typed = FrontendParser().feed_messages(data)
    assert typed == stream and [x.raw for x in typed] == expected


@PROPS
@given(st.lists(s.backend_messages, max_size=6), st.lists(st.integers(0, 10_000), max_size=6))
def test_backend_stream_split_anywhere(msgs: list[m.Message], cuts: list[int]) -> None:
    expected = [x.encode() for x in msgs]
    data = b"".join(expected)
    for cut in range(len(data) + 1):
        assert _feed_in_chunks(BackendParser(), data, [cut]) == expected
    cuts = [c % (len(data) + 1) for c in cuts]
    assert _feed_in_chunks(BackendParser(), data, cuts) == expected
    typed = BackendParser().feed_messages(data)
    assert typed == msgs and [x.raw for x in typed] == expected


def _only_protocol_errors(action: object) -> None:
    with contextlib.suppress(ProtocolError):
        action()  # type: ignore[operator]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=4))
def test_random_bytes_raise_only_protocol_error(data: bytes, cuts: list[int]) -> None:
    cuts = [c % (len(data) + 1) for c in cuts]

    def feed_all(parser: FrontendParser | BackendParser, typed: bool) -> None:
        previous = 0
        for cut in [*sorted(cuts), len(data)]:
            chunk = data[previous:cut]
            previous = cut
            parser.feed_messages(chunk) if typed else parser.feed(chunk)
        parser.eof()

    for typed in (False, True):
        _only_protocol_errors(lambda t=typed: feed_all(FrontendParser(), t))
        _only_protocol_errors(lambda t=typed: feed_all(FrontendParser(startup=False), t))
        _only_protocol_errors(lambda t=typed: feed_all(BackendParser(), t))
    _only_protocol_errors(lambda: decode_startup(data))
    for type_byte in set(b"QPBDESHCXdcfFpRKZTINsGWAvV123nt"):
        raw = bytes([type_byte]) + struct.pack("!I", len(data) + 4) + data
        _only_protocol_errors(lambda r=raw: decode_frontend(r))
        _only_protocol_errors(lambda r=raw: decode_backend(r))
        for hint in ("password", "sasl_initial", "sasl", "gss"):
            _only_protocol_errors(lambda r=raw, h=hint: decode_frontend(r, h))


@settings(max_examples=150, deadline=None)
@given(st.lists(s.backend_messages, min_size=1, max_size=4), st.data())
def test_corrupted_valid_stream_raises_only_protocol_error(msgs: list[m.Message],
                                                           data: st.DataObject) -> None:
    raw = bytearray(b"".join(x.encode() for x in msgs))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 255))
    _only_protocol_errors(lambda: (BackendParser().feed_messages(bytes(raw))))


def _errors(action: object) -> str:
    with pytest.raises(ProtocolError) as info:
        action()  # type: ignore[operator]
    return str(info.value)


def test_malformed_inputs_have_clear_messages() -> None:
    assert "unknown frontend message type 'z'" in _errors(
        lambda: FrontendParser(startup=False).feed(b"z\0\0\0\4"))
    assert "unknown backend message type 0x00" in _errors(
        lambda: BackendParser().feed(b"\0\0\0\0\4"))
    assert "invalid length 3" in _errors(lambda: BackendParser().feed(b"Z\0\0\0\3I"))
    assert "over the 1000-byte maximum" in _errors(
        lambda: BackendParser(max_message_size=1000).feed(b"D\0\0\x10\0"))
    assert "truncated parameter length" in _errors(
        lambda: decode_frontend(b"B\0\0\0\x0c\0\0\0\0\0\1\0\0"))
    assert "unterminated string query string" in _errors(
        lambda: decode_frontend(b"Q\0\0\0\x07abc"))
    assert "expected an empty body" in _errors(lambda: decode_frontend(b"S\0\0\0\5x"))
    assert "trailing bytes" in _errors(lambda: decode_frontend(b"Q\0\0\0\6\0x"))
    assert "unknown transaction status" in _errors(lambda: decode_backend(b"Z\0\0\0\5Q"))
    assert "TLS ClientHello" in _errors(lambda: FrontendParser().feed(b"\x16\x03\x01\x02\x00"))
    assert "data after CancelRequest" in _errors(
        lambda: FrontendParser().feed(m.CancelRequest(1, b"abcd").encode() + b"Q"))
    assert "unsupported frontend protocol 2.0" in _errors(
        lambda: FrontendParser().feed(struct.pack("!II", 8, 2 << 16)))
    assert "invalid startup packet length" in _errors(
        lambda: FrontendParser().feed(struct.pack("!II", 20000, 3 << 16)))
    parser = BackendParser()
    parser.feed(b"Z\0\0\0\5")
    assert "ended inside a message" in _errors(parser.eof)


def test_oversized_header_is_refused_before_buffering_the_body() -> None:
    parser = FrontendParser(startup=False, max_message_size=1 << 20)
    assert parser.feed(b"Q\0\x20") == []  # header incomplete: waits
    assert "over the" in _errors(lambda: parser.feed(b"\0\0"))
    assert "over the" in _errors(lambda: parser.feed(b"Q\0\0\0\5x"))  # stays failed
    assert parser.pending == 0


def test_large_message_in_many_chunks_is_assembled_once() -> None:
    row = m.DataRow((b"x" * 300_000, None)).encode()
    parser = BackendParser()
    frames: list[bytes] = []
    for i in range(0, len(row), 1000):
        frames += parser.feed(row[i:i + 1000])
    assert frames == [row] and parser.pending == 0


def test_protocol_3_2_startup_and_long_cancel_key() -> None:
    startup = m.StartupMessage(m.PROTOCOL_3_2, (("user", "u"), ("database", "d")))
    parsed = FrontendParser().feed_messages(startup.encode())
    assert parsed == [startup] and parsed[0].version == (3, 2)  # type: ignore[union-attr]
    cancel = m.CancelRequest(42, bytes(range(32)))
    assert FrontendParser().feed_messages(cancel.encode()) == [cancel]
    key = m.BackendKeyData(42, bytes(range(32)))
    assert decode_backend(key.encode()) == key
