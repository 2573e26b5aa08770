from urllib.parse import parse_qs, urlsplit

import pytest

from flux_proxy.urls import BadUpstreamURL, discover_upstreams, proxy_url, redact


def test_pg_url_rewritten_without_password_with_sslmode_disable() -> None:
    out = proxy_url("postgresql://alice:s3cret@db.example:6543/shop?sslmode=require&application_name=x",
                    "127.0.0.1", 40001)
    parts = urlsplit(out)
    assert (parts.scheme, parts.username, parts.password) == ("postgresql", "alice", None)
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", 40001, "/shop")
    assert parse_qs(parts.query) == {"application_name": ["x"], "sslmode": ["disable"]}


def test_rediss_becomes_plain_redis_to_the_proxy() -> None:
    out = proxy_url("rediss://flux:pw@cache:6380/2", "127.0.0.1", 40002)
    assert out == "redis://flux@127.0.0.1:40002/2"


def test_discovery_and_redaction() -> None:
    env = {"DATABASE_URL": "postgres://u:p@h/db", "CACHE": "redis://h", "HOME": "/root",
           "OTHER": "http://x"}
    assert discover_upstreams(env) == {"DATABASE_URL": "postgres://u:p@h/db", "CACHE": "redis://h"}
    assert redact("postgres://u:p@h:5/db") == "postgres://u@h:5/db"
    with pytest.raises(BadUpstreamURL):
        proxy_url("http://x", "127.0.0.1", 1)
