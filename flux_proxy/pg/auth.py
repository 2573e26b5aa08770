"""The proxy as a Postgres client of the real server: URL settings, TLS, password auth.

`UpstreamConfig` reads a libpq-style URL; `Handshake` is the sans-IO startup/auth state machine
(cleartext, MD5, SCRAM-SHA-256); `connect_upstream` drives it over a socket, with TLS per
`sslmode` (disable, allow, prefer, require, verify-ca, verify-full) and `sslrootcert`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import getpass
import hashlib
import hmac
import os
import secrets
import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from flux_proxy.pg import messages as m
from flux_proxy.pg.codec import BackendParser, decode_backend
from flux_proxy.pg.errors import ProtocolError

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_URL_ONLY_KEYS = {"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "password",
                  "passfile", "connect_timeout", "host", "port", "user", "dbname",
                  "target_session_attrs", "sslnegotiation", "gssencmode", "channel_binding",
                  "ssl", "sslpassword", "requiressl", "krbsrvname", "service"}


class UpstreamError(Exception):
    """Connecting or authenticating upstream failed. `error_frame` is what the client gets."""

    def __init__(self, message: str, error_frame: bytes | None = None) -> None:
        super().__init__(message)
        self.error_frame = error_frame or error_response("FATAL", "08001", message)


def error_response(severity: str, sqlstate: str, message: str) -> bytes:
    """An ErrorResponse frame (with the non-localized severity too, as servers send it)."""
    return m.ErrorResponse((("S", severity), ("V", severity), ("C", sqlstate),
                            ("M", message))).encode()


@dataclass(frozen=True)
class UpstreamConfig:
    host: str = "127.0.0.1"
    port: int = 5432
    user: str | None = None
    password: str | None = None
    database: str | None = None
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    connect_timeout: float = 10.0
    options: dict[str, str] = field(default_factory=dict)  # extra startup parameters

    @classmethod
    def from_url(cls, url: str) -> UpstreamConfig:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError("not a postgres:// or postgresql:// URL")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        sslmode = query.get("sslmode", "prefer")
        if sslmode not in SSL_MODES:
            raise ValueError(f"unknown sslmode {sslmode!r}")
        host = query.get("host") or parts.hostname or "127.0.0.1"
        database = unquote(parts.path.lstrip("/")) or query.get("dbname") or None
        return cls(
            host=host, port=int(query.get("port") or parts.port or 5432),
            user=unquote(parts.username) if parts.username else query.get("user"),
            password=unquote(parts.password) if parts.password is not None
            else query.get("password"),
            database=database, sslmode=sslmode, sslrootcert=query.get("sslrootcert"),
            connect_timeout=float(query.get("connect_timeout") or 10),
            options={k: v for k, v in query.items() if k not in _URL_ONLY_KEYS})

    @property
    def unix_socket(self) -> str | None:
        return f"{self.host}/.s.PGSQL.{self.port}" if self.host.startswith("/") else None

    def startup_parameters(self, client: dict[str, str]) -> dict[str, str]:
        """The client's parameters, with the URL's user and database (the proxy's identity)."""
        params = {**self.options, **client}
        params["user"] = self.user or client.get("user") or getpass.getuser()
        database = self.database or client.get("database")
        if database:
            params["database"] = database
        return params

    def ssl_context(self) -> ssl.SSLContext | None:
        """None for sslmode=disable; verification as libpq does for each mode."""
        if self.sslmode == "disable":
            return None
        mode = self.sslmode
        if mode in ("require", "prefer", "allow") and self.sslrootcert and os.path.exists(
                self.sslrootcert):
            mode = "verify-ca" if mode == "require" else mode  # libpq: a root cert means verify
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if mode in ("verify-ca", "verify-full"):
            if self.sslrootcert in (None, "system"):
                ctx.load_default_certs()
            else:
                ctx.load_verify_locations(cafile=self.sslrootcert)
            ctx.check_hostname = mode == "verify-full"
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


# --------------------------------------------------------------------------------------------
# SCRAM-SHA-256 and MD5


def md5_password(user: str, password: str, salt: bytes) -> str:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


@functools.lru_cache(maxsize=64)
def salted_password(password: str, salt: str, iterations: int) -> bytes:
    """PBKDF2 costs milliseconds on the event loop; a role's salt does not change, so each
    (password, salt, iterations) is derived once per process, not once per connection."""
    return hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt, validate=True),
                               iterations)


