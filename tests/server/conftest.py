"""Stores over real databases: a fresh Postgres database per test, SQLite in tmp_path."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

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
