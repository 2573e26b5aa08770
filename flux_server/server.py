"""Running flux-server: bind checks, the grpc.aio server, maintenance, graceful stop.

Also used in-process: `flux serve` starts an embedded server when none answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from pathlib import Path

import grpc

from flux_proxy.urls import split_listen
from flux_server.gen import flux_pb2_grpc as pb_grpc
from flux_server.service import FluxService
from flux_server.store import Store, StoreUnavailable, create_store, resolve_database_url
from flux_server.wire import DEFAULT_LISTEN, DEFAULT_MAX_MESSAGE_BYTES

log = logging.getLogger("flux.server")

MAINTENANCE_INTERVAL_SECONDS = 3600.0
SHUTDOWN_GRACE_SECONDS = 10.0


class ServerStartError(Exception):
    """The server cannot start; the message is one line for the user."""


def split_host_port(listen: str) -> tuple[str, int]:
    """`127.0.0.1:50051`, `[::1]:50051`, `localhost:0` -> (host, port); the host is required."""
    if ":" not in listen or listen.startswith(":"):
        raise ServerStartError(f"--listen takes HOST:PORT, not {listen!r}")
    try:
        return split_listen(listen)
    except ValueError:
        raise ServerStartError(f"--listen takes HOST:PORT, not {listen!r}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


def check_listen_allowed(host: str, token: str | None) -> None:
    if not token and not is_loopback(host):
        raise ServerStartError(
            f"refusing to listen on {host} without a token: set FLUX_TOKEN (clients send the "
            "same value), or listen on 127.0.0.1")


def check_port_free(host: str, port: int) -> None:
    """Binds once ourselves, so a busy port is our one-line error rather than gRPC's log."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ServerStartError(f"cannot listen on {host}:{port}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ServerStartError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class FluxServer:
    """One flux-server: a store, the gRPC service over it, and the retention schedule."""

    def __init__(self, store: Store, listen: str = DEFAULT_LISTEN, *, token: str | None = None,
                 retention: float | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.store = store
        self.host, self.port = split_host_port(listen)
        check_listen_allowed(self.host, token)
        self.retention = retention
        self.service = FluxService(store, token)
        self._max_message_bytes = max_message_bytes
        self._server: grpc.aio.Server | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self.store_error: str | None = None  # why the store could not be opened at start

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Binds and serves. A store that is down does not stop the start: calls answer
        UNAVAILABLE until it is back, and `store_error` says why."""
        check_port_free(self.host, self.port)
        try:
            await self.store.open()
        except StoreUnavailable as exc:
            self.store_error = str(exc)
        options = [("grpc.max_receive_message_length", self._max_message_bytes),
                   ("grpc.max_send_message_length", self._max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=options)
        pb_grpc.add_FluxServicer_to_server(self.service, server)
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            port = 0
            reason = str(exc)
        else:
            reason = "address in use or not available"
        if port == 0:
            await self.store.close()
            raise ServerStartError(f"cannot listen on {self.address}: {reason}")
        self.port = port
        await server.start()
        self._server = server
        self._maintenance = asyncio.create_task(self._maintain(), name="flux-maintenance")

    async def _maintain(self) -> None:
        """Applies retention (and, on Postgres, creates the coming days' partitions)."""
        first_run = True
        while True:
            try:
                await self.store.maintain()
                if self.retention is not None:
                    removed = await self.store.apply_retention(time.time() - self.retention)
                    if removed:
                        log.info("retention removed %d executions", removed)
            except StoreUnavailable as exc:
                if not (first_run and self.store_error):  # the start-up line said so already
                    log.warning("maintenance skipped: %s", exc)
            except Exception as exc:  # keep the schedule alive; say what failed, in one line
                log.error("maintenance failed: %s: %s", type(exc).__name__, exc)
            first_run = False
            await asyncio.sleep(MAINTENANCE_INTERVAL_SECONDS)

    async def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Ends tails, lets in-flight calls and writes finish, then closes the store."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        self.store.hub.close()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.service.drain()
        await self.store.close()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def build_server(database_url: str | None, listen: str = DEFAULT_LISTEN, *,
                 retention: float | None = None, token: str | None = None,
                 sqlite_path: Path | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> FluxServer:
    """A server over the store `database_url` names (None: SQLite under FLUX_HOME)."""
    return FluxServer(create_store(database_url, sqlite_path), listen, token=token,
                      retention=retention, max_message_bytes=max_message_bytes)


async def start_embedded_server(listen: str = DEFAULT_LISTEN) -> FluxServer:
    """The server `flux serve` runs in-process when none answers: FLUX_DATABASE_URL or SQLite
    (never the app's DATABASE_URL), FLUX_TOKEN if set. Stop it with `await server.stop()`."""
    server = build_server(resolve_database_url(embedded=True), listen,
                          token=os.environ.get("FLUX_TOKEN") or None)
    await server.start()
    return server
