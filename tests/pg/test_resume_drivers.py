"""Resume with real drivers and a real server: the durable prefix is answered from the
recording, the rest runs live (issue 8).

Each test records an "original" request through the record proxy, computes the durable prefix
and builds the book as `flux_runtime.resume` does, then runs the "fixed" code through
`PgResumeProxy` against the same server and checks the database itself.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
import pytest

from flux_proxy.model import Exchange, Lifetime
from flux_proxy.pg.proxy import PgRecordProxy
from flux_proxy.pg.resume import PgResumeProxy
from flux_proxy.replay import ReplayBook
from flux_proxy.resume import durable_prefix
from tests.services import PgCluster

ORIGINAL, RESUMED = "original-request", "resumed-request"

Tag = Callable[[str | None], None]
App = Callable[[str, Tag], Awaitable[Any]]


class Thrown(Exception):
    """What the original handler threw after its IO."""


def url_of(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/flux_test?sslmode=disable"


async def record(pg: PgCluster, app: App) -> list[Exchange]:
    """The original run: `app` tags its request ORIGINAL and may throw `Thrown`."""
    exchanges: list[Exchange] = []
    proxy = await PgRecordProxy(pg.url(sslmode="disable"), exchanges.append).start()
    try:
        await app(url_of(proxy.port), lambda r: proxy.set_current_request(r and ORIGINAL))
    except Thrown:
        pass
    finally:
        await proxy.close()
    return exchanges


def resume_book(exchanges: list[Exchange]) -> tuple[ReplayBook, list[Exchange]]:
    """As flux_runtime.resume builds it: the durable prefix, the request's non-request
    exchanges (statements), the boot's session exchanges (greetings). The execution holds the
    request's exchanges; the boot record, the untagged ones."""
    own = [x for x in exchanges if x.request_id == ORIGINAL]
    prefix = durable_prefix(own)
    kept = [x for x in own if x.lifetime is not Lifetime.REQUEST]
    session = [x for x in exchanges if x.request_id is None and x.lifetime is Lifetime.SESSION]
    return ReplayBook([*prefix, *kept, *session]), prefix


@dataclass
class Resumed:
    result: Any
    book: ReplayBook
    prefix: list[Exchange]
    live: list[Exchange] = field(default_factory=list)
    divergences: list[Any] = field(default_factory=list)

    def sources(self) -> list[tuple[str, str]]:
        """(sql, recorded|live) of the resumed request's exchanges, in start order."""
        recorded = [(r.exchange.started_at, r.exchange.request.get("sql", ""), "recorded")
                    for r in self.book.replayed if r.during_request]
        live = [(x.started_at, x.request.get("sql", ""), "live") for x in self.live_requests()]
        return [(sql, source) for _, sql, source in sorted(recorded + live)]

    def live_requests(self) -> list[Exchange]:
        return [x for x in self.live
                if x.request_id == RESUMED and x.lifetime is Lifetime.REQUEST]


async def resume(pg: PgCluster, exchanges: list[Exchange], app: App) -> Resumed:
    book, prefix = resume_book(exchanges)
    live: list[Exchange] = []
    proxy = PgResumeProxy(book, pg.url(sslmode="disable"), live.append)
    await proxy.start()

    def tag(request: str | None) -> None:
        book.request_id = request and RESUMED
        proxy.set_current_request(request and RESUMED)

    try:
        result = await app(url_of(proxy.port), tag)
    finally:
        await proxy.close()
    return Resumed(result, book, prefix, live, proxy.divergences)


async def direct(pg: PgCluster) -> asyncpg.Connection:
    return await asyncpg.connect(pg.url(), ssl=False)


