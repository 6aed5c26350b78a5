"""Blind byte tunnels: both directions pumped, half-close honoured.

When one side sends EOF we pass it on with ``write_eof`` and keep pumping the
other way (a client that shuts down its sending side may still be reading a
long download), closing when both directions are done or idle too long.
"""

from __future__ import annotations

import asyncio
import time

from .stream import Sink, Source

_CHUNK = 256 * 1024


class _Activity:
    """Idle means idle in both directions: a long download sends nothing upward."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.counts = [0, 0]


async def _pump(src: Source, dst: Sink, idle: float, act: _Activity, i: int) -> None:
    try:
        while True:
            try:
                async with asyncio.timeout(idle):
                    data = await src.read(_CHUNK)
            except TimeoutError:
                try:
                    # A late loop turn can cancel a read whose bytes had arrived (server.Connection._fill):
                    # take them. With none, this waits one turn, in which the other direction's pump,
                    # woken in the same late turn, may record what it relayed.
                    async with asyncio.timeout(0):
                        data = await src.read(_CHUNK)
                except TimeoutError:
                    if time.monotonic() - act.last < idle:
                        continue
                    raise
            if not data:
                break
            act.last = time.monotonic()
            act.counts[i] += len(data)
            dst.write(data)
            # A peer that stops reading must not pin the tunnel: the write
            # gets the same idle allowance as a read.
            async with asyncio.timeout(idle):
                await dst.drain()
        if dst.can_write_eof() and not dst.is_closing():
            dst.write_eof()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        if dst.transport.get_write_buffer_size():
            dst.transport.abort()  # close() would wait for a peer that does not read
        else:
            dst.close()


async def pump_both(
    client: tuple[Source, Sink],
    upstream: tuple[Source, Sink],
    idle: float,
) -> tuple[int, int]:
    """Pump until both directions end; returns (bytes from client, bytes to client)."""
    act = _Activity()
    creader, cwriter = client
    ureader, uwriter = upstream
    try:
        await asyncio.gather(
            _pump(creader, uwriter, idle, act, 0),
            _pump(ureader, cwriter, idle, act, 1),
        )
    finally:
        uwriter.close()
    return act.counts[0], act.counts[1]
