"""The ingest fast path (protobuf straight to rows) writes what the record path writes."""

from __future__ import annotations

import pytest

from flux_server.client import FluxClient, InvalidRequest
from flux_server.convert import batch_to_proto, execution_to_proto
from flux_server.gen import flux_pb2 as pb
from flux_server.ingest import MalformedRecord, prepare_batch_proto
from flux_server.server import FluxServer
from flux_server.store.rows import prepare_boot, prepare_execution
from tests.server.factory import make_boot, make_execution, make_failed_execution, make_replay


def test_rows_from_protobuf_equal_rows_from_records() -> None:
    failed = make_failed_execution(method="delete",
                                   upstreams={"REDIS_URL": "redis://h/0", "A_URL": "redis://a"})
    executions = [make_execution(), failed, make_replay(failed)]
    boots = [make_boot()]
    request = batch_to_proto(executions, boots)
    prepared, prepared_boots = prepare_batch_proto(request)
    assert prepared == [prepare_execution(e) for e in executions]
    assert prepared_boots == [prepare_boot(b) for b in boots]


def test_malformed_records_are_named() -> None:
    bad_id = execution_to_proto(make_execution())
    bad_id.id = "42"
    bad_protocol = execution_to_proto(make_execution())
    bad_protocol.exchanges[1].protocol = "mysql"
    bad_mode = execution_to_proto(make_execution())
    bad_mode.mode = "rewind"
    for message, text in ((bad_id, "not a UUID"), (bad_protocol, "mysql"), (bad_mode, "rewind")):
        with pytest.raises(MalformedRecord, match=text):
            prepare_batch_proto(pb.RecordBatchRequest(executions=[message]))


async def test_both_stores_refuse_invalid_json_and_store_nothing(client: FluxClient,
                                                                server: FluxServer) -> None:
    good = make_execution()
    broken = execution_to_proto(make_execution())
    broken.exchanges[2].response_json = '{"rows": [1, 2'
    request = pb.RecordBatchRequest(executions=[execution_to_proto(good), broken])
    with pytest.raises(InvalidRequest, match=r"(?i)json"):
        try:
            await client._stub.RecordBatch(request)
        except Exception as exc:
            raise client.translate(exc) from None  # type: ignore[arg-type]
    assert (await client.list()).executions == []  # the batch is all or nothing


async def test_a_local_batch_is_stored_as_the_grpc_one_is(client: FluxClient,
                                                          server: FluxServer) -> None:
    """`flux serve`'s embedded server takes its batches without gRPC; readers see no
    difference, and a batch sent twice (a retry after a lost ack) is stored once."""
    failed = make_failed_execution(upstreams={"REDIS_URL": "redis://h/0"})
    local = [make_execution(), failed]
    remote = [make_execution(), make_replay(failed)]
    boot = make_boot()
    rows = [prepare_execution(e) for e in local]
    counts = await server.service.record_local(rows, [boot])
    assert (counts.executions, counts.boots) == (2, 1)
    again = await server.service.record_local(rows, [boot])
    assert (again.executions, again.boots) == (0, 0)
    await client.record_batch(remote, [])
    for sent in local + remote:
        assert await client.get(sent.id) == sent
    assert await client.get_boot(boot.id) == boot
    assert len((await client.list()).executions) == 4
