"""Secrets taken out of a byte stream as it passes, without holding the stream back.

The response scrubber: the values a route injected, in every spelling the
redactor derives (``redact.derived_forms``: as written, percent-, form- and
JSON-encoded, Base64 in both alphabets), replaced in a response's headers
and body before they reach the client. Sans-IO: bytes in, bytes out.

Each match becomes a replacement of its own length (``*`` times its length,
or the route's substitute when that has the same length), so a
Content-Length, a WebSocket frame's length and a chunk's size stay true.

Streaming without buffering the body: a match may straddle two chunks, so
``feed`` keeps back the shortest tail of what it was given that could still
be the beginning of a spelling (never more than the longest spelling less
one byte), and releases everything before it at once. A tail that cannot
begin a spelling is not kept: a Server-Sent Event ends in ``\\n\\n``, which no
spelling begins with, so every event leaves the moment it arrives.

Cost: one ``bytes.find`` pass per spelling over the data (a handful per
value: a key of letters and digits has four), plus, per chunk, a few
``find`` calls in its last bytes for the tail. A chunk with nothing to
replace and no tail to keep is passed on as the same object.
"""

from __future__ import annotations

from collections.abc import Iterable

from authproxy.secrecy.redact import derived_forms

__all__ = ["Needles", "Scrubber", "needles_for"]


class Needles:
    """The byte strings to replace, longest first; computed once per set of values."""

    __slots__ = ("forms", "longest")

    def __init__(self, forms: Iterable[bytes]) -> None:
        self.forms: tuple[bytes, ...] = tuple(sorted({f for f in forms if f}, key=lambda f: (-len(f), f)))
        self.longest = len(self.forms[0]) if self.forms else 0

    def __bool__(self) -> bool:
        return bool(self.forms)

    def found(self, data: bytes) -> bool:
        return any(form in data for form in self.forms)

    def spans(self, data: bytes) -> list[tuple[int, int]]:
        """Every occurrence of every form in ``data``, as (start, end), overlaps included."""
        found: list[tuple[int, int]] = []
        for form in self.forms:
            i = data.find(form)
            while i >= 0:
                found.append((i, i + len(form)))
                i = data.find(form, i + 1)
        return found

    def partial_start(self, data: bytes) -> int:
        """Where the shortest tail of ``data`` that some form begins with (and does not end in) starts."""
        size = len(data)
        start = size
        for form in self.forms:
            first = form[:1]
            i = data.find(first, max(0, size - len(form) + 1))
            while 0 <= i < start:
                if form.startswith(data[i:]):
                    start = i
                    break
                i = data.find(first, i + 1)
        return start


def needles_for(values: Iterable[str]) -> Needles:
    """The forms of ``values`` as UTF-8 bytes (how a response carries them)."""
    return Needles(f.encode() for v in values for f in derived_forms(v))


class Scrubber:
    """One stream (a response body, a WebSocket message) with every form of the needles replaced."""

    __slots__ = ("_needles", "_sub", "_tail", "scrubbed")

    def __init__(self, needles: Needles, substitute: bytes | None = None) -> None:
        self._needles = needles
        self._sub = substitute
        self._tail = b""
        self.scrubbed = 0  # bytes replaced so far

    def feed(self, data: bytes) -> bytes:
        """What of the stream so far can leave now, scrubbed."""
        buf = self._tail + data if self._tail else data
        needles = self._needles
        spans = needles.spans(buf)
        cut = needles.partial_start(buf)
        if spans:
            cut = _before_straddling(spans, cut)
            spans = [s for s in spans if s[1] <= cut]
        self._tail = buf[cut:]
        if not spans:
            return buf if cut == len(buf) else buf[:cut]
        return self._mask(buf[:cut], spans)

    def flush(self) -> bytes:
        """The rest of the stream, at its end."""
        tail, self._tail = self._tail, b""
        spans = self._needles.spans(tail)
        return self._mask(tail, spans) if spans else tail

    def finds(self, data: bytes) -> bool:
        """Whether ``data`` holds any form (nothing replaced, nothing counted)."""
        return self._needles.found(data)

    def whole(self, value: bytes) -> bytes:
        """One complete value (a header's), scrubbed."""
        spans = self._needles.spans(value)
        return self._mask(value, spans) if spans else value

    def _mask(self, data: bytes, spans: list[tuple[int, int]]) -> bytes:
        out = bytearray(data)
        sub = self._sub
        for start, end in spans:
            n = end - start
            out[start:end] = sub if sub is not None and len(sub) == n else b"*" * n
        self.scrubbed += _covered(spans)
        return bytes(out)


def _before_straddling(spans: list[tuple[int, int]], cut: int) -> int:
    """Move ``cut`` back before any match that crosses it: the match is kept whole, found again next time."""
    moved = True
    while moved:
        moved = False
        for start, end in spans:
            if start < cut < end:
                cut, moved = start, True
    return cut


def _covered(spans: list[tuple[int, int]]) -> int:
    """How many bytes the union of ``spans`` covers."""
    total, reach = 0, 0
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total
