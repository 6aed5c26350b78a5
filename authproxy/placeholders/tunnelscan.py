"""A blind tunnel's first client bytes, watched for placeholders.

A blind tunnel carries bytes the proxy does not parse; in plain text (HTTP
to port 80 in a CONNECT, any clear-text protocol) a placeholder in them is
as misdirected as in a request. A placeholder that starts in the first
``WINDOW`` bytes the client sends is seen: they are scanned as they pass,
across segment boundaries (the last ``len - 1`` bytes of what was scanned
are kept, so one split anywhere is still seen).
Bytes already relayed cannot be called back and a tunnel has no place for a
403, so a hit closes both sides at once: the upstream never gets the segment
that completed the placeholder, though it may have had the part before it.
"""

from __future__ import annotations

from collections.abc import Callable

from authproxy.placeholders.index import Placeholders
from authproxy.transport.stream import Source

WINDOW = 64 * 1024


class ScanningSource:
    """Reads from ``src``; calls ``on_hit(route)`` and ends the stream when a placeholder shows."""

    def __init__(self, src: Source, ph: Placeholders, on_hit: Callable[[str], None]) -> None:
        self._src = src
        self._ph = ph
        self._on_hit = on_hit
        self._tail = b""
        self._seen = 0
        # A placeholder that starts in the window is seen whole.
        self._limit = WINDOW + ph.longest - 1
        self.hit: str | None = None

    async def read(self, n: int = -1) -> bytes:
        if self.hit is not None:
            return b""
        return self.feed(await self._src.read(n))

    def feed(self, data: bytes) -> bytes:
        """``data`` to relay, or b"" once a placeholder showed (the tunnel is then being closed)."""
        if self.hit is not None:
            return b""
        if not data or self._seen >= self._limit:
            return data
        part = data[: self._limit - self._seen]
        self._seen += len(part)
        window = self._tail + part
        route = self._ph.first_in(window)
        if route is not None:
            self.hit = route
            self._on_hit(route)
            return b""
        keep = self._ph.longest - 1
        self._tail = window[-keep:] if keep else b""
        return data
