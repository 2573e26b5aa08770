"""Session-wide throwaway servers. See tests/services.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import PgCluster, RedisServer


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """PostgreSQL with trust (postgres), md5 (md5user), scram (scramuser), TLS-only (tlsuser)."""
    cluster = PgCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_plain() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_auth() -> Iterator[RedisServer]:
    """requirepass `secret` for the default user, and ACL user `flux` / `fluxpw`."""
    server = RedisServer(password="secret", acl_users={"flux": "fluxpw"}).start()
    yield server
    server.stop()
