"""Which record store a server uses (DESIGN.md: --database-url, FLUX_DATABASE_URL,
DATABASE_URL, else SQLite under FLUX_HOME)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux_server.store import StoreError, create_store, resolve_database_url
from flux_server.store.postgres import PostgresStore
from flux_server.store.sqlite import SqliteStore

FLAG, FLUX, APP = ("postgresql://flag@h/db", "postgresql://flux@h/db", "postgresql://app@h/db")


def test_database_url_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX_DATABASE_URL", FLUX)
    monkeypatch.setenv("DATABASE_URL", APP)
    assert resolve_database_url(FLAG) == FLAG
    assert resolve_database_url(None) == FLUX
    monkeypatch.delenv("FLUX_DATABASE_URL")
    assert resolve_database_url(None) == APP
    assert resolve_database_url(None, embedded=True) is None  # never the app's database
    monkeypatch.delenv("DATABASE_URL")
    assert resolve_database_url(None) is None


def test_stores_by_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = create_store(APP)
    assert isinstance(store, PostgresStore)
    assert "app" not in store.description and "h:5432/db" in store.description
    monkeypatch.setenv("FLUX_HOME", str(tmp_path / "home"))
    sqlite = create_store(None)
    assert isinstance(sqlite, SqliteStore) and sqlite.path == tmp_path / "home" / "flux.db"
    monkeypatch.delenv("FLUX_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert create_store(None).path == tmp_path / ".flux" / "flux.db"  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="postgres://"):
        create_store("mysql://root:secret@h/db")
