"""Upstream auth through `flux serve`: md5, SCRAM and TLS-only Postgres users, Redis with
requirepass and with an ACL user. The app sees only password-less proxy URLs; the proxies
hold the credentials, and no password reaches a record."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.conftest import ServedApp, serving
from tests.services import PgCluster, RedisServer

pytestmark = pytest.mark.deno

PG_USERS = {"PG_MD5_URL": "md5user", "PG_SCRAM_URL": "scramuser", "PG_TLS_URL": "tlsuser"}
REDIS_USERS = {"REDIS_PASS_URL": "default", "REDIS_ACL_URL": "flux"}
SECRETS = ("md5-secret", "scram-secret", "tls-secret", "secret", "fluxpw")


@pytest.fixture(scope="module")
async def served(pg: PgCluster, redis_auth: RedisServer) -> AsyncIterator[ServedApp]:
    assert pg.ca_file is not None
    env = {
        "PG_MD5_URL": pg.url("md5user", "md5-secret", sslmode="disable"),
        "PG_SCRAM_URL": pg.url("scramuser", "scram-secret"),  # libpq's default: prefer TLS
        "PG_TLS_URL": pg.url("tlsuser", "tls-secret", sslmode="verify-full",
                             sslrootcert=str(pg.ca_file)),
        "REDIS_PASS_URL": redis_auth.url(password="secret"),
        "REDIS_ACL_URL": redis_auth.url("flux", "fluxpw"),
    }
    async with serving("auth_matrix.ts", env) as app:
        yield app


async def test_every_upstream_authenticates_as_its_own_user(served: ServedApp) -> None:
    reply = await served.request("GET", "/")
    assert reply.status == 200
    seen = reply.json()
    for var, user in PG_USERS.items():
        assert seen[var]["who"] == user
    # The proxy follows each URL's sslmode upstream: disable, prefer (default), verify-full.
    assert [seen[var]["tls"] for var in PG_USERS] == [False, True, True]
    for var, user in REDIS_USERS.items():
        assert seen[var]["who"] == user


async def test_the_app_sees_password_less_proxy_urls(served: ServedApp) -> None:
    seen = (await served.request("GET", "/")).json()
    for var in [*PG_USERS, *REDIS_USERS]:
        url = urlsplit(seen[var]["url"])
        assert url.hostname == "127.0.0.1" and url.password is None, var
        proxies = served.runtime.slots[0].proxies
        assert url.port == proxies[var].port
    for var, user in PG_USERS.items():
        url = urlsplit(seen[var]["url"])
        assert url.username == user
        assert parse_qs(url.query) == {"sslmode": ["disable"]}  # TLS is the proxy's business
    assert urlsplit(seen["REDIS_ACL_URL"]["url"]).username == "flux"


async def test_records_keep_users_but_no_password(served: ServedApp) -> None:
    reply = await served.request("GET", "/")
    execution = await served.recorded(reply)
    assert sorted(execution.upstreams) == sorted([*PG_USERS, *REDIS_USERS])
    assert "md5user@" in execution.upstreams["PG_MD5_URL"]
    assert "sslmode=verify-full" in execution.upstreams["PG_TLS_URL"]
    pg_calls = [x for x in execution.exchanges if x.protocol.value == "postgres"]
    assert [x.response["rows"][0][0] for x in pg_calls] == list(PG_USERS.values())
    redis_calls = [x for x in execution.exchanges if x.protocol.value == "redis"]
    assert [(x.request["command"], x.request["args"], x.response["value"])
            for x in redis_calls] == [("ACL", ["WHOAMI"], user) for user in REDIS_USERS.values()]

    boot = await served.boot(execution.boot_id)
    startups = [x for x in boot.exchanges if x.protocol.value == "postgres"
                and x.lifetime.value == "session"]
    assert [x.request["startup"]["user"] for x in startups] == list(PG_USERS.values())
    assert all(x.response["error"] is None for x in startups)
    text = repr(execution.to_json()) + repr([x.to_json() for x in boot.exchanges])
    frames = b"".join(frame for x in [*execution.exchanges, *boot.exchanges]
                      for frame in [*x.client_frames, *x.server_frames])
    assert frames  # the raw frames are there to search
    for secret in SECRETS:
        assert secret not in text and secret.encode() not in frames, secret