def table(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------ tests


async def test_autocommit_insert_is_answered_and_the_rest_runs_live(pg: PgCluster) -> None:
    orders = table("rz_orders")

    def handler(fixed: bool) -> App:
        async def app(url: str, tag: Tag) -> Any:
            conn = await asyncpg.connect(url, ssl=False)
            try:
                await conn.execute(f"CREATE TABLE IF NOT EXISTS {orders} (id int, item text)")
                tag("request")
                await conn.execute(f"INSERT INTO {orders} VALUES ($1, $2)", 1, "book")
                if not fixed:
                    raise Thrown("render failed after the insert")
                # The same cached statement again, after the switch: re-prepared upstream.
                await conn.execute(f"INSERT INTO {orders} VALUES ($1, $2)", 2, "pen")
                count = await conn.fetchval(f"SELECT count(*) FROM {orders}")
                tag(None)
                return count
            finally:
                await conn.close()
        return app

    original = await record(pg, handler(fixed=False))
    resumed = await resume(pg, original, handler(fixed=True))

    check = await direct(pg)
    try:
        rows = await check.fetch(f"SELECT id, item FROM {orders} ORDER BY id")
    finally:
        await check.close()
    assert [tuple(r) for r in rows] == [(1, "book"), (2, "pen")]  # the first insert once
    assert resumed.result == 2
    insert = f"INSERT INTO {orders} VALUES ($1, $2)"
    assert resumed.sources() == [(insert, "recorded"), (insert, "live"),
                                 (f"SELECT count(*) FROM {orders}", "live")]
    assert not any(x.failed for x in resumed.live_requests())


async def test_rolled_back_transaction_is_re_executed_live(pg: PgCluster) -> None:
    accounts = table("rz_accounts")
    setup = await direct(pg)
    await setup.execute(f"CREATE TABLE {accounts} (id int PRIMARY KEY, owner text)")
    await setup.close()

    def handler(fixed: bool) -> App:
        async def app(url: str, tag: Tag) -> Any:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                tag("request")
                await conn.execute(f"INSERT INTO {accounts} VALUES (%s, %s)", (1, "log"))
                try:
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {accounts} VALUES (%s, %s)",
                                           (10, "ada"))
                        # The bug: the same key twice; the fix uses the next one.
                        await conn.execute(f"INSERT INTO {accounts} VALUES (%s, %s)",
                                           (11 if fixed else 10, "alan"))
                except psycopg.errors.UniqueViolation as exc:
                    raise Thrown from exc
                cur = await conn.execute(f"SELECT id FROM {accounts} ORDER BY id")
                tag(None)
                return [r[0] for r in await cur.fetchall()]
        return app

    original = await record(pg, handler(fixed=False))
    after_original = await direct(pg)
    assert await after_original.fetchval(f"SELECT count(*) FROM {accounts}") == 1
    await after_original.close()

    resumed = await resume(pg, original, handler(fixed=True))

    assert resumed.result == [1, 10, 11]  # the log row once, the whole transaction once
    assert [x.request.get("sql") for x in resumed.prefix] == [
        f"INSERT INTO {accounts} VALUES ($1, $2)"]
    live_sql = [x.request.get("sql") for x in resumed.live_requests()]
    assert live_sql[0] == "BEGIN" and "COMMIT" in live_sql
    assert [s for _, s in resumed.sources()] == ["recorded"] + ["live"] * len(live_sql)


