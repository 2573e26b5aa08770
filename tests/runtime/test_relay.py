"""Pieces of the relay that need no worker."""

from __future__ import annotations

import uuid

from flux_runtime.relay import end_to_end, new_execution_id


def test_execution_ids_are_canonical_random_uuid4s() -> None:
    ids = [new_execution_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text  # lower case, dashes where uuid4() puts them
    # every random bit varies: no position is stuck across 2000 ids
    assert all(len({text[i] for text in ids}) > 1
               for i in range(36) if i not in (8, 13, 14, 18, 23))


def test_hop_by_hop_headers_and_those_named_in_connection_stay_behind() -> None:
    headers = [("Host", "h"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
               ("Transfer-Encoding", "chunked"), ("X-End", "2"), ("Keep-Alive", "timeout=5")]
    assert end_to_end(headers) == [("Host", "h"), ("X-End", "2")]
