"""A dumb TCP relay that keeps every byte both ways, per connection (for golden captures)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class Capture:
    client: list[bytes] = field(default_factory=list)  # chunks as read, client -> server
    server: list[bytes] = field(default_factory=list)  # chunks as read, server -> client

    @property
    def client_bytes(self) -> bytes:
        return b"".join(self.client)

    @property
    def server_bytes(self) -> bytes:
        return b"".join(self.server)


class CaptureRelay:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.captures: list[Capture] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> CaptureRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    def sever(self) -> None:
        """Cut every relayed connection abruptly (RST), as a crashed server or network would."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        capture = Capture()
        self.captures.append(capture)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers += [writer, up_writer]
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer, capture.client)),
                 asyncio.ensure_future(self._pump(up_reader, writer, capture.server))]
        self._tasks.update(pumps)
        for pump in pumps:
            pump.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.ALL_COMPLETED)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    chunks: list[bytes]) -> None:
        try:
            while data := await reader.read(65536):
                chunks.append(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()
