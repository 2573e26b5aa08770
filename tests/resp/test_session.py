"""The sans-IO session on plain byte strings: no sockets, no clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flux_proxy.model import Exchange, Lifetime, RequestTag
from flux_proxy.resp.codec import (
    CommandScanner,
    ProtocolError,
    decode_command,
    encode,
    encode_command,
)
from flux_proxy.resp.render import (
    command_json,
    reply_json,
    request_from_frame,
    response_from_frames,
)
from flux_proxy.resp.session import PUSH_COMMAND, RespSession
from flux_proxy.resp.values import Array, BulkString, Integer, Push
from tests.resp.strategies import command_args, values


def make_session(logged_in: bool = True) -> tuple[RespSession, list[Exchange], RequestTag]:
    finished: list[Exchange] = []
    tag = RequestTag()
    session = RespSession(7, tag, finished, reauth=[encode_command("AUTH", "pw")])
    if logged_in:
        session.upstream_ready(0.0)
    return session, finished, tag


def push(*items: bytes | int) -> bytes:
    return encode(Push(tuple(Integer(i) if isinstance(i, int) else BulkString(i)
                             for i in items)))


def array(*items: bytes | int) -> bytes:
    return encode(Array(tuple(Integer(i) if isinstance(i, int) else BulkString(i)
                              for i in items)))


def test_fifo_pipeline_with_auth_answered_in_place():
    session, finished, tag = make_session()
    tag.set_current_request("r1")
    session.client_commands([encode_command("GET", "a"), encode_command("AUTH", "secret"),
                             encode_command("GET", "b")], now=1.0)
    assert session.upstream_out == [encode_command("GET", "a"), encode_command("GET", "b")]
    assert session.client_out == []  # AUTH's OK must wait for GET a's reply
    session.server_frames([b"$1\r\n1\r\n"], now=2.0)
    assert session.client_out == [b"$1\r\n1\r\n", b"+OK\r\n"]
    session.server_frames([b"$1\r\n2\r\n"], now=3.0)
    assert [e.seq for e in finished] == [1, 2, 3]
    get_a, auth, get_b = finished
    assert auth.lifetime is Lifetime.SESSION and get_a.lifetime is Lifetime.REQUEST
    assert auth.request == {"command": "AUTH", "args": ["<redacted>"]}
    assert auth.client_frames == [encode_command("AUTH", "<redacted>")]
    assert get_b.duration == 2.0 and get_b.request_id == "r1"
    assert session.outstanding == 0


def test_hello_auth_is_stripped_and_protocol_switches_on_success():
    session, finished, _ = make_session()
    session.client_commands([encode_command("HELLO", "3", "AUTH", "u", "pw", "SETNAME", "app")],
                            now=0.0)
    assert session.upstream_out == [encode_command("HELLO", "3", "SETNAME", "app")]
    assert session.protocol == 2
    session.server_frames([b"%1\r\n+proto\r\n:3\r\n"], now=0.1)
    assert session.protocol == 3
    assert finished[0].request["args"] == ["3", "AUTH", "u", "<redacted>", "SETNAME", "app"]


def test_resp3_pushes_are_never_replies():
    session, finished, tag = make_session()
    session.protocol = 3
    session.client_commands([encode_command("GET", "k")], now=0.0)
    tag.set_current_request("req")
    invalidate = push(b"invalidate", b"k")
    session.server_frames([invalidate, b"$1\r\nv\r\n"], now=1.0)
    assert session.client_out == [invalidate, b"$1\r\nv\r\n"]
    pushed, get = finished
    assert pushed.request == {"command": PUSH_COMMAND, "args": []}
    assert pushed.client_frames == [] and pushed.request_id == "req"
    assert get.response == {"value": "v", "error": None} and get.seq == 1


def test_resp2_subscribe_mode_tells_messages_from_confirmations():
    session, finished, _ = make_session()
    session.client_commands([encode_command("SUBSCRIBE", "a", "b")], now=0.0)
    session.server_frames([array(b"subscribe", b"a", 1)], now=0.1)
    assert finished == []  # one confirmation still owed
    session.server_frames([array(b"message", b"a", b"early"), array(b"subscribe", b"b", 2)],
                          now=0.2)
    assert [e.request["command"] for e in finished] == [PUSH_COMMAND, "SUBSCRIBE"]
    assert finished[1].response["value"] == [["subscribe", "a", 1], ["subscribe", "b", 2]]
    assert session.subscribed
    session.client_commands([encode_command("PING"), encode_command("UNSUBSCRIBE")], now=1.0)
    session.server_frames([array(b"pong", b""), array(b"unsubscribe", b"a", 1),
                           array(b"unsubscribe", b"b", 0)], now=1.1)
    ping, unsubscribe = finished[2:]
    assert ping.response["value"] == ["pong", ""]
    assert len(unsubscribe.server_frames) == 2
    assert not session.subscribed
    # Out of subscribe mode, an array that starts with "message" is an ordinary reply.
    session.client_commands([encode_command("LRANGE", "l", 0, -1)], now=2.0)
    session.server_frames([array(b"message", b"x", b"y")], now=2.1)
    assert finished[-1].request["command"] == "LRANGE"


def test_resp3_subscribe_confirmations_are_pushes():
    session, finished, _ = make_session()
    session.protocol = 3
    session.client_commands([encode_command("SSUBSCRIBE", "s"), encode_command("GET", "k")],
                            now=0.0)
    session.server_frames([push(b"ssubscribe", b"s", 1), b"_\r\n", push(b"smessage", b"s", b"m")],
                          now=0.5)
    assert [e.request["command"] for e in finished] == ["SSUBSCRIBE", "GET", PUSH_COMMAND]
    assert finished[1].response == {"value": None, "error": None}


def test_subscribe_error_is_its_reply():
    session, finished, _ = make_session()
    session.protocol = 3
    session.client_commands([encode_command("SUBSCRIBE")], now=0.0)
    session.server_frames([b"-ERR wrong number of arguments\r\n"], now=0.1)
    assert finished[0].failed and finished[0].response["error"].startswith("ERR wrong")
    assert session.outstanding == 0


def test_transaction_state_and_lifetimes():
    session, finished, _ = make_session()
    session.client_commands([encode_command("INFO"), encode_command("SELECT", 2),
                             encode_command("CLIENT", "SETNAME", "x"),
                             encode_command("WATCH", "k"), encode_command("MULTI"),
                             encode_command("INCR", "k")], now=0.0)
    assert session.in_multi and session.watching
    session.server_frames([b"$5\r\nx:1\r\n\r\n", b"+OK\r\n", b"+OK\r\n", b"+OK\r\n", b"+OK\r\n",
                           b"+QUEUED\r\n"], now=0.1)
    assert session.db == 2
    session.client_commands([encode_command("EXEC"), encode_command("INFO")], now=0.2)
    assert not session.in_multi and not session.watching
    session.server_frames([b"*1\r\n:1\r\n", b"$1\r\nx\r\n"], now=0.3)
    assert [e.lifetime.value for e in finished] == ["session", "session", "session", "request",
                                                     "request", "request", "request", "request"]
    assert finished[6].response == {"value": [1], "error": None}


def test_blocking_and_empty_commands():
    session, finished, _ = make_session()
    session.client_commands([b"*0\r\n", b"\r\n", encode_command("BLPOP", "q", 0)], now=0.0)
    assert session.upstream_out == [b"*0\r\n", b"\r\n", encode_command("BLPOP", "q", 0)]
    assert session.blocked and session.outstanding == 1
    session.server_frames([b"*2\r\n$1\r\nq\r\n$1\r\nv\r\n"], now=5.0)
    assert not session.blocked and finished[0].duration == 5.0


def test_own_answers_wait_for_the_upstream_login():
    session, finished, _ = make_session(logged_in=False)
    session.client_commands([encode_command("AUTH", "x")], now=0.0)
    assert session.client_out == []
    session.upstream_ready(0.1)
    assert session.client_out == [b"+OK\r\n"] and finished[0].duration == 0.1


def test_refused_login_answers_everything_with_the_upstream_error():
    session, finished, _ = make_session(logged_in=False)
    session.client_commands([encode_command("AUTH", "x"), encode_command("GET", "k")], now=0.0)
    session.upstream_refused("WRONGPASS invalid username-password pair", now=0.1)
    session.client_commands([encode_command("PING")], now=0.2)
    error = b"-WRONGPASS invalid username-password pair\r\n"
    assert session.client_out == [error, error, error]
    assert session.upstream_out == []
    assert all(e.failed for e in finished) and len(finished) == 3


def test_upstream_lost_fails_outstanding_and_closes():
    session, finished, _ = make_session()
    session.client_commands([encode_command("GET", "a"), encode_command("GET", "b")], now=0.0)
    session.server_frames([b"$1\r\n1\r\n"], now=0.1)
    session.upstream_lost(now=0.2)
    assert session.client_out[-1] == b"-ERR flux: upstream connection lost\r\n"
    assert session.close_client
    assert finished[1].failed and finished[1].response["error"] == \
        "ERR flux: upstream connection lost"


def test_client_garbage_is_answered_after_pending_replies():
    session, _, _ = make_session()
    session.client_commands([encode_command("PING")], now=0.0)
    session.client_protocol_error(ProtocolError("expected '$', got b':'"), now=0.0)
    assert session.client_out == [] and not session.close_client
    session.server_frames([b"+PONG\r\n"], now=0.1)
    assert session.client_out == [b"+PONG\r\n",
                                  b"-ERR Protocol error: expected '$', got b':'\r\n"]
    assert session.close_client


def test_reset_logs_in_again_without_telling_the_client():
    session, finished, _ = make_session()
    session.protocol = 3
    session.client_commands([encode_command("RESET"), encode_command("GET", "k")], now=0.0)
    assert session.upstream_out == [encode_command("RESET"), encode_command("AUTH", "pw"),
                                    encode_command("GET", "k")]
    assert session.protocol == 2
    session.server_frames([b"+RESET\r\n", b"+OK\r\n", b"$-1\r\n"], now=0.1)
    assert session.client_out == [b"+RESET\r\n", b"$-1\r\n"]
    assert [e.request["command"] for e in finished] == ["RESET", "GET"]


def test_monitor_lines_are_out_of_band():
    session, finished, _ = make_session()
    session.client_commands([encode_command("MONITOR")], now=0.0)
    session.server_frames([b"+OK\r\n", b'+1700000000.1 [0 127.0.0.1:1] "get" "k"\r\n'], now=0.1)
    assert [e.request["command"] for e in finished] == ["MONITOR", PUSH_COMMAND]


def test_mixed_case_and_inline_names():
    session, finished, _ = make_session()
    session.client_commands([encode_command("subscribe", "c"), b"auth pw\r\n"], now=0.0)
    assert session.upstream_out == [encode_command("subscribe", "c")]
    session.server_frames([array(b"subscribe", b"c", 1)], now=0.1)
    assert session.client_out == [array(b"subscribe", b"c", 1), b"+OK\r\n"]
    assert [e.request["command"] for e in finished] == ["SUBSCRIBE", "AUTH"]


@settings(max_examples=150, deadline=None)
@given(st.lists(command_args, min_size=1, max_size=6),
       st.lists(st.sampled_from([b"PING\r\n", b"\r\n", b"GET 'a b'\n"]), max_size=2))
def test_fast_command_scan_agrees_with_the_exact_scan(commands, inline):
    stream = b"".join(encode_command(*args) for args in commands) + b"".join(inline)
    fast = CommandScanner()
    frames = fast.feed(stream)
    exact = CommandScanner()
    exact_frames = [f for i in range(len(stream)) for f in exact.feed(stream[i:i + 1])]
    assert frames == exact_frames
    assert len(fast.names) == len(frames)
    for frame, name in zip(frames, fast.names, strict=True):
        if name is not None:
            assert name == decode_command(frame)[0]


@settings(max_examples=150, deadline=None)
@given(command_args)
def test_fast_request_rendering_matches_the_full_decode(args):
    assert request_from_frame(encode_command(*args)) == command_json(args)


@settings(max_examples=100, deadline=None)
@given(values)
def test_fast_reply_rendering_matches_the_full_decode(value):
    assert response_from_frames([encode(value)]) == reply_json(value)


def test_client_reply_off_and_skip_expect_no_replies():
    session, finished, _ = make_session()
    session.client_commands([
        encode_command("CLIENT", "REPLY", "SKIP"), encode_command("SET", "a", 1),
        encode_command("GET", "a"), encode_command("CLIENT", "REPLY", "OFF"),
        encode_command("SET", "b", 2), encode_command("CLIENT", "REPLY", "ON"),
        encode_command("GET", "b")], now=0.0)
    assert len(session.upstream_out) == 7
    assert session.outstanding == 3  # GET a, CLIENT REPLY ON, GET b
    session.server_frames([b"$1\r\n1\r\n", b"+OK\r\n", b"$1\r\n2\r\n"], now=0.1)
    by_seq = sorted(finished, key=lambda e: e.seq)
    assert [len(e.server_frames) for e in by_seq] == [0, 0, 1, 0, 0, 1, 1]
    assert by_seq[6].response["value"] == "2"


def test_unreachable_upstream_tells_the_first_command_then_closes():
    session, finished, _ = make_session(logged_in=False)
    session.upstream_refused("ERR flux: cannot connect to upstream", now=0.0, close=True)
    assert not session.close_client  # nothing asked yet: wait for a command to answer
    session.client_commands([encode_command("PING")], now=0.1)
    assert session.client_out == [b"-ERR flux: cannot connect to upstream\r\n"]
    assert session.close_client and finished[0].failed


# -- pipelines of ordinary commands: one queue entry per read ---------------------------------

def feed_commands(session: RespSession, frames: list[bytes], now: float,
                  as_proxy: bool) -> None:
    """As the proxy does (with the scanner's command names), or frame by frame without."""
    if as_proxy:
        scanner = CommandScanner()
        assert scanner.feed(b"".join(frames)) == frames
        session.client_commands(frames, now, scanner.names)
    else:
        session.client_commands(frames, now)


def snapshot(session: RespSession, finished: list[Exchange]) -> tuple[object, ...]:
    return ([(e.seq, e.request_id, e.started_at, e.duration, e.client_frames, e.server_frames,
              e.failed, e.request, e.response) for e in finished],
            list(session.upstream_out), list(session.client_out), session.outstanding,
            session.close_client)


plain = st.sampled_from([encode_command("GET", "k"), encode_command("set", "a", "b"),
                         encode_command("INCR", "n"), encode_command("Get", "x")])
replies = st.sampled_from([b"+OK\r\n", b"$1\r\nv\r\n", b":3\r\n", b"-ERR no\r\n", b"_\r\n"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(plain, min_size=1, max_size=6), min_size=1, max_size=4), st.data())
def test_pipelines_record_as_if_sent_one_by_one(reads, data):
    """The run form of a pipeline is only a cheaper queue: every observable is the same as
    with one entry per command, whatever the reply chunking, pushes or endings."""
    commands = [frame for read in reads for frame in read]
    answers = [data.draw(replies) for _ in commands]
    pushes = data.draw(st.sets(st.integers(0, len(answers))))
    server = []
    for index, answer in enumerate(answers):
        if index in pushes:
            server.append(push(b"invalidate", b"k"))
        server.append(answer)
    cut = data.draw(st.integers(0, len(server)))
    ending = data.draw(st.sampled_from(["none", "client_lost", "upstream_lost", "auth"]))
    outcomes = []
    for as_proxy in (True, False):
        session, finished, tag = make_session()
        session.protocol = 3  # pushes are RESP3
        for number, read in enumerate(reads):
            tag.set_current_request(f"r{number}")
            feed_commands(session, read, float(number), as_proxy)
        session.server_frames(server[:cut], now=10.0)
        if ending == "client_lost":
            session.client_lost(now=11.0)
        elif ending == "upstream_lost":
            session.upstream_lost(now=11.0)
        elif ending == "auth":
            session.client_commands([encode_command("AUTH", "pw")], now=11.0)
            session.server_frames(server[cut:], now=12.0)
        else:
            session.server_frames(server[cut:], now=12.0)
        outcomes.append(snapshot(session, finished))
    assert outcomes[0] == outcomes[1]


def test_a_pipeline_answered_in_two_reads():
    session, finished, tag = make_session()
    tag.set_current_request("r1")
    frames = [encode_command("SET", "a", str(i)) for i in range(5)]
    feed_commands(session, frames, 1.0, as_proxy=True)
    assert session.upstream_out == frames and session.outstanding == 5
    session.upstream_out.clear()
    session.server_frames([b"+OK\r\n"] * 3, now=2.0)
    assert session.outstanding == 2 and [e.seq for e in finished] == [1, 2, 3]
    session.client_commands([encode_command("AUTH", "x")], now=2.5)  # answered after the run
    session.server_frames([b"+OK\r\n", b"-ERR nope\r\n"], now=3.0)
    assert [e.seq for e in finished] == [1, 2, 3, 4, 5, 6]
    assert [e.failed for e in finished] == [False] * 4 + [True, False]
    assert finished[4].client_frames == [frames[4]] and finished[4].duration == 2.0
    assert all(e.request_id == "r1" for e in finished)
    assert session.client_out == [b"+OK\r\n"] * 4 + [b"-ERR nope\r\n", b"+OK\r\n"]
    assert session.outstanding == 0
