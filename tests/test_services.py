"""The throwaway servers give every auth method the proxies must speak upstream."""

import ssl

import asyncpg
import pytest
import redis

from tests.services import PgCluster, RedisServer


async def test_pg_trust(pg: PgCluster) -> None:
    conn = await asyncpg.connect(pg.url())
    assert await conn.fetchval("select current_user") == "postgres"
    await conn.close()


@pytest.mark.parametrize("user,method", [("md5user", "md5"), ("scramuser", "scram-sha-256")])
async def test_pg_password_methods(pg: PgCluster, user: str, method: str) -> None:
    u = pg.user(user)
    assert u.method == method
    conn = await asyncpg.connect(pg.url(u.name, u.password), ssl=False)
    assert await conn.fetchval("select current_user") == user
    await conn.close()
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(pg.url(u.name, "wrong"), ssl=False)


async def test_pg_tls_required(pg: PgCluster) -> None:
    u = pg.user("tlsuser")
    ctx = ssl.create_default_context(cafile=str(pg.ca_file))
    conn = await asyncpg.connect(pg.url(u.name, u.password), ssl=ctx)
    assert await conn.fetchval("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
    await conn.close()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg.connect(pg.url(u.name, u.password), ssl=False)


def test_redis_plain(redis_plain: RedisServer) -> None:
    r = redis.Redis.from_url(redis_plain.url())
    assert r.ping()
    r.close()


def test_redis_requirepass_and_acl(redis_auth: RedisServer) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(redis_auth.url()).ping()
    assert redis.Redis.from_url(redis_auth.url(password="secret")).ping()
    assert redis.Redis.from_url(redis_auth.url(user="flux", password="fluxpw")).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(redis_auth.url(user="flux", password="nope")).ping()
