"""flux replay against recordings whose Postgres and Redis are gone (issue 7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.replay.conftest import ShopRecording

pytestmark = pytest.mark.deno


@pytest.mark.parametrize("name", ["orders", "burst", "transfer", "duplicate", "price"])
async def test_replay_is_byte_identical_with_the_databases_stopped(shop: ShopRecording,
                                                                   name: str) -> None:
    result = await shop.cli.run("replay", shop.ids[name], "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "completed"
    assert doc["divergences"] == [] and doc["unused"] == [] and doc["stopped_at"] is None
    assert doc["response_differences"] == []
    assert doc["original"] == doc["replay"]
    assert all(x["source"] == "recorded" for x in doc["io"])
    replayed = await shop.cli.json("trace", doc["replay_id"])
    assert replayed["mode"] == "replay" and replayed["parent_id"] == shop.ids[name]
    body = replayed["response"]["body"]
    original_body = json.loads(shop.bodies[name]) if shop.bodies[name][:1] in b"[{" \
        else shop.bodies[name].decode()
    assert body == original_body
    assert shop.dials == 0, "replay dialled the real database"


async def test_uuid_and_time_written_by_the_handler_come_back(shop: ShopRecording) -> None:
    doc = await shop.cli.json("replay", shop.ids["orders"])
    order = doc["replay"]["body"]["order"]
    assert order == json.loads(shop.bodies["orders"])["order"]
    insert = next(x for x in doc["io"] if x["request"].get("sql", "").startswith("INSERT"))
    assert insert["request"]["params"][0] == order["id"]


async def test_changed_parameter_diverges_with_the_field(shop: ShopRecording,
                                                         tmp_path: Path) -> None:
    app = shop.variant("diverged", tmp_path)
    result = await shop.cli.run("replay", shop.ids["price"], "--app", str(app), "--json")
    assert result.returncode == 3, result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "diverged"
    assert [(d["field"], d["expected"], d["actual"]) for d in doc["divergences"]] == [
        ("param $1", "tea", "TEA")]
    human = await shop.cli.run("replay", shop.ids["price"], "--app", str(app))
    assert human.returncode == 3
    assert "param $1: 'tea' → 'TEA'" in human.stdout


async def test_extra_query_stops_at_the_io_boundary(shop: ShopRecording, tmp_path: Path) -> None:
    app = shop.variant("extra_query", tmp_path)
    result = await shop.cli.run("replay", shop.ids["price"], "--app", str(app), "--json")
    assert result.returncode == 4, result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "stopped"
    assert doc["stopped_at"]["request"]["sql"] == "SELECT count(*) FROM replay_orders"
    assert doc["replay"]["status"] == 500  # the app saw an FX001 error and threw
    human = await shop.cli.run("replay", shop.ids["price"], "--app", str(app))
    assert "stopped at an IO boundary" in human.stdout and "replay_orders" in human.stdout


@pytest.mark.parametrize("variant", ["fetch", "write"])
async def test_sandbox_denies_network_and_writes(shop: ShopRecording, tmp_path: Path,
                                                 variant: str) -> None:
    app = shop.variant(variant, tmp_path)
    result = await shop.cli.run("replay", shop.ids["price"], "--app", str(app), "--json")
    doc = json.loads(result.stdout)
    assert doc["replay"]["status"] == 500
    assert any("sandbox denied" in note for note in doc["notes"]), doc["notes"]
    assert not Path("/tmp/flux-replay-write-test.txt").exists()


async def test_unknown_id_and_missing_app(shop: ShopRecording, tmp_path: Path) -> None:
    unknown = await shop.cli.run("replay", "ffffffffffff")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    missing = await shop.cli.run("replay", shop.ids["price"], "--app",
                                 str(tmp_path / "nope.ts"))
    assert missing.returncode == 1 and "app file not found" in missing.stderr
