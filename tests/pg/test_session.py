"""Sans-IO tests of exchange grouping, reply correlation and session state."""

from __future__ import annotations

import struct

from flux_proxy.model import Exchange, Lifetime, RequestTag
from flux_proxy.pg import messages as m
from flux_proxy.pg.session import PgSession

INT4, TEXT = 23, 25


class Harness:
    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self.tag = RequestTag()
        self.session = PgSession(7, self.exchanges.append, self.tag)
        self.clock = 100.0

    def client(self, *msgs: m.Message) -> None:
        self.clock += 1
        self.session.client_frames([x.encode() for x in msgs], self.clock)

    def server(self, *msgs: m.Message) -> None:
        self.clock += 1
        self.session.server_frames([x.encode() for x in msgs], self.clock)


def rows_of(*names_oids: tuple[str, int], fmt: int = 0) -> m.RowDescription:
    return m.RowDescription(tuple(m.FieldDescription(n, type_oid=o, format=fmt)
                                  for n, o in names_oids))


def test_simple_query_is_one_request_exchange_tagged_when_sent() -> None:
    h = Harness()
    h.tag.set_current_request("req-1")
    h.client(m.Query("SELECT 1 AS one"))
    h.tag.set_current_request("req-2")
    h.server(rows_of(("one", INT4)), m.DataRow((b"1",)), m.CommandComplete("SELECT 1"),
             m.ReadyForQuery("I"))
    [ex] = h.exchanges
    assert (ex.connection, ex.seq, ex.lifetime, ex.request_id) == (7, 1, Lifetime.REQUEST,
                                                                   "req-1")
    assert ex.started_at == 101 and ex.duration == 1 and not ex.failed
    assert [f[0:1] for f in ex.client_frames] == [b"Q"]
    assert [f[0:1] for f in ex.server_frames] == [b"T", b"D", b"C", b"Z"]
    assert ex.request == {"sql": "SELECT 1 AS one", "params": [], "param_formats": [],
                          "param_oids": [], "result_formats": [], "statement": None,
                          "portal": None, "simple": True}
    assert ex.response == {"command_tag": "SELECT 1",
                           "columns": [{"name": "one", "type_oid": INT4, "format": 0}],
                           "rows": [["1"]], "row_count": 1, "error": None, "tx_status": "I"}


def test_simple_query_error_keeps_every_field() -> None:
    h = Harness()
    h.client(m.Query("SELECT * FROM missing"))
    error = m.ErrorResponse((("S", "ERROR"), ("V", "ERROR"), ("C", "42P01"),
                             ("M", 'relation "missing" does not exist'), ("P", "15"),
                             ("F", "parse_relation.c"), ("L", "1392"), ("R", "parserOpenTable")))
    h.server(error, m.ReadyForQuery("I"))
    [ex] = h.exchanges
    assert ex.failed
    assert ex.response["error"] == {
        "sqlstate": "42P01", "message": 'relation "missing" does not exist',
        "severity": "ERROR", "severity_nonlocalized": "ERROR", "detail": None, "hint": None,
        "position": "15", "file": "parse_relation.c", "line": "1392",
        "routine": "parserOpenTable"}


def test_copy_from_stdin_belongs_to_its_query() -> None:
    h = Harness()
    h.client(m.Query("COPY t FROM STDIN"))
    h.server(m.CopyInResponse(0, (0, 0)))
    h.client(m.CopyData(b"1\ta\n"), m.CopyData(b"2\tb\n"), m.CopyDone())
    h.server(m.CommandComplete("COPY 2"), m.ReadyForQuery("I"))
    [ex] = h.exchanges
    assert [f[0:1] for f in ex.client_frames] == [b"Q", b"d", b"d", b"c"]
    assert ex.request["copy_data"] == ["1\ta\n", "2\tb\n"]
    assert ex.response["command_tag"] == "COPY 2" and ex.response["row_count"] == 2


