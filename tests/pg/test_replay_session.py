"""The replay session without sockets: client bytes in, answers out, from captured frames."""

from __future__ import annotations

import pytest

from flux_proxy.matcher import MatchKind, key_of
from flux_proxy.model import Exchange, Lifetime, Protocol, RequestTag
from flux_proxy.pg import messages as m
from flux_proxy.pg.codec import BackendParser, decode_backend
from flux_proxy.pg.replay_catalog import PgCatalog, split_replies
from flux_proxy.pg.replay_session import PgReplaySession
from flux_proxy.replay import ReplayBook
from tests.pg.replay_capture import EXCHANGES

STARTUP = m.StartupMessage(parameters=(("user", "postgres"), ("database", "flux_test")))
SELECT_BY_ID = "SELECT id, v FROM t WHERE id = $1"


def recorded() -> list[Exchange]:
    return [Exchange.from_json(doc) for doc in EXCHANGES]


def make_book() -> ReplayBook:
    exchanges = recorded()
    return ReplayBook([x for x in exchanges if x.request_id == "req"],
                      [x for x in exchanges if x.request_id is None])


class Client:
    """A replay session driven with encoded messages; answers decoded for assertions."""

    def __init__(self, book: ReplayBook | None = None, request: str | None = "req") -> None:
        self.book = book or make_book()
        self.tag = RequestTag()
        self.tag.set_current_request(request)
        catalog = PgCatalog(self.book.exchanges_of(Protocol.POSTGRES, Lifetime))
        self.session = PgReplaySession(self.book, catalog, 1, self.tag)
        self.parser = BackendParser()

    def send(self, *messages: m.Message) -> list[m.Message]:
        data = self.session.receive(b"".join(x.encode() for x in messages))
        return [decode_backend(f) for f in self.parser.feed(data)]

    def start(self) -> list[m.Message]:
        return self.send(STARTUP)


def kinds(messages: list[m.Message]) -> list[str]:
    return [type(x).__name__ for x in messages]


def error_of(messages: list[m.Message]) -> m.ErrorResponse:
    return next(x for x in messages if isinstance(x, m.ErrorResponse))


def test_recorded_keys_survive_the_json_round_trip() -> None:
    """What the runtime stores and reloads is matched as the proxy recorded it."""
    for doc in EXCHANGES:
        if doc["lifetime"] == "request":
            again = Exchange.from_json(Exchange.from_json(doc).to_json(frames=True))
            assert key_of(Protocol.POSTGRES, again.request) == key_of(Protocol.POSTGRES,
                                                                      doc["request"])


def test_split_replies_pairs_each_message_with_its_answer() -> None:
    failed_bind = recorded()[-1]
    replies = split_replies(failed_bind.client_frames, failed_bind.server_frames)
    assert [chr(r.message[0]) for r in replies] == ["P", "B", "D", "E", "S"]
    assert [[chr(f[0]) for f in r.frames] for r in replies] == [["1"], ["E"], [], [], ["Z"]]
    assert replies[1].failed and not replies[4].failed


def test_handshake_answers_the_recorded_greeting_on_any_number_of_connections() -> None:
    book = make_book()
    greeting = recorded()[0].server_frames
    for _ in range(3):
        client = Client(book)
        assert client.session.receive(m.GSSENCRequest().encode()) == b"N"
        assert client.session.receive(m.SSLRequest().encode()) == b"N"
        assert client.session.receive(STARTUP.encode()) == b"".join(greeting)
    answer = Client(book).start()
    assert kinds(answer)[0] == "AuthenticationOk" and answer[-1] == m.ReadyForQuery("I")
    assert {x.name for x in answer if isinstance(x, m.ParameterStatus)} >= {
        "server_version", "client_encoding", "DateStyle"}
    assert sum(isinstance(x, m.BackendKeyData) for x in answer) == 1
    assert book.replayed == []  # the handshake is not a request exchange


def test_no_recorded_session_refuses_the_connection_with_a_fatal_error() -> None:
    book = ReplayBook([x for x in recorded() if x.lifetime is not Lifetime.SESSION])
    client = Client(book)
    [error] = client.start()
    assert isinstance(error, m.ErrorResponse) and error.sqlstate == "FX001"
    assert client.session.closed


def test_cancel_request_is_accepted_and_terminate_closes() -> None:
    client = Client()
    assert client.session.receive(m.CancelRequest(1, b"\0\0\0\1").encode()) == b""
    assert client.session.closed
    client = Client()
    client.start()
    assert client.send(m.Terminate()) == [] and client.session.closed


