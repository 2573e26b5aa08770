"""Extra throwaway Redis servers the shared fixtures do not offer: DEBUG enabled, TLS."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.services import free_port, wait_for_port


@dataclass
class CustomRedis:
    """redis-server with arbitrary extra arguments; `tls=True` serves TLS only on `.port`."""

    extra: list[str] = field(default_factory=list)
    tls: bool = False
    port: int = field(default_factory=free_port)
    ca_file: Path | None = None
    _proc: subprocess.Popen[bytes] | None = None
    _dir: Path | None = None

    def url(self, user: str | None = None, password: str | None = None, db: int = 0) -> str:
        auth = "" if user is None and password is None else f"{user or ''}:{password or ''}@"
        scheme = "rediss" if self.tls else "redis"
        query = f"?ssl_ca_certs={self.ca_file}" if self.tls else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}{query}"

    def start(self) -> CustomRedis:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self._dir = Path(tempfile.mkdtemp(prefix="flux-resp-"))
        args = [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self._dir), "--loglevel", "warning", *self.extra]
        if self.tls:
            import trustme

            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost")
            self.ca_file = self._dir / "ca.pem"
            ca.cert_pem.write_to_path(str(self.ca_file))
            cert.cert_chain_pems[0].write_to_path(str(self._dir / "server.crt"))
            cert.private_key_pem.write_to_path(str(self._dir / "server.key"))
            args += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self._dir / "server.crt"),
                     "--tls-key-file", str(self._dir / "server.key"),
                     "--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


@pytest.fixture(scope="session")
def redis_debug() -> Iterator[CustomRedis]:
    """A server with DEBUG enabled, so DEBUG PROTOCOL can emit every RESP3 type."""
    server = CustomRedis(["--enable-debug-command", "yes"]).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_tls() -> Iterator[CustomRedis]:
    """TLS only, requirepass `tlspw`, certificate from a throwaway CA (`.ca_file`)."""
    server = CustomRedis(["--requirepass", "tlspw"], tls=True).start()
    yield server
    server.stop()