def test_extended_batch_with_sync_is_one_exchange_with_binary_params() -> None:
    h = Harness()
    h.tag.set_current_request("r")
    h.client(m.Parse("", "SELECT $1::int4 + 1, $2::text", (INT4, 0)),
             m.Bind("", "", (1, 0), (struct.pack("!i", 41), None), (1,)),
             m.Describe("P", ""), m.Execute("", 0), m.Sync())
    h.server(m.ParseComplete(), m.BindComplete(), rows_of(("a", INT4), ("b", TEXT), fmt=1),
             m.DataRow((struct.pack("!i", 42), b"x")), m.CommandComplete("SELECT 1"),
             m.ReadyForQuery("I"))
    [ex] = h.exchanges
    assert ex.lifetime == Lifetime.REQUEST and ex.request_id == "r"
    assert len(ex.client_frames) == 5 and len(ex.server_frames) == 6
    assert ex.request == {"sql": "SELECT $1::int4 + 1, $2::text", "params": [41, None],
                          "param_formats": [1, 0], "param_oids": [INT4, 0],
                          "result_formats": [1], "statement": "", "portal": "",
                          "simple": False}
    assert ex.response["rows"] == [[42, "x"]]
    assert ex.response["columns"] == [{"name": "a", "type_oid": INT4, "format": 1},
                                      {"name": "b", "type_oid": TEXT, "format": 1}]


def test_one_write_batch_takes_the_fast_path_and_records_the_same() -> None:
    h = Harness()
    batch = (m.Parse("", "SELECT $1::text"), m.Bind("", "", (), (b"a",), ()),
             m.Describe("P", ""), m.Execute(), m.Sync())
    h.client(*batch)
    assert h.session._queue[0][0] < 0  # one queue entry for the whole batch
    h.server(m.ParseComplete(), m.BindComplete(), rows_of(("text", TEXT)))
    h.server(m.DataRow((b"a",)), m.CommandComplete("SELECT 1"), m.ReadyForQuery("T"))
    slow = Harness()
    for msg in batch:
        slow.client(msg)
    assert len(slow.session._queue) == 5
    slow.server(m.ParseComplete(), m.BindComplete(), rows_of(("text", TEXT)),
                m.DataRow((b"a",)), m.CommandComplete("SELECT 1"), m.ReadyForQuery("T"))
    [fast_ex], [slow_ex] = h.exchanges, slow.exchanges
    assert fast_ex.client_frames == slow_ex.client_frames
    assert fast_ex.server_frames == slow_ex.server_frames
    assert (fast_ex.request, fast_ex.response) == (slow_ex.request, slow_ex.response)
    assert h.session.tx_status == "T" and h.session.statements[b""].sql == "SELECT $1::text"


def test_pipeline_is_one_exchange_per_execute_and_error_skips_to_sync() -> None:
    h = Harness()
    h.client(m.Parse("", "SELECT 1"), m.Bind(), m.Execute(),
             m.Parse("", "SELECT broken"), m.Bind(), m.Execute(),
             m.Parse("", "SELECT 3"), m.Bind(), m.Execute(), m.Sync())
    h.server(m.ParseComplete(), m.BindComplete(), m.DataRow((b"1",)),
             m.CommandComplete("SELECT 1"))
    assert len(h.exchanges) == 1  # complete as soon as its Execute is answered
    h.server(m.ErrorResponse((("S", "ERROR"), ("C", "42703"), ("M", "no such column"))),
             m.ReadyForQuery("I"))
    first, second, third = h.exchanges
    assert [e.seq for e in h.exchanges] == [1, 2, 3]
    assert not first.failed and first.response["rows"] == [["1"]]
    assert second.failed and second.response["error"]["sqlstate"] == "42703"
    assert [f[0:1] for f in second.server_frames] == [b"E"]
    # Skipped by the server: only the Sync's ReadyForQuery answers it.
    assert third.failed and [f[0:1] for f in third.client_frames] == [b"P", b"B", b"E", b"S"]
    assert [f[0:1] for f in third.server_frames] == [b"Z"]
    assert third.response["tx_status"] == "I"


