"""Upstream URL discovery and rewriting: the app's URL in, the proxy's URL out."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

PG_SCHEMES = ("postgres", "postgresql")
REDIS_SCHEMES = ("redis", "rediss")


class BadUpstreamURL(ValueError):
    pass


def upstream_kind(value: str) -> str | None:
    """'pg' or 'redis' when `value` is an upstream URL, else None."""
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme in PG_SCHEMES:
        return "pg"
    if scheme in REDIS_SCHEMES:
        return "redis"
    return None


def discover_upstreams(env: dict[str, str]) -> dict[str, str]:
    """Every variable whose value is a postgres://, postgresql://, redis:// or rediss:// URL."""
    return {k: v for k, v in env.items() if upstream_kind(v)}


def proxy_url(upstream: str, host: str, port: int) -> str:
    """The URL the app uses instead of `upstream`: same user and database, no password,
    plain TCP to the local proxy (the proxy holds the credentials and any TLS upstream)."""
    kind = upstream_kind(upstream)
    if kind is None:
        raise BadUpstreamURL(f"not a postgres:// or redis:// URL: {redact(upstream)}")
    parts = urlsplit(upstream)
    user = parts.username
    netloc = f"{quote(unquote(user), safe='')}@{host}:{port}" if user else f"{host}:{port}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k.lower() not in ("sslmode", "sslrootcert", "sslcert", "sslkey", "password",
                                  "ssl", "tls")]
    scheme = parts.scheme
    if kind == "pg":
        query.append(("sslmode", "disable"))
    elif scheme == "rediss":
        scheme = "redis"
    return urlunsplit((scheme, netloc, parts.path, urlencode(query), ""))


def redact(url: str) -> str:
    """The URL without its password, for records, logs and prompts."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def split_listen(listen: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`HOST:PORT`, `[::1]:PORT`, `:PORT` or `PORT` -> (host, port); ValueError otherwise."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, not {listen!r}")
    return host.strip("[]") or default_host, int(port)
