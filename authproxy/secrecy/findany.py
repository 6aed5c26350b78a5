"""Whether any of a few byte strings occurs in a buffer, and where: the response scrubber's search.

A large buffer (a download's 256 KiB reads) is searched with the C library's
``memmem``, one call per string, through ctypes: glibc's finds a string of a
few dozen bytes about three times as fast as ``bytes.find`` (its skip looks at
byte pairs, where CPython's looks at single bytes and a bloom filter). A small
one (a head, a short body) is searched with ``bytes.partition``: one argument,
so it skips the argument parsing ``bytes.find`` does on every call, which costs
more than the scan itself over a few hundred bytes; a ctypes call costs more
still. Where the C library is not glibc (musl, macOS, Windows), or ``native``
is False, every search is CPython's own.

The answers are the same either way (tests/test_findany.py runs both):
``found`` says whether any string occurs, ``spans`` gives every occurrence of
every string, overlapping ones included, as (start, end).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable

__all__ = ["NATIVE", "NATIVE_MIN", "AnyOf"]

# Below this many bytes a ctypes call (about 2,000 instructions of argument conversion)
# costs more than the faster scan saves: measured crossover 4-8 KiB.
NATIVE_MIN = 8192

_Memmem = Callable[[int | bytes, int, bytes, int], int | None]


def _memmem() -> _Memmem | None:
    """glibc's ``memmem``, typed for ctypes; None where the C library is another (or not loadable)."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION")  # glibc only: ValueError or None elsewhere
    except (AttributeError, ValueError, OSError):
        return None
    if not libc or not libc.startswith("glibc"):
        return None
    try:
        fn = ctypes.CDLL(None).memmem  # the process's own C library, already loaded
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_void_p
    # c_void_p takes bytes (its buffer's address) and plain addresses, for searching on from a match.
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t)
    found: _Memmem = fn
    return found


NATIVE: _Memmem | None = _memmem()


class AnyOf:
    """A fixed set of non-empty byte strings to look for."""

    __slots__ = ("_memmem", "_sized", "forms", "shortest")

    def __init__(self, forms: Iterable[bytes], native: bool = True) -> None:
        self.forms: tuple[bytes, ...] = tuple(dict.fromkeys(f for f in forms if f))
        self.shortest = min(map(len, self.forms), default=0)
        self._sized = tuple((f, len(f)) for f in self.forms)
        self._memmem = NATIVE if native else None

    @property
    def native(self) -> bool:
        """Whether large buffers go to the C library's ``memmem``."""
        return self._memmem is not None

    def found(self, data: bytes) -> bool:
        """Whether any of the strings occurs in ``data``."""
        size = len(data)
        if size >= NATIVE_MIN:
            memmem = self._memmem
            if memmem is not None and type(data) is bytes:
                return any(memmem(data, size, form, n) is not None for form, n in self._sized)
            return any(data.find(form) >= 0 for form in self.forms)
        if size < self.shortest:
            return False
        for form in self.forms:  # noqa: SIM110 - any() over a generator costs a frame each call
            if data.partition(form)[1]:
                return True
        return False

    def spans(self, data: bytes) -> list[tuple[int, int]]:
        """Every occurrence of every string in ``data``, as (start, end), overlaps included; grouped by string."""
        size = len(data)
        memmem = self._memmem
        if size >= NATIVE_MIN and memmem is not None and type(data) is bytes:
            return _native_spans(memmem, data, self._sized)
        found: list[tuple[int, int]] = []
        for form, n in self._sized:
            i = data.find(form)
            while i >= 0:
                found.append((i, i + n))
                i = data.find(form, i + 1)
        return found


def _native_spans(memmem: _Memmem, data: bytes, sized: tuple[tuple[bytes, int], ...]) -> list[tuple[int, int]]:
    size = len(data)
    # The address of ``data``'s own bytes (c_char_p points at them, no copy); it is alive and unmoved throughout.
    base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    assert base is not None
    found: list[tuple[int, int]] = []
    for form, n in sized:
        at = memmem(data, size, form, n)
        while at is not None:
            i = at - base
            found.append((i, i + n))
            at = memmem(at + 1, size - i - 1, form, n)  # on from the next byte: overlapping matches too
    return found
