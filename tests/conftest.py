"""Session-wide throwaway servers. See tests/services.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import PgCluster, RedisServer, free_port
from tests.support import ServerProcess


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


@pytest.fixture(scope="session")
def flux_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(f"127.0.0.1:{free_port()}", tmp_path_factory.mktemp("flux-home"))
    server.start()
    yield server
    server.stop()
