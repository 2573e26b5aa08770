"""The durable prefix: up to the first failed exchange or uncommitted transaction."""

from flux_proxy.model import Exchange, Lifetime, Protocol
from flux_proxy.resume import durable_prefix

PG, REDIS = Protocol.POSTGRES, Protocol.REDIS


def pg(t: float, sql: str, tag: str, status: str = "I", error: bool = False,
       conn: int = 1) -> Exchange:
    return Exchange(PG, conn, int(t * 10), Lifetime.REQUEST, "r", t, 0.0,
                    request={"sql": sql, "params": []},
                    response={"command_tag": tag, "tx_status": status,
                              "error": {"sqlstate": "23505", "message": "dup"} if error else None})


def redis(t: float, command: str, value: object = "OK", conn: int = 9) -> Exchange:
    return Exchange(REDIS, conn, int(t * 10), Lifetime.REQUEST, "r", t, 0.0,
                    request={"command": command, "args": []},
                    response={"value": value, "error": None})


def test_autocommit_writes_before_a_failure_are_durable() -> None:
    a = pg(1, "insert", "INSERT 0 1")
    b = redis(2, "INCR", 1)
    c = pg(3, "insert dup", "", error=True)
    d = pg(4, "select", "SELECT 1")
    assert durable_prefix([d, c, b, a]) == [a, b]


def test_committed_transaction_is_durable_and_rolled_back_one_is_not() -> None:
    committed = [pg(1, "BEGIN", "BEGIN", "T"), pg(2, "update", "UPDATE 1", "T"),
                 pg(3, "COMMIT", "COMMIT")]
    rolled = [pg(4, "BEGIN", "BEGIN", "T"), pg(5, "update", "UPDATE 1", "T"),
              pg(6, "insert", "", "E", error=True), pg(7, "ROLLBACK", "ROLLBACK")]
    assert durable_prefix(committed + rolled) == committed


def test_transaction_left_open_ends_the_prefix() -> None:
    a = pg(1, "insert", "INSERT 0 1")
    begin = pg(2, "BEGIN", "BEGIN", "T")
    update = pg(3, "update", "UPDATE 1", "T")
    assert durable_prefix([a, begin, update]) == [a]


def test_other_connections_interleave_inside_a_committed_transaction() -> None:
    begin = pg(1, "BEGIN", "BEGIN", "T", conn=1)
    other = pg(2, "select", "SELECT 1", conn=2)
    commit = pg(3, "COMMIT", "COMMIT", conn=1)
    assert durable_prefix([begin, other, commit]) == [begin, other, commit]


def test_redis_multi_without_exec_is_not_durable() -> None:
    incr = redis(1, "INCR", 1)
    multi = [redis(2, "MULTI"), redis(3, "SET", "QUEUED")]
    assert durable_prefix([incr, *multi]) == [incr]
    done = [redis(4, "MULTI"), redis(5, "SET", "QUEUED"), redis(6, "EXEC", ["OK"])]
    assert durable_prefix(done) == done
    aborted = [redis(7, "MULTI"), redis(8, "SET", "QUEUED"), redis(9, "EXEC", None)]
    assert durable_prefix(aborted) == []
