"""A client connection as one object: the protocol the loop drives, the buffer it fills, the writes it paces.

asyncio's StreamReaderProtocol cannot take bytes into a buffer it owns (it
is an ``asyncio.Protocol``), so every read, under TLS every record, made the
loop allocate a fresh object (recvbuf.py says what that costs). This is a
``BufferedProtocol`` instead: reads land in the shared receive buffer and are
appended to ``buf``, which the connection parses in place, so a request's
bytes are copied once between the socket and the parser.

Reading pauses while ``buf`` holds more than ``HIGH_WATER`` and resumes when
the consumer asks for more: a client that sends faster than the upstream
takes is held back by TCP, not by our memory.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from authproxy.transport import recvbuf
from authproxy.transport.lost import LOST

HIGH_WATER = 512 * 1024


class Source(Protocol):
    """What a tunnel reads from: a ClientStream or an asyncio.StreamReader."""

    async def read(self, n: int = -1) -> bytes: ...


class Sink(Protocol):
    """What a tunnel writes to: a ClientStream or an asyncio.StreamWriter."""

    @property
    def transport(self) -> asyncio.WriteTransport: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def can_write_eof(self) -> bool: ...

    def write_eof(self) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class ClientStream(asyncio.BufferedProtocol):
    """One accepted connection; ``on_connected`` runs as its task once the transport is there."""

    def __init__(
        self,
        on_connected: Callable[[ClientStream], Coroutine[Any, Any, None]],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # The listener passes its loop: asking for the running loop is a getpid() system call.
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self._on_connected = on_connected
        self._transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.buf = bytearray()  # received and not yet consumed
        self.eof = False  # the client sent EOF, or the connection is gone
        self._error: BaseException | None = None  # why the connection was lost, if not by a clean EOF
        self._waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._write_paused = False
        self._drain_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._lost = False
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self._over_tls = False

    @property
    def transport(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    # -- the loop's side -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self.task = self.loop.create_task(self._on_connected(self))

    def get_buffer(self, sizehint: int) -> memoryview:
        return recvbuf.VIEW  # the process's one receive buffer, whatever the hint (recvbuf.py)

    def buffer_updated(self, nbytes: int) -> None:
        buf = self.buf
        buf += recvbuf.VIEW[:nbytes]
        if len(buf) > HIGH_WATER and not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()
        # _wake, inline: this runs for every read.
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        # Plain TCP stays open for our side's last words (a half-close); TLS cannot half-close.
        return not self._over_tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        # The loop's SSL layer (and uvloop's TCP one) keeps our bound buffer_updated (lost.py).
        self._transport = LOST
        self.eof = True
        if exc is not None:
            self._error = exc
        self._wake()
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("Connection lost"))
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- reading ---------------------------------------------------------

    async def more(self) -> None:
        """Return once ``buf`` has grown or the client has sent EOF; OSError when the connection broke.

        A cancelled wait loses nothing: what arrived meanwhile is in ``buf``.
        """
        waiter = self.arm()
        if waiter is not None:
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        self.check()

    def arm(self) -> asyncio.Future[None] | None:
        """``more`` in two halves, for a caller that awaits the future itself (one coroutine fewer
        per read): the future the next read, the EOF or the loss completes; None at EOF. ``check`` after."""
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        if self.eof:
            return None
        waiter = self._waiter = self.loop.create_future()
        return waiter

    def check(self) -> None:
        """After a wait: OSError when the connection broke and nothing it brought is left to read."""
        error = self._error
        if error is not None and not self.buf:
            raise error if isinstance(error, OSError) else ConnectionResetError(str(error))

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all there are when negative), b"" at EOF: what a tunnel pumps."""
        while not self.buf:
            if self.eof:
                if self._error is not None:
                    await self.more()  # raises it
                return b""
            await self.more()
        buf = self.buf
        if n < 0 or n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        return data

    # -- writing ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(data)

    @property
    def writable(self) -> bool:
        """May the caller write on without ``drain``: connected, open, and the client taking what it is sent."""
        transport = self._transport
        return not self._write_paused and transport is not None and not transport.is_closing()

    async def drain(self) -> None:
        """Wait while the client is not taking what was written; ConnectionResetError once it is gone."""
        if self._transport is not None and self._transport.is_closing() and not self._lost:
            # The loop tells the protocol at its next turn: let it, so a lost client is an error here.
            await asyncio.sleep(0)
        if self._lost:
            raise ConnectionResetError("Connection lost")
        if not self._write_paused:
            return
        waiter = self.loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def write_eof(self) -> None:
        self.transport.write_eof()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()

    async def wait_closed(self) -> None:
        await self._closed

    async def start_tls(self, ctx: ssl.SSLContext, handshake_timeout: float) -> None:
        """Become the server side of TLS on this connection; raises what the handshake raised."""
        try:
            tls = await self.loop.start_tls(
                self.transport, self, ctx, server_side=True, ssl_handshake_timeout=handshake_timeout
            )
        except BaseException:
            # The loop closed the transport; the protocol is told nothing more.
            self.connection_lost(None)
            raise
        self._transport = cast(asyncio.Transport, tls)
        self._over_tls = True
