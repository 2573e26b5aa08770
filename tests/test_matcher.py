"""The replay matcher's cascade: exact, then same statement (divergence), then miss."""

from flux_proxy.matcher import Matcher, MatchKind, key_of
from flux_proxy.model import Exchange, Lifetime, Protocol

PG, REDIS = Protocol.POSTGRES, Protocol.REDIS


def checkpoint(seq: int, protocol: Protocol, request: dict, lifetime=Lifetime.REQUEST) -> Exchange:
    return Exchange(protocol=protocol, connection=1, seq=seq, lifetime=lifetime, request_id="r",
                    started_at=0.0, duration=0.0, request=request)


def extended(sql: str, *params: object) -> dict:
    return {"sql": sql, "params": list(params), "portal": ""}


def simple(sql: str) -> dict:
    return {"sql": sql, "params": [], "simple": True}


def test_exact_matches_are_taken_in_recorded_order_once_each() -> None:
    a = checkpoint(1, PG, extended("select * from t where id = $1", "1"))
    b = checkpoint(2, PG, extended("select * from t where id = $1", "1"))
    m = Matcher([a, b])
    key = key_of(PG, extended("select *\n  from t where id = $1", "1"))
    assert m.match(key).checkpoint is a
    assert m.match(key).checkpoint is b
    assert m.match(key).kind is MatchKind.MISS
    assert m.unused() == []


def test_exact_match_is_preferred_over_an_earlier_same_statement() -> None:
    a = checkpoint(1, PG, extended("update t set n = $1 where id = $2", "3", "7"))
    b = checkpoint(2, PG, extended("update t set n = $1 where id = $2", "5", "7"))
    m = Matcher([a, b])
    got = m.match(key_of(PG, extended("update t set n = $1 where id = $2", "5", "7")))
    assert (got.kind, got.checkpoint) == (MatchKind.EXACT, b)
    assert m.unused() == [a]


def test_different_parameter_is_a_field_level_divergence() -> None:
    a = checkpoint(4, PG, extended("update t set n = $1 where id = $2", "3", "7"))
    got = Matcher([a]).match(key_of(PG, extended("update t set n = $1 where id = $2", "5", "7")))
    assert got.kind is MatchKind.DIVERGED and got.checkpoint is a
    assert [d.to_json() for d in got.divergences] == [
        {"seq": 4, "field": "param $1", "expected": "3", "actual": "5"}]


def test_simple_queries_compare_by_fingerprint_and_literals_diverge() -> None:
    a = checkpoint(1, PG, simple("SELECT * FROM t WHERE a = 1 AND b = 'x'"))
    got = Matcher([a]).match(key_of(PG, simple("select *  from t where a = 2 and b = 'x'")))
    assert got.kind is MatchKind.DIVERGED
    assert [(d.field, d.expected, d.actual) for d in got.divergences] == [("literal #1", "1", "2")]


def test_other_sql_or_protocol_misses_and_session_exchanges_are_not_checkpoints() -> None:
    a = checkpoint(1, PG, extended("select 1"))
    hello = checkpoint(2, REDIS, {"command": "HELLO", "args": ["3"]}, Lifetime.SESSION)
    m = Matcher([a, hello])
    assert m.match(key_of(PG, extended("select 2"))).kind is MatchKind.MISS
    assert m.match(key_of(REDIS, {"command": "hello", "args": ["3"]})).kind is MatchKind.MISS
    assert m.unused() == [a]


def test_redis_commands_match_case_insensitively_and_args_diverge() -> None:
    a = checkpoint(1, REDIS, {"command": "INCR", "args": ["hits:a"]})
    m = Matcher([a])
    got = m.match(key_of(REDIS, {"command": "incr", "args": ["hits:b"]}))
    assert got.kind is MatchKind.DIVERGED
    assert got.divergences[0].to_json() == {"seq": 1, "field": "arg 1", "expected": "hits:a",
                                            "actual": "hits:b"}


def test_param_count_difference_is_reported() -> None:
    a = checkpoint(1, REDIS, {"command": "DEL", "args": ["a", "b"]})
    got = Matcher([a]).match(key_of(REDIS, {"command": "DEL", "args": ["a"]}))
    assert got.divergences[0].field == "param count"
    assert (got.divergences[0].expected, got.divergences[0].actual) == (2, 1)
