"""A stand-in for a transport whose connection is lost, so that a protocol can let go of the real one.

Both loops' SSL layers keep the protocol's bound ``buffer_updated`` after the
connection is lost (they clear only their reference to the protocol), so a
BufferedProtocol that kept its transport stayed in a reference cycle with the
connection's whole SSL state. Only the cyclic garbage collector frees such a
cycle, and it runs by object counts, blind to the OpenSSL buffers the cycle
holds: in the soak, RSS at rest grew ~40 MiB from a few hundred closed TLS
connections. A protocol swaps its transport for ``LOST`` in connection_lost;
the calls that may still come (close, abort, is_closing) answer as a closed
transport would.
"""

from __future__ import annotations

import asyncio
from typing import Any


class _Lost(asyncio.Transport):
    def is_closing(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def write(self, data: Any) -> None:
        pass  # what a closed transport does too, bar a warning after a few

    def write_eof(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return False


LOST: asyncio.Transport = _Lost()
