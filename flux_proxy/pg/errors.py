"""The one exception the Postgres codec raises for bad input."""

from __future__ import annotations


class ProtocolError(Exception):
    """Malformed Postgres v3 protocol input: bad length, truncated field, unknown type byte."""
