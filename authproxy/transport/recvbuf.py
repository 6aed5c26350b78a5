"""One receive buffer for every connection of the process (asyncio.BufferedProtocol's get_buffer).

A protocol that takes ``data_received(bytes)`` makes the loop allocate a
fresh object per read, and under TLS that object is the SSL layer's whole
read size (256 KiB on uvloop, 64 KiB on asyncio here) before it is shrunk to
the record: with memory.py's fixed mmap threshold, an mmap and a munmap for
every record read, about 15 us, a quarter of an intercepted request's CPU.
A buffered protocol has the bytes decrypted (or received) straight into this
buffer instead.

One buffer serves every connection because both loops call ``get_buffer`` and
``buffer_updated`` back to back on the loop's thread, and every protocol
copies what it keeps out of it before ``buffer_updated`` returns.
"""

from __future__ import annotations

# Below the mmap threshold (memory.py), so a body chunk copied out of one read
# comes from the heap rather than from a mapping of its own.
SIZE = 63 * 1024

_buffer = bytearray(SIZE)
VIEW = memoryview(_buffer)


def get_buffer(sizehint: int) -> memoryview:
    """The shared buffer, whatever the hint: a read never needs more than one buffer's worth."""
    return VIEW