async def test_a_deleted_row_fails_live_and_the_error_surfaces(pg: PgCluster) -> None:
    products, lines = table("rz_products"), table("rz_lines")
    setup = await direct(pg)
    await setup.execute(f"CREATE TABLE {products} (id int PRIMARY KEY, name text); "
                        f"INSERT INTO {products} VALUES (7, 'lamp'); "
                        f"CREATE TABLE {lines} (id serial, product int REFERENCES {products})")

    def handler(fixed: bool) -> App:
        async def app(url: str, tag: Tag) -> Any:
            conn = await asyncpg.connect(url, ssl=False)
            try:
                tag("request")
                name = await conn.fetchval(f"SELECT name FROM {products} WHERE id = $1", 7)
                if not fixed:
                    raise Thrown("forgot to add the line")
                try:
                    await conn.execute(f"INSERT INTO {lines} (product) VALUES ($1)", 7)
                except asyncpg.ForeignKeyViolationError as exc:
                    return name, exc.sqlstate
                finally:
                    tag(None)
                return name, None
            finally:
                await conn.close()
        return app

    original = await record(pg, handler(fixed=False))
    await setup.execute(f"DELETE FROM {products} WHERE id = 7")  # the world moved on
    try:
        resumed = await resume(pg, original, handler(fixed=True))
        assert await setup.fetchval(f"SELECT count(*) FROM {lines}") == 0
    finally:
        await setup.close()

    assert resumed.result == ("lamp", "23503")  # the recorded read, then the live error
    [insert] = resumed.live_requests()
    assert insert.failed and insert.response["error"]["sqlstate"] == "23503"
    assert resumed.sources()[0] == (f"SELECT name FROM {products} WHERE id = $1", "recorded")


async def test_statements_prepared_against_the_recording_work_live(pg: PgCluster) -> None:
    notes = table("rz_notes")
    setup = await direct(pg)
    await setup.execute(f"CREATE TABLE {notes} (id int, body text); "
                        f"INSERT INTO {notes} VALUES (1, 'one'), (2, 'two')")
    await setup.close()

    def handler(fixed: bool) -> App:
        async def app(url: str, tag: Tag) -> Any:
            conn = await asyncpg.connect(url, ssl=False)
            try:
                tag("request")
                by_id = await conn.prepare(f"SELECT body FROM {notes} WHERE id = $1")
                got = [await by_id.fetchval(1)]
                if not fixed:
                    raise Thrown("forgot the second note")
                await conn.execute(f"INSERT INTO {notes} VALUES ($1, $2)", 3, "three")
                got += [await by_id.fetchval(2), await by_id.fetchval(3)]
                tag(None)
                return got
            finally:
                await conn.close()
        return app

    async def psycopg_handler(url: str, tag: Tag) -> Any:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            tag("request")
            query = f"SELECT body FROM {notes} WHERE id = %s"
            got = [(await (await conn.execute(query, (1,), prepare=True)).fetchone())]
            if psycopg_handler.fixed:  # type: ignore[attr-defined]
                await conn.execute(f"UPDATE {notes} SET body = %s WHERE id = %s", ("TWO", 2))
                got.append(await (await conn.execute(query, (2,), prepare=True)).fetchone())
            tag(None)
            if not psycopg_handler.fixed:  # type: ignore[attr-defined]
                raise Thrown("forgot the update")
            return got

    resumed = await resume(pg, await record(pg, handler(fixed=False)), handler(fixed=True))
    assert resumed.result == ["one", "two", "three"]
    assert [s for _, s in resumed.sources()] == ["recorded", "live", "live", "live"]
    assert resumed.divergences == []

    psycopg_handler.fixed = False  # type: ignore[attr-defined]
    original = await record(pg, psycopg_handler)
    psycopg_handler.fixed = True  # type: ignore[attr-defined]
    resumed = await resume(pg, original, psycopg_handler)
    assert resumed.result == [("one",), ("TWO",)]
    assert [s for _, s in resumed.sources()] == ["recorded", "live", "live"]


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_start_up_io_runs_live_and_a_changed_parameter_goes_live(
        pg: PgCluster, driver: str) -> None:
    """Boot IO is never answered from the recording; a request whose parameter changed is a
    divergence and runs live (nothing recorded is replayed in its place)."""
    counters = table("rz_counters")

    def app_for(n: int) -> App:
        async def app(url: str, tag: Tag) -> Any:
            if driver == "asyncpg":
                conn = await asyncpg.connect(url, ssl=False)
                try:
                    await conn.execute(f"CREATE TABLE IF NOT EXISTS {counters} (n int)")
                    await conn.execute(f"INSERT INTO {counters} VALUES (0)")  # at every boot
                    tag("request")
                    await conn.execute(f"INSERT INTO {counters} VALUES ($1)", n)
                    tag(None)
                finally:
                    await conn.close()
                return None
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as pconn:
                await pconn.execute(f"CREATE TABLE IF NOT EXISTS {counters} (n int)")
                await pconn.execute(f"INSERT INTO {counters} VALUES (0)")
                tag("request")
                await pconn.execute(f"INSERT INTO {counters} VALUES (%s)", (n,))
                tag(None)
            return None
        return app

    original = await record(pg, app_for(1))
    resumed = await resume(pg, original, app_for(2))
    check = await direct(pg)
    try:
        values = [r[0] for r in await check.fetch(f"SELECT n FROM {counters} ORDER BY n")]
    finally:
        await check.close()
    assert values == [0, 0, 1, 2]  # both boots ran, the original insert and the changed one
    assert [s for _, s in resumed.sources()] == ["live"]
    assert [(d.field, d.expected, d.actual) for d in resumed.divergences] == [
        ("param $1", 1, 2)]


