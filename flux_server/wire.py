"""What client and server agree on besides the proto: metadata keys, status texts, defaults.

Kept apart from the service so the CLI's client imports none of the server's machinery.
"""

from __future__ import annotations

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

TOKEN_METADATA_KEY = "authorization"
CANDIDATES_METADATA_KEY = "flux-candidates"
AUTHENTICATION_FAILED = "authentication failed"
STORE_UNAVAILABLE_PREFIX = "record store unavailable"
TAIL_SUBSCRIBED = (("flux-tail", "subscribed"),)
TAIL_FELL_BEHIND = "tail fell too far behind the executions being recorded; reconnect"
SERVER_STOPPING = "flux server is stopping"


def bearer(token: str) -> str:
    return f"Bearer {token}"
