"""The two upstream failures the rest of the proxy tells apart, kept out of the compiled ``h1message``.

``NoAnswer``: a stale pooled connection closed before a byte of an answer (the pool may
resend). ``UpstreamBodyError``: a ``ConnectionError`` that the server already treats as an
upstream breaking off mid-body (the client connection is cut, never padded). mypyc cannot
compile a class deriving from a built-in exception or from an interpreted class, so they
live here, interpreted, beside the compiled code that raises them.
"""

from __future__ import annotations

from authproxy.errors import UpstreamError


class UpstreamBodyError(ConnectionError):
    """The upstream broke off, stalled or lied about framing in the middle of a body."""


class NoAnswer(UpstreamError):
    """The connection closed before a single byte of an answer: what a stale pooled connection does."""