def test_prepare_is_connection_lifetime_and_feeds_later_executes() -> None:
    h = Harness()
    h.client(m.Parse("stmt1", "SELECT name FROM t WHERE id = $1"), m.Describe("S", "stmt1"),
             m.Sync())
    h.server(m.ParseComplete(), m.ParameterDescription((INT4,)), rows_of(("name", TEXT)),
             m.ReadyForQuery("I"))
    h.tag.set_current_request("req")
    h.client(m.Bind("", "stmt1", (1,), (struct.pack("!i", 5),), (1,)), m.Execute(), m.Sync())
    h.server(m.BindComplete(), m.DataRow((b"five",)), m.CommandComplete("SELECT 1"),
             m.ReadyForQuery("I"))
    prepare, execute = h.exchanges
    assert prepare.lifetime == Lifetime.CONNECTION and prepare.request_id is None
    assert prepare.request["sql"] == "SELECT name FROM t WHERE id = $1"
    assert prepare.request["param_oids"] == [INT4]
    assert prepare.response["columns"] == [{"name": "name", "type_oid": TEXT, "format": 0}]
    assert execute.lifetime == Lifetime.REQUEST and execute.request_id == "req"
    assert execute.request["sql"] == "SELECT name FROM t WHERE id = $1"
    assert execute.request["params"] == [5] and execute.request["statement"] == "stmt1"
    assert execute.response["rows"] == [["five"]]
    assert execute.response["columns"] == [{"name": "name", "type_oid": TEXT, "format": 1}]
    assert h.session.statements[b"stmt1"].row_description is not None
    h.client(m.Close("S", "stmt1"), m.Sync())
    h.server(m.CloseComplete(), m.ReadyForQuery("I"))
    assert b"stmt1" not in h.session.statements
    assert h.exchanges[-1].lifetime == Lifetime.CONNECTION


def test_flush_batch_ends_when_everything_since_the_boundary_is_answered() -> None:
    h = Harness()  # postgres.js: Parse/Describe/Flush, then Bind/Execute/Sync
    h.client(m.Parse("p1", "SELECT $1::text"), m.Describe("S", "p1"), m.Flush())
    h.server(m.ParseComplete(), m.ParameterDescription((TEXT,)))
    assert h.exchanges == []
    h.server(rows_of(("text", TEXT)))
    [describe] = h.exchanges
    assert describe.lifetime == Lifetime.CONNECTION
    assert [f[0:1] for f in describe.client_frames] == [b"P", b"D", b"H"]
    h.client(m.Bind("", "p1", (), (b"hi",), ()), m.Execute(), m.Sync())
    h.server(m.BindComplete(), m.DataRow((b"hi",)), m.CommandComplete("SELECT 1"),
             m.ReadyForQuery("I"))
    assert h.exchanges[1].request["params"] == ["hi"]
    assert h.exchanges[1].response["rows"] == [["hi"]]


def test_suspended_portal_execute_again_uses_the_portal_statement() -> None:
    h = Harness()
    h.client(m.Query("BEGIN"))
    h.server(m.CommandComplete("BEGIN"), m.ReadyForQuery("T"))
    h.client(m.Parse("s", "SELECT g FROM generate_series(1, 3) g"),
             m.Bind("cur", "s"), m.Execute("cur", 2), m.Flush())
    h.server(m.ParseComplete(), m.BindComplete(), m.DataRow((b"1",)), m.DataRow((b"2",)),
             m.PortalSuspended())
    h.client(m.Execute("cur", 2), m.Sync())
    h.server(m.DataRow((b"3",)), m.CommandComplete("SELECT 1"), m.ReadyForQuery("T"))
    _, first, second = h.exchanges
    assert first.response["rows"] == [["1"], ["2"]] and first.request["max_rows"] == 2
    assert second.request["sql"] == "SELECT g FROM generate_series(1, 3) g"
    assert second.request["portal"] == "cur" and second.response["rows"] == [["3"]]
    assert h.session.tx_status == "T"


