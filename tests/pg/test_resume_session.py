"""The sans-IO resume session, byte for byte: what goes live at the switch, and what the
client reads of the live replies. (The driver tests run the same against a real server.)"""

from __future__ import annotations

from flux_proxy.model import Exchange, Lifetime, Protocol, RequestTag
from flux_proxy.pg import messages as m
from flux_proxy.pg.codec import BackendParser
from flux_proxy.pg.replay_catalog import PgCatalog
from flux_proxy.pg.resume_session import PgResumeSession
from flux_proxy.pg.semantic import ExchangeContext, StatementInfo, build_semantics
from flux_proxy.replay import ReplayBook

SQL = "INSERT INTO orders (item) VALUES ($1)"
STARTUP = m.StartupMessage(parameters=(("user", "app"), ("database", "shop")))
PARSE = m.Parse("s1", SQL, (23,)).encode()
PARAMS = m.ParameterDescription((23,)).encode()
SYNC = m.Sync().encode()
READY = m.ReadyForQuery("I").encode()
INSERTED = m.CommandComplete("INSERT 0 1").encode()


def bind(value: bytes, statement: str = "s1") -> bytes:
    return m.Bind("", statement, (), (value,), ()).encode()


EXECUTE = m.Execute("").encode()


def exchange(seq: int, lifetime: Lifetime, client: list[bytes], server: list[bytes],
             request: dict | None = None) -> Exchange:  # type: ignore[type-arg]
    return Exchange(Protocol.POSTGRES, 1, seq, lifetime, "original", float(seq), 0.0, client,
                    server, request or {}, {})


def book() -> ReplayBook:
    """A greeting, the prepare of s1, and one durable Execute of it with item 1."""
    greeting = exchange(0, Lifetime.SESSION, [STARTUP.encode()],
                        [m.AuthenticationOk().encode(), READY],
                        {"startup": dict(STARTUP.parameters)})
    prepare = exchange(1, Lifetime.CONNECTION, [PARSE, m.Describe("S", "s1").encode(), SYNC],
                       [m.ParseComplete().encode(), PARAMS, m.NoData().encode(), READY])
    client = [bind(b"1"), EXECUTE, SYNC]
    server = [m.BindComplete().encode(), INSERTED, READY]
    request, response = build_semantics(
        client, server, ExchangeContext("extended", StatementInfo(b"s1", PARSE, PARAMS)))
    insert = exchange(2, Lifetime.REQUEST, client, server, request)
    insert.response = response
    return ReplayBook([greeting, prepare, insert])


def kinds(data: bytes) -> str:
    return "".join(chr(frame[0]) for frame in BackendParser().feed(data))


def started() -> tuple[PgResumeSession, RequestTag]:
    recorded = book()
    tag = RequestTag()
    session = PgResumeSession(recorded, PgCatalog(recorded.exchanges_of(Protocol.POSTGRES,
                                                                        Lifetime)), 1, tag)
    assert kinds(session.receive(STARTUP.encode())) == "RZ"  # the recorded greeting
    tag.set_current_request("resumed")
    return session, tag


def test_a_statement_prepared_against_the_recording_is_prepared_upstream_first() -> None:
    session, _ = started()
    assert kinds(session.receive(PARSE + m.Describe("S", "s1").encode() + SYNC)) == "1tnZ"
    assert kinds(session.receive(bind(b"1") + EXECUTE + SYNC)) == "2CZ"  # durable: recorded
    assert session.take_live() == b""

    assert session.receive(bind(b"2") + EXECUTE + SYNC) == b""  # past the prefix
    assert session.take_live() == (STARTUP.encode() + PARSE + SYNC  # set-up, then the batch
                                   + bind(b"2") + EXECUTE + SYNC)
    server = (m.AuthenticationOk().encode() + m.BackendKeyData(9, b"k" * 4).encode() + READY
              + m.ParseComplete().encode() + READY  # the set-up's replies: not the client's
              + m.BindComplete().encode() + INSERTED + READY)
    assert kinds(session.live_received(server)) == "2CZ"
    assert session.live_for_good

    assert session.receive(bind(b"1") + EXECUTE + SYNC) == b""  # live for good, even if recorded
    assert session.take_live() == bind(b"1") + EXECUTE + SYNC


def test_the_unanswered_messages_of_the_batch_are_sent_again() -> None:
    """An unnamed statement the recording never saw: its Parse/Bind were held, not answered;
    the server answers the whole batch."""
    session, _ = started()
    other = m.Parse("", "SELECT $1::int", (23,)).encode()
    batch = other + bind(b"5", "") + m.Describe("P", "").encode() + EXECUTE + SYNC
    assert session.receive(batch) == b""
    assert session.take_live() == STARTUP.encode() + other + bind(b"5", "") + \
        m.Describe("P", "").encode() + EXECUTE + SYNC


def test_start_up_io_goes_live_and_the_request_comes_back_to_the_recording() -> None:
    session, tag = started()
    tag.set_current_request(None)
    query = m.Query("CREATE TABLE IF NOT EXISTS orders (item int)").encode()
    assert session.receive(query) == b""
    assert session.take_live() == STARTUP.encode() + query
    live = (m.AuthenticationOk().encode() + READY
            + m.CommandComplete("CREATE TABLE").encode() + READY)
    assert kinds(session.live_received(live)) == "CZ"

    tag.set_current_request("resumed")
    answered = session.receive(PARSE + m.Describe("S", "s1").encode() + SYNC
                               + bind(b"1") + EXECUTE + SYNC)
    assert kinds(answered) == "1tnZ2CZ"
    assert session.take_live() == b"" and not session.live_for_good


def test_a_malformed_client_message_is_answered_fatal_08p01_not_raised() -> None:
    session, _ = started()
    answer = session.receive(b"B\x00\x00\x00\x05\x00")  # a Bind cut short
    assert kinds(answer) == "E" and b"08P01" in answer
    assert session.closed
