"""`--sample 0`: successful requests are not recorded; errors and every 5xx always are."""

from __future__ import annotations

import pytest

from flux_server.client import NotFound
from tests.integration.conftest import serving
from tests.services import PgCluster

pytestmark = pytest.mark.deno


async def test_sample_zero_keeps_only_errors(pg: PgCluster) -> None:
    async with serving("default_export_pg.ts", {"DATABASE_URL": pg.url()}, sample=0.0) as served:
        ok = await served.request("GET", "/sum?a=1&b=2")
        missing = await served.request("GET", "/nowhere")
        unavailable = await served.request("GET", "/unavailable")
        failed = await served.request("GET", "/divide")
        assert (ok.status, missing.status, unavailable.status, failed.status) == (
            200, 404, 503, 500)
        # Unrecorded requests still carry an id: the front assigns it before the outcome.
        assert ok.execution_id and missing.execution_id

        # The shipper sends in order, so once the error is stored the others would be too.
        error = await served.recorded(failed)
        assert error.outcome.value == "error" and error.exchanges
        for dropped in (ok, missing):
            with pytest.raises(NotFound):
                await served.records.get(dropped.execution_id)
        unavailable_record = await served.recorded(unavailable)
        assert unavailable_record.error is None  # kept for its status alone
        assert unavailable_record.outcome.value == "error"
        page = await served.records.list(limit=10)
        assert sorted(summary.id for summary in page.executions) == sorted(
            [unavailable.execution_id, failed.execution_id])
