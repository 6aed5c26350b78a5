"""Secrets taken out of a byte stream as it passes, without holding the stream back.

The response scrubber: the values a route injected, in every spelling the
redactor derives (``redact.derived_forms``: as written, percent-, form- and
JSON-encoded, Base64 in both alphabets), replaced in a response's headers
and body before they reach the client. Sans-IO: bytes in, bytes out.

Each match becomes a replacement of its own length (``*`` times its length,
or the route's substitute when that has the same length), so a
Content-Length, a WebSocket frame's length and a chunk's size stay true.

Streaming without buffering the body: a match may straddle two chunks, so
``feed`` keeps back the tail of what it was given that could still be the
beginning of a spelling (from the first byte, among the last ones, where a
spelling's proper prefix runs to the end: never more than the longest
spelling less one byte), and releases everything before it at once. A tail
that cannot begin a spelling is not kept: a Server-Sent Event ends in
``\\n\\n``, which no spelling holds, so every event leaves the moment it arrives.

Cost: one search per spelling over the data (a handful per value: a key of
letters and digits has four; ``findany.py``: glibc's ``memmem`` over a large
chunk, ``bytes.partition`` over a small one), plus, per chunk, a look at its
last byte (one that occurs in no spelling settles it) or else a few ``find``
calls among its last bytes. A chunk with nothing to replace and no tail to
keep is passed on as the same object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from authproxy.secrecy.findany import NATIVE_MIN, AnyOf
from authproxy.secrecy.redact import derived_forms

__all__ = ["Needles", "Scrubber", "needles_for"]


class Needles:
    """The byte strings to replace, longest first; computed once per set of values."""

    __slots__ = ("_firsts", "_search", "alphabet", "forms", "longest", "shortest", "spans")

    def __init__(self, forms: Iterable[bytes], native: bool = True) -> None:
        self.forms: tuple[bytes, ...] = tuple(sorted({f for f in forms if f}, key=lambda f: (-len(f), f)))
        self.longest = len(self.forms[0]) if self.forms else 0
        self.shortest = len(self.forms[-1]) if self.forms else 0
        # Bytes that occur in some form: data ending in any other byte has no tail to keep.
        self.alphabet = frozenset(b for f in self.forms for b in f)
        self._firsts = tuple((f, f[:1]) for f in self.forms)
        self._search = AnyOf(self.forms, native)
        # Every occurrence of every form in some data, as (start, end), overlaps included.
        self.spans: Callable[[bytes], list[tuple[int, int]]] = self._search.spans

    def __bool__(self) -> bool:
        return bool(self.forms)

    def found(self, data: bytes) -> bool:
        """Whether any form occurs in ``data``: a large buffer is findany.py's, a small one searched here.

        Here, because this module is compiled and findany.py (ctypes) is not: a reply's head and
        a small body are searched without a call into interpreted code.
        """
        if len(data) >= NATIVE_MIN:
            return self._search.found(data)
        for form in self.forms:  # noqa: SIM110 - any() over a generator costs an object per call
            if data.partition(form)[1]:  # one argument: cheaper than find's argument parsing
                return True
        return False

    def partial_start(self, data: bytes) -> int:
        """Where the longest tail of ``data`` that is a proper prefix of some form starts (its length if none).

        Candidates are the places of each form's first byte among the last bytes; a
        regular expression of every prefix would nest one group per byte, which a
        token of a few hundred bytes (a JWT) takes past the parser's recursion limit.
        """
        size = len(data)
        start = size
        for form, first in self._firsts:
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


class Tally(Protocol):
    """Where replaced bytes are also counted as they are replaced (an access record)."""

    scrubbed: int


class Scrubber:
    """One stream (a response body, a WebSocket message) with every form of the needles replaced."""

    __slots__ = ("_needles", "_sub", "_tail", "_tally", "scrubbed")

    def __init__(self, needles: Needles, substitute: bytes | None = None, tally: Tally | None = None) -> None:
        self._needles = needles
        self._sub = substitute
        self._tail = b""
        self._tally = tally
        self.scrubbed = 0  # bytes replaced so far

    def feed(self, data: bytes) -> bytes:
        """What of the stream so far can leave now, scrubbed."""
        needles = self._needles
        if not self._tail and data and not needles.found(data):
            # The common case, one search per form: nothing to replace; keep the tail that
            # may begin a form, if the last byte can be part of one at all.
            if data[-1] not in needles.alphabet:
                return data
            cut = needles.partial_start(data)
            self._tail = data[cut:]
            return data if cut == len(data) else data[:cut]
        buf = self._tail + data if self._tail else data
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
        if not tail:
            return tail
        spans = self._needles.spans(tail)
        return self._mask(tail, spans) if spans else tail

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
        n = _covered(spans)
        self.scrubbed += n
        if self._tally is not None:
            self._tally.scrubbed += n
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
