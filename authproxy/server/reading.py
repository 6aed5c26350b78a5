"""Reading a client's requests: the read deadline, the next head within its timeout, the body as it comes.

The request side of ``connection.Connection``, over the state it keeps: one
timer per connection for the read deadline, the head bounded in size and time,
the body read by the connection's task or by the upstream sender of a streamed
body (RFC 9112 §9.3).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

from authproxy.errors import BadRequest, RequestTimeout
from authproxy.http1.h1request import ChunkedBody, ChunkedBodyError, Head, LengthBody, head_end, parse_head, too_large
from authproxy.http1.h1response import informational
from authproxy.transport.stream import ClientStream

if TYPE_CHECKING:
    from authproxy.runtime import Runtime, Snapshot

_HEAD_KEEP = 16 * 1024  # raw head bytes kept to explain a refusal


class Server(Protocol):
    """What a connection needs of the server that accepted it (server/listener.py's ProxyServer)."""

    rt: Runtime
    draining: bool  # shutting down: finish the exchange in progress, take no new one


class ClientGone(Exception):
    """The client closed or stalled; nothing more can be said to it."""


class RequestReading:
    """How ``Connection`` reads: ``_fill`` under one deadline timer, the next head, the body's chunks."""

    server: Server
    rt: Runtime
    stream: ClientStream
    buf: bytearray
    busy: bool
    eof: bool
    head: bytes
    req: Head | None
    body: LengthBody | ChunkedBody
    req_done: bool
    waiting_100: bool
    responding: bool
    keep_alive: bool
    snap: Snapshot
    _loop: asyncio.AbstractEventLoop
    _task: asyncio.Task[Any] | None
    _deadline: float | None
    _watch: asyncio.TimerHandle | None
    _expired: bool
    _opened: float | None

    async def _fill(self, wait: float) -> None:
        """Read more into ``buf``; TimeoutError after ``wait`` seconds without a byte.

        One timer per connection, moved only when a read needs an earlier
        deadline: under load most reads just store a number, where
        asyncio.timeout would create and cancel a timer for each.
        """
        loop = self._loop
        deadline = loop.time() + wait
        self._deadline = deadline
        watch = self._watch
        if watch is None or watch.when() > deadline:
            if watch is not None:
                watch.cancel()
            self._watch = loop.call_at(deadline, self._expire)
        had = len(self.buf)
        stream = self.stream
        try:
            # stream.more(), unrolled: one coroutine fewer to create and resume per read.
            waiter = stream.arm()
            if waiter is not None:
                await waiter
            stream.check()
        except asyncio.CancelledError:
            if not self._expired:
                raise
            self._expired = False
            if self._task is not None:
                self._task.uncancel()
            # A late loop turn can run the read's callback and then the expired timer:
            # what arrived is in the buffer and is served, not dropped with the
            # connection as if it never came.
            if len(self.buf) == had and not stream.eof:
                raise TimeoutError from None
        except OSError as exc:
            raise ClientGone() from exc
        finally:
            self._deadline = None
        if len(self.buf) == had:
            self.eof = True

    def end_if_idle(self) -> None:
        """At drain: a connection waiting for its next request ends now (one in flight finishes first).

        Closing the writer is not enough for an intercepted one: the TLS layer
        waits for the client's close_notify, which a client idling in its pool
        never sends, and the connection held the drain for its whole grace.
        Waking the read as if the idle timeout had passed ends it the way an
        idle connection always ends.
        """
        if self.busy or self.buf or self._deadline is None or self._task is None:
            return  # answering, or a request head is arriving; the loop checks `draining` after it
        self._expired = True
        self._task.cancel()

    def _expire(self) -> None:
        self._watch = None
        deadline = self._deadline
        if deadline is None or self._task is None:
            return  # not reading: the next read arms the timer again
        if self._loop.time() < deadline:
            self._watch = self._loop.call_at(deadline, self._expire)
            return
        self._expired = True
        self._task.cancel()

    async def _next_request(self) -> Head | None:
        """The next request's head, or None when the client is done.

        The head must be whole within ``timeouts.client_header``: for the first
        request counted from the connection's start (accept; the end of an
        intercepted CONNECT's TLS handshake, or its 200 when plain HTTP
        follows), so a socket that never sends a byte is not held for
        ``timeouts.idle``; for the next ones on a
        keep-alive connection from their first byte, the wait before it being
        ``timeouts.idle``.
        """
        config = self.rt.snapshot.config
        t = config.timeouts
        limits = config.limits
        self.req = None
        self.responding = False
        self.req_done = True
        self.waiting_100 = False
        opened, self._opened = self._opened, None
        if opened is not None:
            deadline: float | None = opened + t.client_header
        else:
            deadline = time.monotonic() + t.client_header if self.buf else None
        scanned = 0
        while True:
            # An empty buffer (a keep-alive connection between requests, mostly) holds no head to look for.
            end = head_end(self.buf, max(scanned - 3, 0)) if self.buf else -1
            if end >= 0:
                raw = bytes(self.buf[:end])
                del self.buf[:end]
                self.head = raw[:_HEAD_KEEP]
                return parse_head(raw, limits)
            scanned = len(self.buf)
            if scanned > limits.max_header_bytes:
                self.head = bytes(self.buf[:_HEAD_KEEP])
                raise too_large(self.head)
            if self.eof:
                if self.buf:
                    self.head = bytes(self.buf[:_HEAD_KEEP])
                    raise BadRequest("malformed request (the client closed in the middle of a request head).")
                return None
            if self.server.draining and not self.buf:
                return None
            wait = t.idle if deadline is None else deadline - time.monotonic()
            try:
                await self._fill(max(wait, 0.0))
            except TimeoutError:
                if not self.buf:
                    # Nothing of a request came: an idle keep-alive connection, or one that never
                    # spoke. A graceful close (RFC 9112 §9.5), as nginx does, not a 408: that could
                    # cross a request sent at that instant and be taken for its answer.
                    return None
                raise RequestTimeout(f"the request headers did not arrive within {t.client_header:g} s.") from None
            if deadline is None:
                deadline = time.monotonic() + t.client_header

    def body_at_hand(self) -> bytes | None:
        """The next chunk of the request body if it is already here, else b""; None at its end."""
        if self.waiting_100:
            # RFC 9110 §10.1.1: we answer Expect ourselves and do not forward it.
            self.waiting_100 = False
            self.stream.write(informational(100, b"", []))
        try:
            chunk = self.body.next(self.buf)
        except ChunkedBodyError:
            if self.eof:
                raise ClientGone("the client closed while sending its body") from None
            # A bad chunk size, more data than a chunk declared: the client's fault.
            self.keep_alive = False
            raise BadRequest("the request body is malformed (bad chunked framing).") from None
        if chunk is None:
            self.req_done = True
        return chunk

    async def receive_body(self) -> bytes | None:
        """One chunk of the request body, None at its end.

        Called by the connection's task (buffering a body for a retry) or by
        the upstream connection's sender, which reads a streamed body while
        this task writes the response (RFC 9112 §9.3).
        """
        idle = self.snap.config.timeouts.idle
        while True:
            chunk = self.body_at_hand()
            if chunk is None or chunk:
                return chunk
            if self.eof:
                raise ClientGone("the client closed while sending its body")
            try:
                if asyncio.current_task() is self._task:
                    await self._fill(idle)
                else:
                    await self._fill_aside(idle)
            except TimeoutError:
                raise ClientGone("the client stopped sending its body") from None

    async def _fill_aside(self, wait: float) -> None:
        """``_fill`` for another task than the connection's: the sender of a streamed body.

        The read deadline of ``_fill`` cancels the connection's task, which is
        busy with the response meanwhile: this read has a timeout of its own.
        Cancelled (the response ended first), it leaves the buffer and the
        stream's waiter to the connection's next read.
        """
        had = len(self.buf)
        try:
            async with asyncio.timeout(wait):
                await self.stream.more()
        except TimeoutError:
            # As in _fill: bytes that came in the turn the timer fired are served, not dropped.
            if len(self.buf) == had and not self.stream.eof:
                raise
        except OSError as exc:
            raise ClientGone() from exc
        if len(self.buf) == had:
            self.eof = True
