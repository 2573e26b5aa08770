"""Stores over real databases: a fresh Postgres database per test, SQLite in tmp_path."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from flux_server.client import FluxClient
from flux_server.server import FluxServer
from flux_server.store.base import Store
from flux_server.store.postgres import PostgresStore
from flux_server.store.sqlite import SqliteStore
from tests.services import PgCluster

_database_numbers = itertools.count()


async def fresh_database(pg: PgCluster) -> str:
    """A new, empty database in the session cluster; returns its URL."""
    name = f"flux_server_{os.getpid()}_{next(_database_numbers)}"
    conn = await asyncpg.connect(pg.url(database="postgres"))
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return pg.url(database=name)


@pytest.fixture
async def pg_url(pg: PgCluster) -> str:
    return await fresh_database(pg)


def make_store(kind: str, tmp_path: Path, url: str | None) -> Store:
    if kind == "sqlite":
        return SqliteStore(tmp_path / "flux.db")
    assert url is not None
    return PostgresStore(url)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path,
                pg: PgCluster) -> AsyncIterator[Store]:
    url = await fresh_database(pg) if request.param == "postgres" else None
    opened = make_store(request.param, tmp_path, url)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def server(request: pytest.FixtureRequest, tmp_path: Path,
                 pg: PgCluster) -> AsyncIterator[FluxServer]:
    url = await fresh_database(pg) if request.param == "postgres" else None
    running = FluxServer(make_store(request.param, tmp_path, url), "127.0.0.1:0")
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def client(server: FluxServer) -> AsyncIterator[FluxClient]:
    async with FluxClient(server.address) as connected:
        yield connected


def pg_ctl(cluster: PgCluster, action: str) -> None:
    """Stops or starts a cluster in place (PgCluster.stop would delete its data).

    A fast stop, not immediate: the test clusters run with synchronous_commit off, so an
    immediate stop could lose the last commits, which is the cluster's choice, not Flux's."""
    import subprocess

    from tests.services import _as_postgres_user, pg_bindir

    assert cluster._dir is not None
    data = str(cluster._dir / "data")
    command = [str(pg_bindir() / "pg_ctl"), "-D", data, "-w"]
    if action == "stop":
        command += ["-m", "fast", "stop"]
    else:
        command += ["-l", str(cluster._dir / "server.log"), "start"]
    subprocess.run(_as_postgres_user(command), check=True, capture_output=True)


@pytest.fixture
def own_pg() -> Iterator[PgCluster]:
    """A cluster of this test's own, which it may stop and start."""
    cluster = PgCluster(users=(), tls=False).start()
    yield cluster
    cluster.stop()
