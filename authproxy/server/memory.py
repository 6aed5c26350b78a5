"""glibc allocator settings for a long-running proxy, so freed memory goes back to the OS.

Every TLS connection (intercepted clients and TLS upstreams) carries a
read buffer in asyncio's SSL protocol (256 KiB unless tune_asyncio_tls
shrinks it, through compat.py), and bodies move in chunks of
64-256 KiB. glibc serves allocations that large with mmap at first, but
raises its mmap threshold each time one is freed (the "dynamic threshold");
after that they come from the heap, whose free space fragments between
connections and is never returned: RSS ratcheted up by 10-20 MiB per burst
of a few hundred connections in the soak. A fixed 64 KiB threshold keeps such
buffers in their own mappings, released the moment they are freed (RSS flat
across the soak), and a cap on arenas stops the resolver and certificate
threads from each growing a heap. An operator's own ``MALLOC_*`` environment
settings win.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Callable
from typing import cast

from authproxy.compat import cap_asyncio_tls_read

log = logging.getLogger("authproxy.memory")

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 64 * 1024
ARENA_MAX = 2


# asyncio's SSL protocol zero-fills a read buffer of this size for every TLS
# connection, so each one costs it in RSS from the first byte. TLS records
# are at most 16 KiB: 64 KiB holds four, and a 100 MB download through
# interception is no slower for it (bench/README.md, Latest results).
TLS_READ_BUFFER = 64 * 1024


def tune_asyncio_tls() -> None:
    """Shrink asyncio's per-connection TLS read buffer from 256 KiB (uvloop has its own, allocated lazily)."""
    cap_asyncio_tls_read(TLS_READ_BUFFER)


def tune_malloc() -> bool:
    """Apply the settings when running on glibc; True when they were applied."""
    if not sys.platform.startswith("linux"):
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_ARENA_MAX, ARENA_MAX))
    log.debug("malloc tuning %s", "applied" if ok else "refused")
    return ok


class Trimmer:
    """Hands free heap pages back to the OS after a burst of connections ends.

    Fragmentation leaves freed memory scattered inside the heap, where
    glibc's automatic trim (top of heap only) cannot reach it; ``malloc_trim``
    releases every free page. It costs a few milliseconds on a busy heap, so
    it runs when the last connection closes (debounced), and every minute.
    """

    PERIOD = 60.0
    QUIET = 1.0  # wait this long after the last connection closed

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._pending: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._trim is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._periodic())

    def idle(self) -> None:
        """The last connection just closed: trim once things stay quiet."""
        if self._trim is None or self._pending is not None:
            return
        self._pending = asyncio.get_running_loop().call_later(self.QUIET, self._fire)

    def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        if self._task is not None:
            self._task.cancel()

    def _fire(self) -> None:
        self._pending = None
        if self._trim is not None:
            self._trim(0)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.PERIOD)
            self._fire()


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return cast(Callable[[int], int], fn)