def test_statements_come_from_the_catalog_whatever_their_name_and_wait_for_flush() -> None:
    client = Client()
    client.start()
    sql = "SELECT $1::int4 + 1 AS n"
    assert client.send(m.Parse("other_name", sql, (23,)), m.Describe("S", "other_name")) == []
    answer = client.send(m.Flush())
    assert kinds(answer) == ["ParseComplete", "ParameterDescription", "RowDescription"]
    assert answer[1] == m.ParameterDescription((23,))
    assert [f.name for f in answer[2].fields] == ["n"]  # type: ignore[attr-defined]
    answer = client.send(m.Bind("", "other_name", (1,), ((41).to_bytes(4, "big"),), (0,)),
                         m.Execute("", 0), m.Sync())
    assert kinds(answer) == ["BindComplete", "DataRow", "CommandComplete", "ReadyForQuery"]
    assert answer[1] == m.DataRow((b"42",))
    [replayed] = client.book.replayed
    assert replayed.match.kind is MatchKind.EXACT and replayed.source == "recorded"
    assert replayed.exchange.request["statement"] == "other_name"
    assert replayed.exchange.request["params"] == [41]
    assert replayed.exchange.response["rows"] == [["42"]]


def test_a_changed_parameter_is_answered_and_diverges_on_that_field() -> None:
    client = Client()
    client.start()
    client.send(m.Parse("s", "SELECT $1::int4 + 1 AS n", (23,)), m.Describe("S", "s"),
                m.Flush())
    answer = client.send(m.Bind("", "s", (1,), ((99).to_bytes(4, "big"),), (0,)),
                         m.Execute("", 0), m.Sync())
    assert answer[1] == m.DataRow((b"42",))  # the recorded answer
    [replayed] = client.book.replayed
    assert replayed.match.kind is MatchKind.DIVERGED
    assert [d.to_json() for d in replayed.match.divergences] == [
        {"seq": 3, "field": "param $1", "expected": 41, "actual": 99}]


def test_transaction_status_follows_the_recording_through_an_error_and_rollback() -> None:
    client = Client()
    client.start()
    statuses = []
    for sql in ("BEGIN", "INSERT INTO t VALUES (1, 'one')", "SELECT 1/0", "ROLLBACK"):
        answer = client.send(m.Query(sql))
        assert isinstance(answer[-1], m.ReadyForQuery)
        statuses.append(answer[-1].status)
    assert statuses == ["T", "T", "E", "I"]
    assert [r.exchange.response.get("error") is not None for r in client.book.replayed] == [
        False, False, True, False]


def test_a_recorded_bind_error_is_replayed_in_place_of_bind_complete() -> None:
    client = Client()
    client.start()
    ok = [m.Parse("", SELECT_BY_ID, ()), m.Bind("", "", (), (b"1",), ()), m.Describe("P", ""),
          m.Execute("", 0), m.Sync()]
    assert kinds(client.send(*ok)) == [
        "ParseComplete", "BindComplete", "RowDescription", "CommandComplete", "ReadyForQuery"]
    bad = [m.Parse("", SELECT_BY_ID, ()), m.Bind("", "", (), (b"abc",), ()),
           m.Describe("P", ""), m.Execute("", 0), m.Sync()]
    answer = client.send(*bad)
    assert kinds(answer) == ["ParseComplete", "ErrorResponse", "ReadyForQuery"]
    assert error_of(answer).sqlstate == "22P02"
    assert client.book.unused() == [x for x in client.book.request_exchanges
                                    if x.request.get("sql") != SELECT_BY_ID
                                    and x.lifetime is Lifetime.REQUEST]


def test_binary_results_where_the_recording_has_text_are_an_explicit_mismatch() -> None:
    client = Client()
    client.start()
    answer = client.send(m.Parse("", SELECT_BY_ID, ()), m.Bind("", "", (), (b"1",), (1,)),
                         m.Execute("", 0), m.Sync())
    error = error_of(answer)
    assert error.sqlstate == "FX002" and "result formats" in (error.message or "")
    assert "['text', 'text']" in (error.message or "") and "binary" in (error.message or "")
    assert kinds(answer)[-1] == "ReadyForQuery"
    [replayed] = client.book.replayed
    assert replayed.match.kind is MatchKind.DIVERGED
    assert replayed.match.divergences[0].field == "result formats"


