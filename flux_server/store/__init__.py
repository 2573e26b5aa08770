"""Record stores: Postgres when a database URL is given, else embedded SQLite."""

from __future__ import annotations

import os
from pathlib import Path

from flux_server.store.base import (
    AmbiguousPrefix,
    InvalidCursor,
    InvalidId,
    InvalidRecord,
    Page,
    Store,
    StoredCounts,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "AmbiguousPrefix",
    "InvalidCursor",
    "InvalidId",
    "InvalidRecord",
    "Page",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredCounts",
    "create_store",
    "resolve_database_url",
]


def resolve_database_url(explicit: str | None = None, *, embedded: bool = False) -> str | None:
    """DESIGN.md order: `--database-url`, FLUX_DATABASE_URL, DATABASE_URL, else None (SQLite).

    The embedded server that `flux serve` starts never uses DATABASE_URL: that is the app's.
    """
    names = ("FLUX_DATABASE_URL",) if embedded else ("FLUX_DATABASE_URL", "DATABASE_URL")
    candidates = [explicit, *(os.environ.get(n) for n in names)]
    return next((c for c in candidates if c), None)


def create_store(database_url: str | None, sqlite_path: Path | None = None) -> Store:
    """A Postgres store for a postgres:// URL, an SQLite store for None or sqlite:///PATH."""
    if database_url is None:
        from flux_server.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path)
    if database_url.startswith(("postgres://", "postgresql://")):
        from flux_server.store.postgres import PostgresStore

        return PostgresStore(database_url)
    if database_url.startswith("sqlite:///"):
        from flux_server.store.sqlite import SqliteStore

        return SqliteStore(Path(database_url.removeprefix("sqlite://")))
    raise StoreError(f"unsupported database URL (expected postgres:// or postgresql://): "
                     f"{database_url.split('://')[0]}://...")
