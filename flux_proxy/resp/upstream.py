"""The real Redis server behind a proxy: its URL, TLS settings and connection handshake.

The proxy authenticates upstream itself (the app's URL carries no password), so this module
turns `redis://user:pw@host:port/db` / `rediss://...` into the AUTH and SELECT the proxy sends
first on every upstream connection, and checks their replies without any I/O.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from flux_proxy.resp.codec import encode_command
from flux_proxy.urls import redact


class BadRedisURL(ValueError):
    pass


_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class RedisUpstream:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False
    ca_file: str | None = None  # ssl_ca_certs
    cert_reqs: str = "required"  # ssl_cert_reqs: none | optional | required
    check_hostname: bool | None = None  # ssl_check_hostname; default: on when verifying
    certfile: str | None = None  # ssl_certfile (client certificate)
    keyfile: str | None = None  # ssl_keyfile
    url: str = ""

    @classmethod
    def from_url(cls, url: str) -> RedisUpstream:
        """Accepts redis-py's URL forms: `/db` or `?db=`, and its `ssl_*` query options."""
        try:
            parts = urlsplit(url)
            port = parts.port or 6379
        except ValueError as exc:
            raise BadRedisURL(f"bad Redis URL {redact(url)}: {exc}") from exc
        if parts.scheme not in ("redis", "rediss"):
            raise BadRedisURL(f"not a redis:// or rediss:// URL: {redact(url)}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        db_text = parts.path.lstrip("/") or query.get("db", "0")
        if not db_text.isdigit():
            raise BadRedisURL(f"bad database number {db_text!r} in {redact(url)}")
        cert_reqs = query.get("ssl_cert_reqs", "required").lower()
        if cert_reqs not in ("none", "optional", "required"):
            raise BadRedisURL(f"ssl_cert_reqs must be none, optional or required: {cert_reqs}")
        check = query.get("ssl_check_hostname")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            db=int(db_text),
            tls=parts.scheme == "rediss",
            ca_file=query.get("ssl_ca_certs"),
            cert_reqs=cert_reqs,
            check_hostname=None if check is None else check.lower() in _TRUE,
            certfile=query.get("ssl_certfile"),
            keyfile=query.get("ssl_keyfile"),
            url=url,
        )

    @property
    def redacted_url(self) -> str:
        return redact(self.url) if self.url else f"{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_reqs == "none":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context.verify_mode = (ssl.CERT_OPTIONAL if self.cert_reqs == "optional"
                                   else ssl.CERT_REQUIRED)
            context.check_hostname = (self.check_hostname if self.check_hostname is not None
                                      else self.cert_reqs == "required")
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        return context

    def handshake(self) -> list[bytes]:
        """The commands that make a fresh upstream connection what the app expects: logged in
        with the URL's credentials, on the URL's database."""
        commands = []
        if self.password is not None and (self.password or self.username):
            if self.username:
                commands.append(encode_command(b"AUTH", self.username, self.password))
            else:
                commands.append(encode_command(b"AUTH", self.password))
        if self.db:
            commands.append(encode_command(b"SELECT", self.db))
        return commands


class Handshake:
    """Checks the replies to `RedisUpstream.handshake()`, sans-IO.

    Feed reply frames; when `done`, `error` is None on success or the server's error line
    (`WRONGPASS invalid username-password pair ...`) that the client must see."""

    def __init__(self, commands: list[bytes]) -> None:
        self.commands = commands
        self._owed = len(commands)
        self.error: str | None = None

    @property
    def done(self) -> bool:
        return self._owed == 0 or self.error is not None

    def feed(self, frames: list[bytes]) -> list[bytes]:
        """Consume handshake replies; returns the frames that came after them."""
        taken = 0
        for frame in frames:
            if self.done:
                break
            taken += 1
            self._owed -= 1
            if frame[:1] in (b"-", b"!"):
                self.error = _error_text(frame)
        return frames[taken:]


def _error_text(frame: bytes) -> str:
    if frame[:1] == b"!":
        return frame.split(b"\r\n", 2)[1].decode("utf-8", "replace")
    return frame[1:].rstrip(b"\r\n").decode("utf-8", "replace")