class ScramClient:
    """SCRAM-SHA-256 without channel binding (RFC 5802/7677), as libpq does."""

    def __init__(self, password: str, nonce: str | None = None) -> None:
        self.password = password
        self.nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self._server_signature: bytes | None = None

    def first_message(self) -> bytes:
        return f"n,,{self.first_bare}".encode()

    def final_message(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
        nonce, salt, iterations = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
        if not nonce.startswith(self.nonce) or not salt or not iterations.isdigit():
            raise UpstreamError("the server's SCRAM challenge is invalid")
        try:
            salted = salted_password(self.password, salt, int(iterations))
        except binascii.Error as exc:
            raise UpstreamError("the server's SCRAM salt is not base64") from exc
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_bare},{text},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self._server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_final(self, server_final: bytes) -> None:
        text = server_final.decode(errors="replace")
        expected = "v=" + base64.b64encode(self._server_signature or b"").decode()
        if not hmac.compare_digest(text.split(",")[0], expected):
            raise UpstreamError("the server's SCRAM signature does not match: not the real "
                                "server, or a different password")


# --------------------------------------------------------------------------------------------
# Sans-IO handshake


@dataclass
class HandshakeResult:
    parameter_status: list[bytes]  # raw ParameterStatus frames, in order
    backend_key: m.BackendKeyData | None
    negotiate: bytes | None  # raw NegotiateProtocolVersion, if any
    notices: list[bytes]
    tx_status: str


class Handshake:
    """Startup and authentication as a client: feed server frames, send what it returns."""

    def __init__(self, config: UpstreamConfig, params: dict[str, str],
                 protocol: int = m.PROTOCOL_3_0) -> None:
        self.config = config
        self.params = params
        self.protocol = protocol
        self._scram: ScramClient | None = None
        self._status: list[bytes] = []
        self._notices: list[bytes] = []
        self._negotiate: bytes | None = None
        self._key: m.BackendKeyData | None = None
        self.result: HandshakeResult | None = None

    def startup_message(self) -> bytes:
        return m.StartupMessage(self.protocol, tuple(self.params.items())).encode()

    def _password(self) -> str:
        if self.config.password is None:
            raise UpstreamError("the server asked for a password and the upstream URL has none",
                                error_response("FATAL", "28P01",
                                               "the upstream URL has no password"))
        return self.config.password

    def receive(self, frame: bytes) -> bytes:
        """Bytes to send back (may be empty). Raises UpstreamError on failure."""
        msg = decode_backend(frame)
        if isinstance(msg, m.ErrorResponse):
            raise UpstreamError(msg.message or "upstream error", frame)
        if isinstance(msg, m.AuthenticationOk):
            return b""
        if isinstance(msg, m.AuthenticationCleartextPassword):
            return m.PasswordMessage(self._password()).encode()
        if isinstance(msg, m.AuthenticationMD5Password):
            user = self.params["user"]
            return m.PasswordMessage(md5_password(user, self._password(), msg.salt)).encode()
        if isinstance(msg, m.AuthenticationSASL):
            if "SCRAM-SHA-256" not in msg.mechanisms:
                raise UpstreamError(f"unsupported SASL mechanisms {list(msg.mechanisms)}")
            self._scram = ScramClient(self._password())
            return m.SASLInitialResponse("SCRAM-SHA-256", self._scram.first_message()).encode()
        if isinstance(msg, m.AuthenticationSASLContinue):
            if self._scram is None:
                raise UpstreamError("SASLContinue before SASL")
            return m.SASLResponse(self._scram.final_message(msg.data)).encode()
        if isinstance(msg, m.AuthenticationSASLFinal):
            if self._scram is None:
                raise UpstreamError("SASLFinal before SASL")
            self._scram.verify_final(msg.data)
            return b""
        if isinstance(msg, m.Authentication):
            raise UpstreamError(f"unsupported authentication method {type(msg).__name__[14:]}")
        if isinstance(msg, m.ParameterStatus):
            self._status.append(frame)
        elif isinstance(msg, m.BackendKeyData):
            self._key = msg
        elif isinstance(msg, m.NegotiateProtocolVersion):
            self._negotiate = frame
        elif isinstance(msg, m.NoticeResponse):
            self._notices.append(frame)
        elif isinstance(msg, m.ReadyForQuery):
            self.result = HandshakeResult(self._status, self._key, self._negotiate,
                                          self._notices, msg.status)
        else:
            raise UpstreamError(f"unexpected {type(msg).__name__} during startup")
        return b""


# --------------------------------------------------------------------------------------------
# IO


