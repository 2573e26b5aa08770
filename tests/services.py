"""Throwaway PostgreSQL and Redis servers for the test session.

Each server runs from the installed binaries on a free loopback port in a temporary directory,
so tests are hermetic and can use auth methods the machine's own servers do not have.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL binaries not found; run ./scripts/test to install them")
    return Path(found[-1]).parent


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root; drop to the postgres user when we are root."""
    if os.getuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@dataclass(frozen=True)
class PgUser:
    name: str
    password: str | None
    method: str  # pg_hba method: trust, md5, scram-sha-256
    ssl_only: bool = False


DEFAULT_PG_USERS = (
    PgUser("md5user", "md5-secret", "md5"),
    PgUser("scramuser", "scram-secret", "scram-sha-256"),
    PgUser("tlsuser", "tls-secret", "scram-sha-256", ssl_only=True),
)


@dataclass
class PgCluster:
    """A private PostgreSQL cluster: superuser `postgres` over trust, plus password users.

    With `tls=True` the server has a certificate from a throwaway CA (`ca_file`), and users
    marked `ssl_only` may only connect over TLS.
    """

    users: tuple[PgUser, ...] = DEFAULT_PG_USERS
    tls: bool = True
    port: int = field(default_factory=free_port)
    database: str = "flux_test"
    ca_file: Path | None = None
    _dir: Path | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, user: str = "postgres", password: str | None = None, database: str | None = None,
            **query: str) -> str:
        auth = user if password is None else f"{user}:{password}"
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{auth}@{self.host}:{self.port}/{database or self.database}" + (
            f"?{q}" if q else "")

    def user(self, name: str) -> PgUser:
        return next(u for u in self.users if u.name == name)

    def start(self) -> PgCluster:
        bindir = pg_bindir()
        self._dir = Path(tempfile.mkdtemp(prefix="flux-pg-"))
        data, sock = self._dir / "data", self._dir / "sock"
        sock.mkdir()
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self._dir, pw.pw_uid, pw.pw_gid)
            os.chown(sock, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            _as_postgres_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                               "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
            check=True, capture_output=True)
        hba = []
        for u in self.users:
            kind = "hostssl" if u.ssl_only else "host"
            hba.append(f"{kind} all {u.name} 127.0.0.1/32 {u.method}")
            if u.ssl_only:
                hba.append(f"hostnossl all {u.name} 127.0.0.1/32 reject")
        hba += ["local all all trust", "host all all 127.0.0.1/32 trust",
                "host all all ::1/128 trust"]
        self._write(data / "pg_hba.conf", "\n".join(hba) + "\n")
        conf = [
            f"port = {self.port}", "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{sock}'", "fsync = off", "synchronous_commit = off",
            "full_page_writes = off", "max_connections = 200", "log_min_messages = warning",
        ]
        if self.tls:
            import trustme

            ca = trustme.CA()
            cert = ca.issue_cert("localhost", "127.0.0.1")
            self.ca_file = self._dir / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_file))
            cert.cert_chain_pems[0].write_to_path(str(data / "server.crt"))
            cert.private_key_pem.write_to_path(str(data / "server.key"))
            self._chown_postgres(data / "server.crt", data / "server.key")
            os.chmod(data / "server.key", 0o600)
            conf += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
        with open(data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")
        subprocess.run(
            _as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-l",
                               str(self._dir / "server.log"), "-w", "-t", "60", "start"]),
            check=True, capture_output=True)
        self._setup_roles(bindir)
        return self

    def _setup_roles(self, bindir: Path) -> None:
        # Each -c runs on its own: CREATE DATABASE refuses to run inside a transaction block.
        commands = [f"CREATE DATABASE {self.database}"]
        for u in self.users:
            enc = "md5" if u.method == "md5" else "scram-sha-256"
            pw = f" PASSWORD '{u.password}'" if u.password else ""
            commands.append(f"SET password_encryption = '{enc}'; "
                            f"CREATE ROLE {u.name} LOGIN SUPERUSER{pw}")
        args = [str(bindir / "psql"), "-h", self.host, "-p", str(self.port), "-U", "postgres",
                "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q"]
        for c in commands:
            args += ["-c", c]
        subprocess.run(args, check=True, capture_output=True)

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        self._chown_postgres(path)

    @staticmethod
    def _chown_postgres(*paths: Path) -> None:
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in paths:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def stop(self) -> None:
        if self._dir is None:
            return
        subprocess.run(
            _as_postgres_user([str(pg_bindir() / "pg_ctl"), "-D", str(self._dir / "data"),
                               "-m", "immediate", "-w", "stop"]),
            capture_output=True)
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def restart(self) -> None:
        """Stop and start again on the same port and data (for server-down tests)."""
        assert self._dir is not None
        ctl = str(pg_bindir() / "pg_ctl")
        data = str(self._dir / "data")
        subprocess.run(_as_postgres_user([ctl, "-D", data, "-m", "immediate", "-w", "stop"]),
                       check=True, capture_output=True)
        subprocess.run(_as_postgres_user([ctl, "-D", data, "-l", str(self._dir / "server.log"),
                                          "-w", "start"]), check=True, capture_output=True)


@dataclass
class RedisServer:
    """A private redis-server. `password` sets requirepass; `acl_users` maps name to password."""

    password: str | None = None
    acl_users: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None
    _dir: Path | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, user: str | None = None, password: str | None = None, db: int = 0) -> str:
        auth = "" if user is None and password is None else f"{user or ''}:{password or ''}@"
        return f"redis://{auth}{self.host}:{self.port}/{db}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found; run ./scripts/test to install it")
        self._dir = Path(tempfile.mkdtemp(prefix="flux-redis-"))
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self._dir), "--daemonize", "no",
                "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        for name, pw in self.acl_users.items():
            args += ["--user", name, "on", f">{pw}", "~*", "&*", "+@all"]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def restart(self) -> None:
        self.stop()
        self.start()