async def test_a_pipeline_goes_live_in_the_middle_of_its_batch(pg: PgCluster) -> None:
    """One Sync, two Executes: the first is answered from the recording, the second (new in
    the fix) makes the connection go live, its Parse/Bind sent again for the server to answer."""
    events = table("rz_events")
    setup = await direct(pg)
    await setup.execute(f"CREATE TABLE {events} (id int, kind text)")
    await setup.close()

    def handler(fixed: bool) -> App:
        async def app(url: str, tag: Tag) -> Any:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                tag("request")
                async with conn.pipeline(), conn.cursor() as cur:
                    await cur.execute(f"INSERT INTO {events} VALUES (%s, %s)", (1, "paid"))
                    if fixed:
                        await cur.execute(f"INSERT INTO {events} VALUES (%s, %s)", (2, "sent"))
                    await cur.execute(f"SELECT id, kind FROM {events} ORDER BY id")
                    got = await cur.fetchall()
                tag(None)
                if not fixed:
                    raise Thrown("could not send")
                return got
        return app

    resumed = await resume(pg, await record(pg, handler(fixed=False)), handler(fixed=True))
    assert resumed.result == [(1, "paid"), (2, "sent")]
    assert [s for _, s in resumed.sources()] == ["recorded", "live", "live"]


async def test_leaving_the_recording_inside_a_committed_transaction_is_refused(
        pg: PgCluster) -> None:
    """The original committed the transaction (so it is in the prefix); the fix adds to it.
    Resume cannot continue a transaction the server never saw: the client gets a clear FATAL
    error, and nothing of the transaction runs twice."""
    audit = table("rz_audit")
    setup = await direct(pg)
    await setup.execute(f"CREATE TABLE {audit} (id int)")

    def handler(fixed: bool) -> App:
        async def app(url: str, tag: Tag) -> Any:
            conn = await asyncpg.connect(url, ssl=False)
            try:
                tag("request")
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {audit} VALUES ($1)", 1)
                    if fixed:
                        await conn.execute(f"INSERT INTO {audit} VALUES ($1)", 2)
                if not fixed:
                    raise Thrown("after the commit")
                return "done"
            except asyncpg.InterfaceError as exc:  # the connection was closed under it
                return " / ".join(str(e) for e in (exc, exc.__context__) if e)
            finally:
                tag(None)
                await conn.close()
        return app

    original = await record(pg, handler(fixed=False))
    try:
        resumed = await resume(pg, original, handler(fixed=True))
        assert await setup.fetchval(f"SELECT array_agg(id) FROM {audit}") == [1]
    finally:
        await setup.close()
    assert "resume cannot continue that transaction" in resumed.result
    assert resumed.live_requests() == []