def test_async_messages_join_the_open_exchange_or_stand_alone() -> None:
    h = Harness()
    h.client(m.Query("DO $$ BEGIN RAISE NOTICE 'hi'; END $$"))
    h.server(m.NoticeResponse((("S", "NOTICE"), ("M", "hi"))), m.CommandComplete("DO"),
             m.ReadyForQuery("I"))
    h.server(m.NotificationResponse(42, "chan", "payload"))
    h.server(m.ParameterStatus("TimeZone", "UTC"))
    query, notification, status = h.exchanges
    assert query.response["notices"] == [{"severity": "NOTICE", "message": "hi"}]
    assert notification.lifetime == Lifetime.SESSION and notification.client_frames == []
    assert notification.response["notifications"] == [
        {"process_id": 42, "channel": "chan", "payload": "payload"}]
    assert status.response["parameters"] == {"TimeZone": "UTC"}


def test_catalog_introspection_is_connection_lifetime() -> None:
    h = Harness()
    sql = ("SELECT t.oid, t.typname FROM pg_catalog.pg_type t JOIN pg_namespace n "
           "ON n.oid = t.typnamespace WHERE t.oid = any($1::oid[])")
    h.client(m.Query("SELECT typname FROM pg_catalog.pg_type WHERE oid = 23"))
    h.server(m.CommandComplete("SELECT 0"), m.ReadyForQuery("I"))
    h.client(m.Parse("", sql), m.Bind(), m.Execute(), m.Sync())
    h.server(m.ParseComplete(), m.BindComplete(), m.CommandComplete("SELECT 0"),
             m.ReadyForQuery("I"))
    h.client(m.Query("SELECT * FROM pg_catalog.pg_type t JOIN users u ON true"))
    h.server(m.CommandComplete("SELECT 0"), m.ReadyForQuery("I"))
    h.client(m.Query("UPDATE pg_settings SET setting = 1"))
    h.server(m.CommandComplete("UPDATE 0"), m.ReadyForQuery("I"))
    h.client(m.Query("SELECT count(*) FROM pg_stat_activity, pg_type"))  # app reads a view
    h.server(m.CommandComplete("SELECT 1"), m.ReadyForQuery("I"))
    assert [e.lifetime for e in h.exchanges] == [Lifetime.CONNECTION, Lifetime.CONNECTION,
                                                 Lifetime.REQUEST, Lifetime.REQUEST,
                                                 Lifetime.REQUEST]


def test_connection_lost_records_unfinished_exchanges_as_failed() -> None:
    h = Harness()
    h.client(m.Parse("", "SELECT pg_sleep(10)"), m.Bind(), m.Execute(), m.Sync())
    h.server(m.ParseComplete(), m.BindComplete())
    error = m.ErrorResponse((("S", "FATAL"), ("C", "08006"), ("M", "upstream connection lost")))
    h.session.connection_lost("upstream connection lost", 200.0, error.encode())
    [ex] = h.exchanges
    assert ex.failed and ex.duration == 200.0 - ex.started_at
    assert [f[0:1] for f in ex.server_frames] == [b"1", b"2", b"E"]
    assert ex.response["error"]["sqlstate"] == "08006"
    h.session.connection_lost("again", 201.0)
    assert len(h.exchanges) == 1


def test_client_gone_without_error_frame_still_names_the_reason() -> None:
    h = Harness()
    h.client(m.Parse("", "SELECT 1"), m.Bind(), m.Execute(), m.Parse("", "SELECT 2"),
             m.Bind(), m.Execute(), m.Sync())
    h.session.connection_lost("client disconnected", 105.0)
    assert [ex.seq for ex in h.exchanges] == [1, 2]
    for ex in h.exchanges:
        assert ex.failed and ex.response["error"]["message"] == "client disconnected"


def test_startup_exchange_is_session_lifetime_without_password() -> None:
    h = Harness()
    startup = m.StartupMessage(parameters=(("user", "app"), ("database", "db")))
    sent = [m.AuthenticationOk(), m.ParameterStatus("server_version", "15.1"),
            m.BackendKeyData(7, b"abcd"), m.ReadyForQuery("I")]
    h.session.record_startup([startup.encode()], [x.encode() for x in sent], 1.0, 1.5)
    [ex] = h.exchanges
    assert ex.lifetime == Lifetime.SESSION and ex.seq == 0 and ex.duration == 0.5
    assert ex.request == {"startup": {"user": "app", "database": "db"}, "protocol": "3.0"}
    assert ex.response["parameters"] == {"server_version": "15.1"}
    assert ex.response["backend_pid"] == 7 and ex.response["tx_status"] == "I"