class _Collector(asyncio.Protocol):
    """Buffers bytes for the handshake coroutine; replaced by the relay protocol afterwards."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.closed: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool | None:
        self.closed = self.closed or ConnectionResetError("upstream closed the connection")
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.closed or exc or ConnectionResetError("upstream closed the connection")
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        if self.buffer:
            return
        if self.closed is not None:
            raise UpstreamError(f"upstream closed during startup: {self.closed}")
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter
        self._waiter = None
        if not self.buffer and self.closed is not None:
            raise UpstreamError(f"upstream closed during startup: {self.closed}")

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


@dataclass
class Upstream:
    transport: asyncio.Transport
    result: HandshakeResult
    leftover: bytes  # bytes the server sent after its first ReadyForQuery


async def _open(config: UpstreamConfig, want_tls: bool
                ) -> tuple[asyncio.Transport, _Collector, bool]:
    loop = asyncio.get_running_loop()
    collector = _Collector()
    if config.unix_socket:
        transport, _ = await loop.create_unix_connection(lambda: collector, config.unix_socket)
    else:
        transport, _ = await loop.create_connection(lambda: collector, config.host, config.port)
    if not want_tls or config.unix_socket:
        return transport, collector, False  # type: ignore[return-value]
    transport.write(m.SSLRequest().encode())
    try:
        await collector.wait()
    except BaseException:  # a timeout or cancellation must not leave the socket open
        transport.close()
        raise
    answer = collector.take()
    if answer[:1] == b"S" and len(answer) == 1:
        ctx = config.ssl_context()
        assert ctx is not None
        server_hostname = config.host if ctx.check_hostname else None
        tls = await loop.start_tls(transport, collector, ctx, server_hostname=server_hostname)
        if tls is None:
            raise UpstreamError("TLS handshake with the upstream failed")
        return tls, collector, True  # type: ignore[return-value]
    if answer[:1] == b"N" and len(answer) == 1:
        if config.sslmode in ("require", "verify-ca", "verify-full"):
            transport.close()
            raise UpstreamError(f"the server does not support SSL, but sslmode={config.sslmode}")
        return transport, collector, False  # type: ignore[return-value]
    transport.close()
    raise UpstreamError("unexpected reply to SSLRequest from upstream")


async def connect_upstream(config: UpstreamConfig, client_params: dict[str, str],
                           protocol: int = m.PROTOCOL_3_0) -> Upstream:
    """Connect, negotiate TLS, authenticate; return the transport ready for relaying."""
    try:
        return await asyncio.wait_for(_connect(config, client_params, protocol),
                                      config.connect_timeout)
    except TimeoutError as exc:
        raise UpstreamError(
            f"timed out connecting to upstream {config.host}:{config.port}") from exc
    except (OSError, ssl.SSLError) as exc:
        raise UpstreamError(f"could not connect to upstream {config.host}:{config.port}: "
                            f"{exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
                            ) from exc


async def _connect(config: UpstreamConfig, client_params: dict[str, str],
                   protocol: int) -> Upstream:
    attempts = {"disable": [False], "allow": [False, True], "prefer": [True, False]}.get(
        config.sslmode, [True])
    for attempt, want_tls in enumerate(attempts, 1):
        final = attempt == len(attempts)
        try:
            transport, collector, _ = await _open(config, want_tls)
        except (OSError, ssl.SSLError, UpstreamError):
            if final:
                raise
            continue
        try:
            return await _authenticate(config, client_params, protocol, transport, collector)
        except UpstreamError as exc:
            transport.close()
            # An authentication failure is final; others (a pg_hba "hostssl" or "hostnossl"
            # rejection) may succeed the other way, as libpq's prefer/allow do.
            if final or b"C28" in exc.error_frame:
                raise
        except ProtocolError as exc:
            transport.close()
            raise UpstreamError(f"upstream sent malformed data: {exc}") from exc
        except BaseException:  # timeout, cancellation, a malformed SCRAM salt: no leak
            transport.close()
            raise
    raise AssertionError("unreachable")


async def _authenticate(config: UpstreamConfig, client_params: dict[str, str], protocol: int,
                        transport: asyncio.Transport, collector: _Collector) -> Upstream:
    handshake = Handshake(config, config.startup_parameters(client_params), protocol)
    transport.write(handshake.startup_message())
    parser = BackendParser(max_message_size=1 << 20)
    while True:
        await collector.wait()
        data = collector.take()
        frames = parser.feed(data)
        for i, frame in enumerate(frames):
            reply = handshake.receive(frame)
            if reply:
                transport.write(reply)
            if handshake.result is not None:
                # Bytes after the first ReadyForQuery belong to the relay.
                leftover = b"".join(frames[i + 1:]) + parser.take_pending()
                return Upstream(transport, handshake.result, leftover)


async def send_cancel(config: UpstreamConfig, key: m.BackendKeyData) -> None:
    """Deliver a CancelRequest for the upstream connection `key`, as libpq would."""
    with contextlib.suppress(UpstreamError, OSError, ssl.SSLError, TimeoutError):
        async with asyncio.timeout(config.connect_timeout):
            want_tls = config.sslmode in ("prefer", "require", "verify-ca", "verify-full")
            transport, collector, _ = await _open(config, want_tls)
            try:
                transport.write(m.CancelRequest(key.process_id, key.secret_key).encode())
                with contextlib.suppress(UpstreamError):
                    await collector.wait()  # the server closes the connection when done
            finally:
                transport.close()
