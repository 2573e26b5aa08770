"""Sans-IO client side of the proxy's startup phase: what to answer before the relay exists.

The proxy terminates the client's connection like pgbouncer: it answers SSLRequest and
GSSENCRequest with `N` (loopback, plaintext), refuses what it cannot serve with a clear error,
and hands the StartupMessage (or CancelRequest) to the IO layer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from flux_proxy.pg import messages as m
from flux_proxy.pg.codec import MAX_STARTUP_PACKET_SIZE, decode_startup
from flux_proxy.pg.errors import ProtocolError


@dataclass(frozen=True)
class Reply:
    """Bytes to send to the client (the one-byte `N` to SSLRequest/GSSENCRequest)."""

    data: bytes


@dataclass(frozen=True)
class Refuse:
    """Send this error to the client and close its connection."""

    sqlstate: str
    message: str


@dataclass(frozen=True)
class Start:
    """The client's StartupMessage; `rest` are bytes it sent after it (relay them later)."""

    startup: m.StartupMessage
    rest: bytes


@dataclass(frozen=True)
class Cancel:
    request: m.CancelRequest


Action = Reply | Refuse | Start | Cancel


class Greeting:
    """Feed client bytes until it returns a `Start`, `Cancel` or `Refuse`."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.finished = False

    def receive(self, data: bytes) -> list[Action]:
        if self.finished:
            raise RuntimeError("the greeting is over")
        buf = self._buf
        buf += data
        actions: list[Action] = []
        while len(buf) >= 4:
            if buf[0] == 0x16 and buf[1:2] in (b"\x03", b""):
                return self._end(actions, Refuse(
                    "08P01", "direct TLS connections are not supported by the flux proxy "
                    "(it listens on loopback in plaintext); connect with sslmode=disable"))
            length = struct.unpack_from("!I", buf)[0]
            if length < 8 or length > MAX_STARTUP_PACKET_SIZE:
                return self._end(actions, Refuse("08P01", f"invalid startup packet length "
                                                          f"{length}"))
            if len(buf) < length:
                break
            try:
                packet = decode_startup(bytes(buf[:length]))
            except ProtocolError as exc:
                return self._end(actions, Refuse("08P01", str(exc)))
            del buf[:length]
            if isinstance(packet, m.SSLRequest | m.GSSENCRequest):
                if buf:
                    return self._end(actions, Refuse(
                        "08P01", "received unencrypted data after SSLRequest: the client must "
                        "wait for the server's answer (possible man-in-the-middle injection)"))
                actions.append(Reply(b"N"))
                continue
            if isinstance(packet, m.CancelRequest):
                return self._end(actions, Cancel(packet))
            assert isinstance(packet, m.StartupMessage)
            if "user" not in packet.params:
                return self._end(actions, Refuse("28000", "no PostgreSQL user name specified "
                                                          "in startup packet"))
            rest = bytes(buf)
            buf.clear()
            return self._end(actions, Start(packet, rest))
        return actions

    def _end(self, actions: list[Action], last: Action) -> list[Action]:
        self.finished = True
        self._buf.clear()
        actions.append(last)
        return actions
