"""One suite, run against both stores (the `store` fixture is parametrized)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from flux_server.filters import ExecutionFilter
from flux_server.records import ExecutionSummary, Mode, Outcome
from flux_server.store.base import AmbiguousPrefix, InvalidCursor, InvalidId, Store
from tests.server.factory import (
    make_boot,
    make_execution,
    make_failed_execution,
    make_replay,
    with_prefix,
)

DAY = 86400.0


async def test_an_execution_comes_back_exactly_as_recorded(store: Store) -> None:
    boot = make_boot()
    execution = make_execution(boot_id=boot.id, request_body=b"\x00\xffbinary",
                               request_truncated=True, response_truncated=True)
    counts = await store.record_batch([execution], [boot])
    assert (counts.executions, counts.boots) == (1, 1)
    assert await store.get(execution.id) == execution
    assert await store.get_boot(boot.id) == boot
    stored = await store.get(execution.id)
    assert stored is not None
    assert stored.to_json() == execution.to_json()
    assert stored.exchanges[0].client_frames == execution.exchanges[0].client_frames


async def test_replay_runs_keep_parent_outcome_and_sources(store: Store) -> None:
    original = make_failed_execution()
    replay = make_replay(original)
    await store.record_batch([original, replay], [])
    stored = await store.get(replay.id)
    assert stored == replay
    assert stored is not None and stored.parent_id == original.id
    assert {x.source for x in stored.exchanges} == {replay.exchanges[0].source}
    assert stored.replay_outcome == "diverged"


async def test_a_retried_batch_is_never_duplicated(store: Store) -> None:
    boot = make_boot()
    first, second = make_execution(), make_execution()
    assert (await store.record_batch([first], [boot])).executions == 1
    counts = await store.record_batch([first, second, second], [boot])
    assert (counts.executions, counts.boots) == (1, 0)
    page = await store.list(ExecutionFilter())
    assert sorted(s.id for s in page.executions) == sorted([first.id, second.id])
    stored = await store.get(first.id)
    assert stored is not None and len(stored.exchanges) == 5 and len(stored.console) == 2
    boot_again = await store.get_boot(boot.id)
    assert boot_again is not None and len(boot_again.exchanges) == 1


async def test_a_boot_record_grows_by_the_positions_it_does_not_have(store: Store) -> None:
    """IO between requests: the runtime re-sends the boot id with only its new exchanges."""
    import dataclasses

    from tests.server.factory import postgres_exchange

    boot = make_boot()
    await store.record_batch([], [boot])
    later = [postgres_exchange(i, boot.started_at + i, f"SELECT {i}", params=[])
             for i in (1, 2)]
    delta = dataclasses.replace(boot, exchanges=later, first_position=1)
    assert (await store.record_batch([], [delta, delta])).boots == 0  # not a new boot
    await store.record_batch([], [boot])  # a retry of the first part changes nothing
    grown = await store.get_boot(boot.id)
    assert grown is not None
    assert [x.request["sql"] for x in grown.exchanges] == [
        "CREATE TABLE IF NOT EXISTS users (id int)", "SELECT 1", "SELECT 2"]


async def _ids(store: Store, **filters: object) -> set[str]:
    page = await store.list(ExecutionFilter(**filters), limit=1000)  # type: ignore[arg-type]
    return {s.id for s in page.executions}


async def test_every_filter(store: Store) -> None:
    now = time.time()
    ok_get = make_execution(started_at=now - 30, path="/users/42")
    not_found = make_execution(started_at=now - 20, status=404, path="/users/missing")
    server_error = make_execution(started_at=now - 10, status=503, method="POST",
                                  path="/orders")
    thrown = make_failed_execution("Cannot read properties of undefined (reading 'total')",
                                   started_at=now - 5, status=500)
    logged = make_failed_execution("boom", started_at=now - 3600, status=200, method="put",
                                   path="/orders/7")
    replay = make_replay(ok_get, started_at=now - 1)
    await store.record_batch([ok_get, not_found, server_error, thrown, logged, replay], [])

    assert await _ids(store, outcome=Outcome.OK) == {ok_get.id, not_found.id, replay.id}
    assert await _ids(store, outcome=Outcome.ERROR) == {server_error.id, thrown.id, logged.id}
    assert await _ids(store, status=404) == {not_found.id}
    assert await _ids(store, status_class="5xx") == {server_error.id, thrown.id}
    assert await _ids(store, status_class="2xx") == {ok_get.id, logged.id, replay.id}
    assert await _ids(store, path="/orders") == {server_error.id, thrown.id, logged.id}
    assert await _ids(store, path="missing") == {not_found.id}
    assert await _ids(store, path="%") == set()  # a substring, not a LIKE pattern
    assert await _ids(store, method="post") == {server_error.id, thrown.id}
    assert await _ids(store, method="PUT") == {logged.id}
    assert await _ids(store, since=now - 60) == {ok_get.id, not_found.id, server_error.id,
                                                 thrown.id, replay.id}
    assert await _ids(store, until=now - 60) == {logged.id}
    assert await _ids(store, since=now - 25, until=now - 5) == {not_found.id, server_error.id}
    assert await _ids(store, mode=Mode.REPLAY) == {replay.id}
    assert await _ids(store, mode=Mode.RECORD, status=404) == {not_found.id}
    assert await _ids(store, search="READING 'TOTAL'") == {thrown.id}
    assert await _ids(store, search="orders.ts:12") == {thrown.id, logged.id}  # the stack
    assert await _ids(store, search="PostgresError", path="/orders/") == {logged.id}
    assert await _ids(store, search="no such text") == set()


async def test_summaries_carry_what_logs_shows(store: Store) -> None:
    failed = make_failed_execution("it broke", status=500)
    await store.record_batch([failed], [])
    [summary] = (await store.list(ExecutionFilter())).executions
    assert summary == ExecutionSummary.of(failed)
    assert summary.summary_json() == {
        "id": failed.id, "started_at": summary.summary_json()["started_at"], "method": "POST",
        "path": "/orders", "status": 500, "outcome": "error",
        "duration_ms": 12.3, "error_message": "it broke"}


async def test_paging_walks_everything_newest_first_once(store: Store) -> None:
    now = time.time()
    tied = now - 50  # equal start times are ordered by id, so no page loses or repeats one
    executions = [make_execution(started_at=now - i) for i in range(7)]
    executions += [make_execution(started_at=tied) for _ in range(3)]
    await store.record_batch(executions, [])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.list(ExecutionFilter(), limit=3, cursor=cursor)
        seen += [s.id for s in page.executions]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    expected = sorted(executions, key=lambda e: (e.started_at, e.id), reverse=True)
    assert seen == [e.id for e in expected]
    assert pages == 4
    filtered = await store.list(ExecutionFilter(since=now - 2.5), limit=2)
    assert [s.id for s in filtered.executions] == [executions[0].id, executions[1].id]
    rest = await store.list(ExecutionFilter(since=now - 2.5), limit=2,
                            cursor=filtered.next_cursor)
    assert [s.id for s in rest.executions] == [executions[2].id]
    assert rest.next_cursor is None
    with pytest.raises(InvalidCursor):
        await store.list(ExecutionFilter(), cursor="not-a-cursor")


async def test_prefix_lookup_ambiguity_and_unknown_ids(store: Store) -> None:
    first = make_execution(id=with_prefix("abcdef12"))
    second = make_execution(id=with_prefix("abcdef12"))
    lone = make_execution(id=with_prefix("12345678"))
    await store.record_batch([first, second, lone], [])

    assert await store.get("12345678") == lone
    assert await store.get(lone.id.upper()) == lone
    assert await store.get(lone.id.replace("-", "")) == lone
    assert await store.get(first.id) == first
    with pytest.raises(AmbiguousPrefix) as ambiguous:
        await store.get("abcdef12")
    assert sorted(ambiguous.value.candidates) == sorted([first.id, second.id])
    assert first.id in str(ambiguous.value) and second.id in str(ambiguous.value)
    unique_longer = first.id.replace("-", "")[:20]
    assert await store.get(unique_longer) == first
    assert await store.get("00000000") is None
    assert await store.get(str(uuid.uuid4())) is None
    assert await store.get_boot(str(uuid.uuid4())) is None
    for bad in ("abc", "abcdefgh", "not an id", lone.id + "0"):
        with pytest.raises(InvalidId):
            await store.get(bad)


async def test_tail_sees_new_executions_only(store: Store) -> None:
    earlier = store.subscribe()
    await store.ready_for_tail()
    await store.record_batch([make_execution()], [])
    async with asyncio.timeout(5):
        await anext(aiter(earlier))  # delivered (NOTIFY is asynchronous) before we subscribe
    subscription = store.subscribe()  # so it must see no backlog
    fresh = [make_execution(), make_failed_execution("x" * 200_000)]  # huge error
    await store.record_batch(fresh, [])
    await store.record_batch(fresh, [])  # a retry announces nothing
    received: list[ExecutionSummary] = []
    async with asyncio.timeout(5):
        async for summary in subscription:
            received.append(summary)
            if len(received) == 2:
                break
    assert {s.id for s in received} == {e.id for e in fresh}
    by_id = {s.id: s for s in received}
    assert by_id[fresh[1].id] == ExecutionSummary.of(fresh[1])
    assert await store.search_matches([e.id for e in fresh], "XXX") == {fresh[1].id}


async def test_many_executions_in_one_batch_reach_the_tail(store: Store) -> None:
    subscription = store.subscribe()
    await store.ready_for_tail()
    batch = [make_execution(path=f"/items/{i}" + "/long" * 100) for i in range(300)]
    await store.record_batch(batch, [])
    received: set[str] = set()
    async with asyncio.timeout(5):
        async for summary in subscription:
            received.add(summary.id)
            if len(received) == len(batch):
                break
    assert received == {e.id for e in batch}


async def test_retention_deletes_old_executions_and_their_boots(store: Store) -> None:
    now = time.time()
    old_boot = make_boot(started_at=now - 10 * DAY)
    long_lived_boot = make_boot(started_at=now - 10 * DAY)  # its worker still serves
    new_boot = make_boot(started_at=now - 60)
    old = [make_execution(started_at=now - 10 * DAY, boot_id=old_boot.id),
           make_execution(started_at=now - 9 * DAY, boot_id=old_boot.id)]
    kept = [make_execution(started_at=now - 60, boot_id=long_lived_boot.id),
            make_execution(started_at=now - 30, boot_id=new_boot.id)]
    await store.record_batch(old + kept, [old_boot, long_lived_boot, new_boot])

    removed = await store.apply_retention(now - 7 * DAY)

    assert removed == 2
    assert await _ids(store) == {e.id for e in kept}
    for execution in old:
        assert await store.get(execution.id) is None
    assert await store.get_boot(old_boot.id) is None
    assert await store.get_boot(long_lived_boot.id) is not None
    assert await store.get_boot(new_boot.id) is not None
    assert await store.get(kept[0].id) == kept[0]
    # the store keeps taking old and new records after dropping days
    late = make_execution(started_at=now - 10 * DAY)
    assert (await store.record_batch([late, make_execution()], [])).executions == 2
    assert await store.get(late.id) == late


async def test_the_same_id_is_stored_once_whatever_its_start_time(store: Store) -> None:
    execution = make_execution()
    await store.record_batch([execution], [])
    moved = make_execution(id=execution.id, started_at=execution.started_at - 3 * DAY)
    assert (await store.record_batch([moved], [])).executions == 0
    assert await store.get(execution.id) == execution


async def test_nul_characters_in_text_do_not_block_ingest(store: Store) -> None:
    execution = make_failed_execution("bad\x00byte", path="/a\x00b")
    execution.console[0].text = "nul\x00here"
    execution.exchanges[0].request = {"sql": "SELECT $1", "params": ["x\x00y"]}
    assert (await store.record_batch([execution], [])).executions == 1
    stored = await store.get(execution.id)
    assert stored is not None
    assert stored.console[0].text in ("nul\x00here", "nul\ufffdhere")  # Postgres text: U+FFFD
    assert stored.error is not None and stored.error.message in ("bad\x00byte", "bad\ufffdbyte")
    assert stored.exchanges[0].request == execution.exchanges[0].request  # JSON keeps it
    assert stored.exchanges[0].client_frames == execution.exchanges[0].client_frames
