"""The errors of an upstream exchange that the framing raises and callers catch.

Apart from h1message.py (which re-exports them) because a class built on ``ConnectionError``
or on an interpreted class cannot be compiled by mypyc, and h1message.py is.
"""

from __future__ import annotations

from authproxy.errors import UpstreamError


class UpstreamBodyError(ConnectionError):
    """The upstream broke off, stalled or lied about framing in the middle of a body."""


class NoAnswer(UpstreamError):
    """The connection closed before a single byte of an answer: what a stale pooled connection does."""