async def test_a_statement_prepared_live_at_start_up_is_answered_in_the_request(
        pg: PgCluster) -> None:
    """asyncpg prepares its statements once per connection: the one the boot prepared live is
    only bound and executed in the request, and the recording still answers it."""
    stock = table("rz_stock")
    setup = await direct(pg)
    await setup.execute(f"CREATE TABLE {stock} (id int, n int); "
                        f"INSERT INTO {stock} VALUES (1, 5), (2, 7)")
    await setup.close()
    take = f"UPDATE {stock} SET n = n - 1 WHERE id = $1 RETURNING n"

    def handler(fixed: bool) -> App:
        async def app(url: str, tag: Tag) -> Any:
            conn = await asyncpg.connect(url, ssl=False)
            try:
                await conn.fetchval(take, 1)  # at start-up: warms the statement cache
                tag("request")
                left = [await conn.fetchval(take, 2)]
                if not fixed:
                    raise Thrown("after taking one")
                left.append(await conn.fetchval(take, 1))
                tag(None)
                return left
            finally:
                await conn.close()
        return app

    resumed = await resume(pg, await record(pg, handler(fixed=False)), handler(fixed=True))
    # Boots: 5 -> 4 -> 3; the request's recorded take of id 2 is answered (6, not 5).
    assert resumed.result == [6, 2]
    assert [s for _, s in resumed.sources()] == ["recorded", "live"]


async def test_the_real_server_refusing_the_credentials_reaches_the_client(
        pg: PgCluster) -> None:
    """The client was greeted from the recording; when its first live exchange needs the real
    server and the server refuses the credentials, that error is what the client gets."""
    async def app(url: str, tag: Tag) -> Any:
        conn = await asyncpg.connect(url, ssl=False)
        try:
            tag("request")
            return await conn.fetchval("SELECT 41 + 1")
        finally:
            tag(None)
            await conn.close()

    original = await record(pg, app)
    book, _ = resume_book(original)
    proxy = PgResumeProxy(book, pg.url("scramuser", "wrong", sslmode="disable"), [].append)
    await proxy.start()
    proxy.set_current_request(RESUMED)
    try:
        conn = await asyncpg.connect(url_of(proxy.port), ssl=False)
        with pytest.raises(asyncpg.ConnectionDoesNotExistError,
                           match='password authentication failed for user "scramuser"'):
            await conn.fetchval("SELECT 42")  # not recorded: it needs the server
        assert conn.is_closed()
    finally:
        await proxy.close()


async def test_a_cancel_request_reaches_the_live_query(pg: PgCluster) -> None:
    """asyncpg cancels a statement that times out with a CancelRequest on a new connection,
    quoting the key the greeting gave it. For a resumed connection that key is the resume
    proxy's own; it must reach the live server's backend, through the recording proxy."""
    def handler(fixed: bool) -> App:
        async def app(url: str, tag: Tag) -> Any:
            conn = await asyncpg.connect(url, ssl=False)
            try:
                tag("request")
                await conn.fetchval("SELECT 1")
                if not fixed:
                    raise Thrown("failed after the first query")
                started = asyncio.get_running_loop().time()
                with pytest.raises(TimeoutError):  # asyncpg cancels on the server, then raises
                    await conn.execute("SELECT pg_sleep(30)", timeout=0.5)
                cancelled_after = asyncio.get_running_loop().time() - started
                # Were it not cancelled, the connection would be busy for 30 s.
                after = await asyncio.wait_for(conn.fetchval("SELECT 2"), 5)
                tag(None)
                return cancelled_after, after
            finally:
                await conn.close()
        return app

    original = await record(pg, handler(fixed=False))
    resumed = await resume(pg, original, handler(fixed=True))
    cancelled_after, after = resumed.result
    assert after == 2 and cancelled_after < 5
    sleeps = [x for x in resumed.live_requests() if "pg_sleep" in x.request.get("sql", "")]
    assert len(sleeps) == 1 and sleeps[0].failed
    assert sleeps[0].response["error"]["sqlstate"] == "57014"  # query_canceled
