"""What travels on an upstream HTTP/1.1 connection, apart from the connection itself.

The request head as one bytes object, the response as the pool hands it out
(status, reason, raw headers, the body as an async iterator). The errors
that go with them are h1errors.py's.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote

from authproxy.errors import ProxyError

if TYPE_CHECKING:
    from authproxy.net.egress import Rule
    from authproxy.net.parent import Parent

# Methods whose requests carry no Content-Length when they have no body (RFC 9110 §8.6).
_NO_BODY_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT"})


# A streamed body (an async iterable) may also have ``ready() -> bytes | None``:
# what of it is already at hand, taken without waiting (b"" when nothing is,
# None once it has all been taken), so that it leaves with the request head.
Body = bytes | AsyncIterable[bytes] | None
# Scheme, host, port, TLS context (by identity), and the rule the connection's address was judged by.
# (scheme, host, port, TLS context, rule, parent proxy or None): what a pooled connection may be reused for.
Key = tuple[str, str, int, ssl.SSLContext | None, "Rule", "Parent | None"]


class BodySource(Protocol):
    """Where a response body's chunks come from (upstream/h1client.py's H1Connection)."""

    @property
    def has_data(self) -> bool: ...

    def take(self) -> bytes:
        """Everything already received, without waiting."""
        ...

    async def read(self) -> bytes:
        """The next chunk, waiting for it; b"" at the body's end."""
        ...


_Source = TypeVar("_Source", bound=BodySource)


class BodyFilter(Protocol):
    """What a response body may pass through on its way out (secrecy/scrub.py's Scrubber): order kept, a tail held."""

    def feed(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class Response:
    """Status, reason and raw headers, and the body as an async iterator of chunks."""

    __slots__ = ("_conn", "_filter", "_release", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        conn: _Source,
        release: Callable[[_Source], None],
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._conn: BodySource | None = conn
        self._release: Callable[[Any], None] = release  # called with conn only, so of its type
        self._filter: BodyFilter | None = None

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        # What already arrived is taken without a coroutine; read() waits for more.
        chunk = conn.take() if conn.has_data else await conn.read()
        filt = self._filter
        if not chunk:
            self.release()  # the end: the connection can serve the next request now
            if filt is None:
                raise StopAsyncIteration
            self._filter = None
            return filt.flush()  # b"" is skipped by the writer; the next call ends
        # A filter here, not in a wrapping iterator: one coroutine per chunk, not two.
        return chunk if filt is None else filt.feed(chunk)

    def filter(self, filt: BodyFilter) -> None:
        """Pass the body through ``filt`` (each chunk as it leaves, what it held at the end)."""
        self._filter = filt

    def release(self) -> None:
        """Hand the connection back; one whose response is unfinished is closed, not reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._release(conn)


def serialize_request(
    method: bytes, target: str, headers: list[tuple[bytes, bytes]], body: Body, length: int | None
) -> bytes:
    """The request head in one bytes object, framing header included."""
    parts = [method, b" ", _target_bytes(target), b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    if body is None:
        if method not in _NO_BODY_METHODS:
            parts.append(b"Content-Length: 0\r\n")
        lines = len(headers) + (method not in _NO_BODY_METHODS) + 2
    elif isinstance(body, bytes):
        parts += (b"Content-Length: ", b"%d" % len(body), b"\r\n")
        lines = len(headers) + 3
    elif length is not None:
        parts += (b"Content-Length: ", b"%d" % length, b"\r\n")
        lines = len(headers) + 3
    else:
        parts.append(b"Transfer-Encoding: chunked\r\n")
        lines = len(headers) + 3
    parts.append(b"\r\n")
    head = b"".join(parts)
    # One line per field: a CR or LF inside a name or value would let it
    # smuggle a header (or a request) past us. Counting is cheaper than a scan per field.
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise ProxyError("a request header holds a line break; the request was not sent.")
    return head


def _target_bytes(target: str) -> bytes:
    try:
        return target.encode("latin-1")  # the client's bytes, as the server decoded them
    except UnicodeEncodeError:
        # A gateway base path from the config with characters beyond Latin-1.
        return quote(target, safe="/?#[]@!$&'()*+,;=:%~-._").encode("ascii")
