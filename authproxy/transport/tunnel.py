"""Byte tunnels (blind CONNECTs, protocol switches): both directions pumped, each side's end passed on.

What passing an end on means depends on what the two sides can say:

- **TCP on both sides: half-close.** A side's FIN after its last bytes
  becomes our FIN to the other side (``write_eof``), and the other
  direction keeps flowing (RFC 9293 §3.6: a side that closed may still
  receive): a client that shuts down its sending side may still be reading
  a long download. The tunnel ends when both directions have.
- **TLS on either side: a full close once one direction has ended.** TLS
  ends a direction with close_notify (RFC 8446 §6.1), and the stacks at
  both ends take it as the end of the connection: asyncio's and uvloop's
  TLS transports cannot send it and keep reading (no ``write_eof``), and
  answer a received one with their own, then close. So the other direction
  cannot be carried on: when one side ends (EOF, or close_notify, after its
  last bytes), what it sent is flushed to the other side, which is then
  closed in full (close_notify for TLS, FIN for TCP), and so is the side
  that ended. Passing nothing on, as a half-close to a TLS side would, left
  the client waiting for its own close timeout.

A WebSocket is why this matters: after the Close frames are exchanged the
server closes the TCP connection first, and the client waits for that close
(RFC 6455 §7.1.1, §7.1.2); the upstream's FIN (or close_notify) must reach
the client as the end of its connection, as it would without a proxy.
Either way a tunnel idle in both directions for ``idle`` seconds is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

from authproxy.transport.stream import Sink, Source

_CHUNK = 256 * 1024


class _Activity:
    """Idle means idle in both directions: a long download sends nothing upward."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.counts = [0, 0]


async def _pump(src: Source, dst: Sink, idle: float, act: _Activity, i: int, half_close: bool) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends; its EOF is passed on as ours when ``half_close``."""
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
        if half_close and dst.can_write_eof() and not dst.is_closing():
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
    """Pump until the tunnel ends (see the module docstring); returns (bytes from client, bytes to client).

    Returns with the upstream side closed, and the client side closed when
    it is TLS, half-closed when it is TCP (the connection's own close then
    lingers for the client's FIN, server.Connection._close).
    """
    act = _Activity()
    creader, cwriter = client
    ureader, uwriter = upstream
    # Decided once: a transport that supports write_eof is plain TCP (asyncio's and uvloop's TLS ones do not).
    half_close = cwriter.can_write_eof() and uwriter.can_write_eof()
    pumps = (
        asyncio.ensure_future(_pump(creader, uwriter, idle, act, 0, half_close)),
        asyncio.ensure_future(_pump(ureader, cwriter, idle, act, 1, half_close)),
    )
    try:
        if half_close:
            await asyncio.gather(*pumps)
        else:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            await _close_both(pumps, cwriter, uwriter, idle)
    finally:
        for pump in pumps:
            pump.cancel()
        uwriter.close()
    return act.counts[0], act.counts[1]


async def _close_both(pumps: tuple[asyncio.Future[None], ...], cwriter: Sink, uwriter: Sink, idle: float) -> None:
    """One direction has ended with TLS on a side: stop the other, then end both sides after their last bytes.

    Stopping a pump loses nothing it read: it writes what it reads without
    an await in between, and ``close`` sends what is buffered before the
    close_notify or FIN. A TLS client's close is waited for (bounded like a
    write, by ``idle``) so that its last bytes are not cut by the
    connection's own short linger; the upstream's completes on its own. A
    TCP client gets our FIN only: the connection's close then reads until the
    client's own, so that bytes it still sends do not turn our close into a
    reset that could destroy what it has yet to read (server.Connection._close).
    """
    for pump in pumps:
        pump.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)
    if uwriter.can_write_eof() and not uwriter.is_closing():
        uwriter.write_eof()  # the FIN right after the last bytes, whatever close() then finds unread
    uwriter.close()
    if cwriter.can_write_eof():
        if not cwriter.is_closing():
            cwriter.write_eof()
        return
    cwriter.close()
    with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
        async with asyncio.timeout(idle):
            await cwriter.wait_closed()