@pytest.mark.parametrize("extended", [False, True])
def test_a_miss_answers_fx001_naming_the_sql_and_the_connection_stays_usable(
        extended: bool) -> None:
    client = Client()
    client.start()
    if extended:
        answer = client.send(m.Parse("", "SELECT 'not recorded'", ()),
                             m.Bind("", "", (), (), ()), m.Execute("", 0), m.Sync())
        assert kinds(answer) == ["ErrorResponse", "ReadyForQuery"]  # the rest is discarded
    else:
        answer = client.send(m.Query("SELECT 'not recorded'"))
        assert kinds(answer) == ["ErrorResponse", "ReadyForQuery"]
    error = error_of(answer)
    assert error.sqlstate == "FX001" and "SELECT 'not recorded'" in (error.message or "")
    stopped = client.book.stopped_at
    assert stopped is not None and stopped.exchange.request["sql"] == "SELECT 'not recorded'"
    assert stopped.match.kind is MatchKind.MISS and stopped.exchange.failed
    answer = client.send(m.Query("BEGIN"))
    assert kinds(answer) == ["CommandComplete", "ReadyForQuery"]


def test_start_up_io_is_answered_from_the_boot_record_without_divergences() -> None:
    client = Client(request=None)
    client.start()
    answer = client.send(m.Query("CREATE TABLE t (id int primary key, v text)"))
    assert kinds(answer) == ["CommandComplete", "ReadyForQuery"]
    [replayed] = client.book.replayed
    assert replayed.source == "boot" and not replayed.during_request
    assert client.book.stopped_at is None and client.book.unused() != []


def test_garbage_from_the_client_gets_a_fatal_error_and_closes() -> None:
    client = Client()
    client.start()
    data = client.session.receive(b"\x01\0\0\0\4")
    assert decode_backend(data).sqlstate == "08P01"  # type: ignore[union-attr]
    assert client.session.closed


def test_a_statement_prepared_outside_the_recording_is_described_from_its_execute() -> None:
    """The recording lost its Parse/Describe (an earlier request prepared it): a fresh
    connection's Parse/Describe/Flush are answered from the Execute's recorded semantics."""
    exchanges = [x for x in recorded() if x.lifetime is not Lifetime.CONNECTION]
    book = ReplayBook([x for x in exchanges if x.request_id == "req"],
                      [x for x in exchanges if x.request_id is None])
    client = Client(book)
    client.start()
    answer = client.send(m.Parse("fresh", "SELECT $1::int4 + 1 AS n", ()),
                         m.Describe("S", "fresh"), m.Flush())
    assert kinds(answer) == ["ParseComplete", "ParameterDescription", "RowDescription"]
    assert answer[1] == m.ParameterDescription((23,))
    [field] = answer[2].fields  # type: ignore[attr-defined]
    assert (field.name, field.type_oid, field.format) == ("n", 23, 0)
    answer = client.send(m.Bind("", "fresh", (1,), ((41).to_bytes(4, "big"),), (0,)),
                         m.Execute("", 0), m.Sync())
    assert answer[1] == m.DataRow((b"42",))
    assert client.book.replayed[0].match.kind is MatchKind.EXACT


def test_simple_queries_differing_only_in_literals_diverge_and_others_miss() -> None:
    """Inline literals are parameters; a query of another shape is another query, even where
    pglast's fingerprint equates them (more VALUES rows, other target lists or aliases)."""
    client = Client()
    client.start()
    client.send(m.Query("BEGIN"))
    answer = client.send(m.Query("insert into t values (2,   'one')"))
    assert kinds(answer) == ["CommandComplete", "ReadyForQuery"]
    diverged = client.book.replayed[-1]
    assert [(d.field, d.expected, d.actual) for d in diverged.match.divergences] == [
        ("literal #1", "1", "2")]
    answer = client.send(m.Query("INSERT INTO t VALUES (1, 'one'), (2, 'two')"))
    assert error_of(answer).sqlstate == "FX001"
    assert client.book.replayed[-1].match.kind is MatchKind.MISS


def test_malformed_messages_get_a_fatal_error_never_an_exception() -> None:
    import random

    rng = random.Random(7)
    for _ in range(300):
        client = Client()
        client.start()
        kind = rng.choice(b"PBDCEQSHFdcf")
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(12)))
        frame = bytes([kind]) + (len(body) + 4).to_bytes(4, "big") + body
        answer = client.session.receive(frame + m.Sync().encode())
        for message in BackendParser().feed_messages(answer):
            if isinstance(message, m.ErrorResponse) and message.severity == "FATAL":
                assert message.sqlstate == "08P01" and client.session.closed
