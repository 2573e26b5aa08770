"""Fixtures for the Postgres proxy tests: a record proxy with a list sink, and raw clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from flux_proxy.model import Exchange
from flux_proxy.pg import messages as m
from flux_proxy.pg.codec import BackendParser
from flux_proxy.pg.proxy import PgRecordProxy
from tests.services import PgCluster


class Recorder:
    """A record proxy plus the exchanges it emitted."""

    def __init__(self, proxy: PgRecordProxy, exchanges: list[Exchange]) -> None:
        self.proxy = proxy
        self.exchanges = exchanges

    @property
    def port(self) -> int:
        return self.proxy.port

    def url(self, user: str = "postgres", database: str = "flux_test") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.proxy.port}/{database}?sslmode=disable"

    def of_connection(self, connection: int) -> list[Exchange]:
        return [e for e in self.exchanges if e.connection == connection]

    async def settle(self, predicate: Callable[[], bool] = lambda: True,
                     timeout: float = 5.0) -> None:
        """Let the proxy finish its bookkeeping (exchanges complete on the server's reply)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await asyncio.sleep(0.02)
            if predicate() or asyncio.get_running_loop().time() > deadline:
                return


ProxyFactory = Callable[[str], Awaitable[Recorder]]


@pytest.fixture
async def make_proxy() -> AsyncIterator[ProxyFactory]:
    proxies: list[PgRecordProxy] = []

    async def make(upstream: str) -> Recorder:
        exchanges: list[Exchange] = []
        proxy = await PgRecordProxy(upstream, exchanges.append).start()
        proxies.append(proxy)
        return Recorder(proxy, exchanges)

    yield make
    for proxy in proxies:
        await proxy.close()


@pytest.fixture
async def recorder(pg: PgCluster, make_proxy: ProxyFactory) -> Recorder:
    """A record proxy in front of the trust user, plaintext upstream."""
    return await make_proxy(pg.url(sslmode="disable"))


class RawClient:
    """A hand-driven frontend connection, for what drivers never send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = BackendParser()
        self.pending: list[m.Message] = []

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, *messages: m.Message | bytes) -> None:
        self.writer.write(b"".join(x if isinstance(x, bytes) else x.encode() for x in messages))

    async def startup(self, user: str = "postgres", database: str = "flux_test") -> list[m.Message]:
        self.send(m.StartupMessage(parameters=(("user", user), ("database", database))))
        return await self.until(m.ReadyForQuery)

    async def read_raw(self, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.reader.read(65536), timeout)

    async def until(self, kind: type[m.Message], timeout: float = 5.0) -> list[m.Message]:
        """Messages up to and including the first of type `kind` (EOF ends early)."""
        out: list[m.Message] = []
        while True:
            while self.pending:
                msg = self.pending.pop(0)
                out.append(msg)
                if isinstance(msg, kind):
                    return out
            data = await self.read_raw(timeout)
            if not data:
                return out
            self.pending += self.parser.feed_messages(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