def test_semantics_are_decoded_lazily_and_assignments_stick() -> None:
    h = Harness()
    h.client(m.Query("SELECT 1"))
    h.server(m.CommandComplete("SELECT 0"), m.ReadyForQuery("I"))
    [ex] = h.exchanges
    assert not ex._decoded()  # type: ignore[attr-defined]
    ex.response = {"replaced": True}
    assert ex.response == {"replaced": True} and ex.request["sql"] == "SELECT 1"
    doc = ex.to_json(frames=True)
    assert Exchange.from_json(doc).client_frames == ex.client_frames


def test_function_call_is_one_request_exchange() -> None:
    h = Harness()
    h.client(m.FunctionCall(1598, (1,), (struct.pack("!i", 7),), 0))
    h.server(m.FunctionCallResponse(b"7"), m.ReadyForQuery("I"))
    [ex] = h.exchanges
    assert ex.lifetime == Lifetime.REQUEST and not ex.failed
    assert ex.request["function_oid"] == 1598 and ex.request["param_formats"] == [1]
    assert ex.response["tx_status"] == "I"


def test_describe_replies_attach_to_the_right_statement() -> None:
    h = Harness()
    h.client(m.Parse("s1", "SELECT $1::int4 AS a"), m.Bind("", "s1", (), (b"1",), ()),
             m.Describe("P", ""), m.Parse("s2", "SELECT 'x' AS b"), m.Describe("S", "s2"),
             m.Describe("S", "s1"), m.Sync())
    h.server(m.ParseComplete(), m.BindComplete(), rows_of(("a", INT4)), m.ParseComplete(),
             m.ParameterDescription(()), rows_of(("b", TEXT)),
             m.ParameterDescription((INT4,)), rows_of(("a", INT4)), m.ReadyForQuery("I"))
    s1, s2 = h.session.statements[b"s1"], h.session.statements[b"s2"]
    assert s2.param_description == m.ParameterDescription(()).encode()
    assert s2.row_description == rows_of(("b", TEXT)).encode()
    assert s1.param_description == m.ParameterDescription((INT4,)).encode()
    assert s1.row_description == rows_of(("a", INT4)).encode()


def test_a_short_client_message_is_recorded_as_failed_not_raised() -> None:
    """Bind with a 4-byte length and Parse without its NUL: the server answers 08P01."""
    h = Harness()
    h.session.client_frames([b"B\x00\x00\x00\x04", m.Sync().encode()], 1.0)
    h.server(m.ErrorResponse((("S", "ERROR"), ("C", "08P01"), ("M", "invalid message format"))),
             m.ReadyForQuery("I"))
    h.session.client_frames([b"P\x00\x00\x00\x06ab", m.Sync().encode()], 3.0)
    h.server(m.ErrorResponse((("S", "ERROR"), ("C", "08P01"), ("M", "invalid string"))),
             m.ReadyForQuery("I"))
    assert len(h.exchanges) == 2
    assert all(x.failed for x in h.exchanges)
    assert h.exchanges[0].client_frames[0] == b"B\x00\x00\x00\x04"


def test_a_reply_split_over_reads_around_an_empty_one() -> None:
    """The one-read shortcut must not misread a read with no frames, or a reply that comes in
    pieces: the exchange completes at its ReadyForQuery, whatever the chunking."""
    h = Harness()
    h.client(m.Query("SELECT 1"))
    h.server()  # a read that completed no frame
    h.server(rows_of(("n", 23)), m.DataRow((b"1",)))
    assert h.exchanges == []
    h.server(m.CommandComplete("SELECT 1"), m.ReadyForQuery("I"))
    assert len(h.exchanges) == 1
    assert [f[:1] for f in h.exchanges[0].server_frames] == [b"T", b"D", b"C", b"Z"]
