"""Upstream auth matrix: the proxy authenticates to the real server with the URL's settings,
while the client connects to it on loopback with no password."""

from __future__ import annotations

import asyncpg
import pytest
import trustme

from flux_proxy.model import Lifetime
from tests.pg.conftest import ProxyFactory
from tests.services import PgCluster

SSL_QUERY = "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest.mark.parametrize(("user", "password", "sslmode", "uses_tls"), [
    ("postgres", None, "disable", False),
    ("md5user", "md5-secret", "disable", False),
    ("scramuser", "scram-secret", "disable", False),
    ("scramuser", "scram-secret", "prefer", True),
    ("tlsuser", "tls-secret", "require", True),
    ("tlsuser", "tls-secret", "verify-ca", True),
    ("tlsuser", "tls-secret", "verify-full", True),
])
async def test_upstream_auth_matrix(pg: PgCluster, make_proxy: ProxyFactory, user: str,
                                    password: str | None, sslmode: str, uses_tls: bool) -> None:
    query = {"sslmode": sslmode}
    if sslmode.startswith("verify"):
        query["sslrootcert"] = str(pg.ca_file)
    recorder = await make_proxy(pg.url(user, password, **query))
    conn = await asyncpg.connect(recorder.url(user), ssl=False)
    try:
        assert tuple(await conn.fetchrow(SSL_QUERY)) == (user, uses_tls)
    finally:
        await conn.close()
    await recorder.settle()
    session = recorder.exchanges[0]
    assert session.lifetime is Lifetime.SESSION and not session.failed
    assert all(password is None or password.encode() not in f
               for e in recorder.exchanges for f in e.client_frames + e.server_frames)


async def test_wrong_password_shows_the_upstream_error(pg: PgCluster,
                                                       make_proxy: ProxyFactory) -> None:
    recorder = await make_proxy(pg.url("scramuser", "wrong", sslmode="disable"))
    with pytest.raises(asyncpg.InvalidPasswordError,
                       match='password authentication failed for user "scramuser"'):
        await asyncpg.connect(recorder.url("scramuser"), ssl=False)
    await recorder.settle(lambda: bool(recorder.exchanges))
    [session] = recorder.exchanges
    assert session.failed and session.lifetime is Lifetime.SESSION
    assert session.response["error"]["sqlstate"] == "28P01"


async def test_tls_only_user_rejected_over_plaintext(pg: PgCluster,
                                                     make_proxy: ProxyFactory) -> None:
    recorder = await make_proxy(pg.url("tlsuser", "tls-secret", sslmode="disable"))
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match=r"pg_hba\.conf"):
        await asyncpg.connect(recorder.url("tlsuser"), ssl=False)


async def test_verify_full_refuses_a_server_from_another_ca(pg: PgCluster,
                                                            make_proxy: ProxyFactory,
                                                            tmp_path: object) -> None:
    other_ca = trustme.CA()
    path = f"{tmp_path}/other-ca.pem"
    other_ca.cert_pem.write_to_path(path)
    recorder = await make_proxy(pg.url("tlsuser", "tls-secret", sslmode="verify-full",
                                       sslrootcert=path))
    with pytest.raises(asyncpg.PostgresError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncpg.connect(recorder.url("tlsuser"), ssl=False)


async def test_unreachable_upstream_is_a_clean_error(make_proxy: ProxyFactory) -> None:
    from tests.services import free_port

    recorder = await make_proxy(f"postgresql://postgres@127.0.0.1:{free_port()}/x"
                                "?sslmode=disable")
    with pytest.raises(asyncpg.PostgresError, match="could not connect to upstream"):
        await asyncpg.connect(recorder.url(), ssl=False)
