"""One HTTP/1.1 connection to an upstream: an asyncio.BufferedProtocol driving httptools' llhttp parser.

aiohttp's client cost most of a small proxied request's CPU; this does only what
the proxy needs: one request at a time per connection, raw headers as received,
the body handed over as it arrives (bounded by pausing the socket), and an
exact account of whether the connection can carry another request.

Its two halves have modules of their own: sending a streamed request body
(h1send.py, ``RequestSending``) and the parser's callbacks that read the
response (h1parse.py, ``ResponseParsing``); this one holds the connection, the
exchange and its timers.

Errors before the response head are ``ProxyError``s naming the upstream (the
pool decides whether a ``NoAnswer`` on a reused connection is resent). Errors
after it end the body with ``UpstreamBodyError`` (see h1errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import cast

import httptools

from authproxy.errors import ProxyError, UpstreamError, UpstreamTimeout, UpstreamTLSError, one_line
from authproxy.http1.h1errors import NoAnswer, UpstreamBodyError
from authproxy.http1.h1message import Body, Key, Response
from authproxy.transport import recvbuf
from authproxy.transport.lost import LOST
from authproxy.upstream.h1parse import BODY, DONE, HEAD, IDLE, new_parser, wake
from authproxy.upstream.h1send import RequestSending


class H1Connection(RequestSending):
    """One upstream connection; the pool's, reused for one exchange after another.

    Not an asyncio protocol itself: ``wire()`` is its protocol. With no interpreted
    base class, mypyc compiles it as a native class (its fields are slots, its calls
    direct); a native class under an interpreted subclass is what mypyc cannot free
    safely once something holds a weak reference to it.
    """

    # Set on a connection of its own that asks to switch protocols (upgrade.py): called, on
    # the 101, with the transport and the bytes that came after the 101's head.
    on_switch: Callable[[asyncio.Transport, bytes], None] | None = None

    def __init__(
        self,
        key: Key,
        authority: str,
        max_head: int,
        idle_timeout: float,
        on_release: Callable[[H1Connection], None],
        on_lost: Callable[[H1Connection], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.key = key
        self.authority = authority
        self._max_head = max_head
        self._idle_timeout = idle_timeout
        self._on_release = on_release
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._parser = new_parser(self)
        self.closed = False
        self.idle_since = 0.0
        self._phase = IDLE
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # A streamed body on its way (see _send_body); finished, once the connection is reused.
        self._sender: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tls = False
        self._exchanges = 0  # requests sent on this connection: the first one's refusal may be TLS's
        self._reset()

    def _reset(self) -> None:
        """Per-exchange state, fresh for the next request."""
        self.reusable = True  # nothing unexpected seen on the wire
        self.sent = True  # the whole request went out
        self._is_head = False
        self._head_only = False
        self._interim = False
        self._got_bytes = False
        self._head_size = 0  # bytes received while the head is incomplete
        self._fields_size = 0  # the head's fields, as parsed
        self._too_large = False
        self._framed = False
        self._keep_alive = False
        self._status = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_waiter: asyncio.Future[None] | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._exc: UpstreamBodyError | None = None
        self._malformed = ""  # why the body was refused, when it was
        self._paused = False
        self._last_read = 0.0
        self._head_timeout = 0.0
        self._head_due = 0.0

    # -- the exchange ------------------------------------------------------

    async def exchange(
        self, head: bytes, body: Body, length: int | None, is_head: bool, head_timeout: float
    ) -> Response:
        """Send one request (head already serialized) and wait for the response head."""
        transport = self.transport
        assert transport is not None and self._phase == IDLE
        self._phase = HEAD
        self._exchanges += 1
        self._is_head = is_head
        self._head_timeout = head_timeout
        loop = self._loop
        waiter = self._head_waiter = loop.create_future()
        # The timer outlives the exchange (see _on_timer): moved only when this
        # deadline comes before the one it is set for, not created per request.
        due = self._head_due = loop.time() + head_timeout
        timer = self._timer
        if timer is None or timer.when() > due:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(due, self._on_timer)
        try:
            if body is None:
                transport.write(head)
            elif isinstance(body, bytes):
                # One write, so a small request leaves in one segment; a large
                # buffered body is not copied just to be glued to the head.
                if len(body) <= 65536:
                    transport.write(head + body)
                else:
                    transport.write(head)
                    transport.write(body)
            else:
                self._send_start(transport, head, body, length)
            await waiter
            if self._exc is not None and not self._chunks:
                # Broken before a body byte came: the client can still get a clean 502.
                what = f"sent a malformed response ({self._malformed})" if self._malformed else "broke off its response"
                raise UpstreamError(f"{self.authority} {what}.")
        except BaseException:
            # Cancelled, or the client's body broke: the upstream must never
            # take a truncated body for a whole request.
            self.abort()
            raise
        finally:
            self._head_waiter = None
        return Response(self._status, self._reason, self._headers, self, self._on_release)

    @property
    def has_data(self) -> bool:
        return bool(self._chunks)

    def take(self) -> bytes:
        """Everything buffered, in one piece; reading resumes if it was paused."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._buffered = 0
        if self._paused and not self.closed:
            self._paused = False
            self._last_read = self._loop.time()  # the stall clock restarts with the socket
            assert self.transport is not None
            self.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        """The body bytes buffered so far (waiting for some); b"" at the end."""
        while True:
            if self._chunks:
                return self.take()
            if self._phase == DONE:
                return b""
            if self._exc is not None:
                # A fresh instance: the stored one would hold this frame (and so
                # this connection) in a cycle through its traceback.
                raise UpstreamBodyError(*self._exc.args)
            waiter = self._body_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._body_waiter = None

    def finish(self) -> bool:
        """After the response is released: True when this connection may carry another request."""
        ok = self._phase == DONE and self.sent and self._keep_alive and self.reusable and not self.closed
        if ok:
            if self._paused:  # the whole body came, unread (a 401 before its retry, say)
                assert self.transport is not None
                self.transport.resume_reading()
            self._phase = IDLE
            self._reset()
        return ok

    def close(self) -> None:
        """Graceful close (TLS sends close_notify), for a connection with nothing in flight."""
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection: what is in flight on it can no longer be trusted."""
        self.reusable = False
        if self._exc is None:
            self._exc = UpstreamBodyError(f"{self.authority}: the connection was cut")
        sender, self._sender = self._sender, None
        if sender is not None and not sender.done() and sender is not asyncio.current_task():
            # Wherever it waits (the client's next chunk, mostly), it reads no more.
            sender.cancel()
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # -- timers ------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        if self._phase == HEAD:
            if self._loop.time() < self._head_due:
                # Set for an earlier exchange: this one's deadline is later.
                self._timer = self._loop.call_at(self._head_due, self._on_timer)
                return
            self._fail_head(UpstreamTimeout(f"{self.authority} did not answer within {self._head_timeout:g} s."))
        elif self._phase == BODY:
            # One timer per stalled body, not one per chunk: it checks when data
            # last came, and a socket we paused ourselves is not a stall.
            now = self._loop.time()
            due = now + self._idle_timeout if self._paused else self._last_read + self._idle_timeout
            if due > now:
                self._timer = self._loop.call_at(due, self._on_timer)
            else:
                self._exc = UpstreamBodyError(f"{self.authority} sent no body data for {self._idle_timeout:g} s")
                self.abort()
                wake(self._body_waiter)

    # -- protocol callbacks --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._tls = transport.get_extra_info("sslcontext") is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # asyncio sets it too; other loops and wrapped transports may not.
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        # The parser holds our bound methods: without this the connection, and
        # any body it buffered, would wait for the cycle collector to be freed.
        self._parser = None
        # The loop's SSL layer keeps our bound buffer_updated (lost.py): let go of its transport.
        self.transport = LOST
        self._stop_timer()
        phase = self._phase
        if phase == HEAD:
            if self._refused_after_handshake(exc):
                pass
            elif self._got_bytes:
                self._fail_head(UpstreamError(f"{self.authority} closed the connection without answering."))
            else:
                self._fail_head(NoAnswer(f"{self.authority} closed the connection without answering."))
        elif phase == BODY:
            if exc is None and self._exc is None and not self._framed:
                self._phase = DONE  # a body delimited by the close (RFC 9112 §6.3 rule 8) is complete
                self._keep_alive = False
            elif self._exc is None:
                self._exc = UpstreamBodyError(f"{self.authority} closed the connection in the middle of the body")
            wake(self._body_waiter)
        wake(self._drain_waiter)
        self._on_lost(self)

    def _refused_after_handshake(self, exc: Exception | None) -> bool:
        """A TLS connection refused before its first answer: fail the head with ``upstream_tls_error``.

        In TLS 1.3 the client's handshake is over before the server has judged
        the client's certificate (RFC 8446 §4.4.2.4): a server that wants one it
        did not get, or refuses the one presented, sends an alert (or, as
        asyncio's servers do, just closes) after the handshake, so the refusal
        arrives here rather than at connect time.
        """
        if self._exchanges != 1 or not self._tls:
            return False  # a pooled connection the server let go of: NoAnswer, resent when safe
        if isinstance(exc, ssl.SSLError):
            why = str(exc.reason or exc).lower().replace("_", " ")
            self._fail_head(UpstreamTLSError(f"TLS with {self.authority} failed: {why}."))
            return True
        if not self._got_bytes:
            self._fail_head(
                UpstreamTLSError(
                    f"TLS with {self.authority} failed: it closed the connection after the handshake without "
                    "answering (does it require a client certificate, or refuse the one presented?)."
                )
            )
            return True
        return False

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        wake(self._drain_waiter)

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost decides what the EOF meant

    def data_received(self, data: bytes | memoryview) -> None:
        phase = self._phase
        if phase == HEAD:
            self._got_bytes = True
            self._head_size += len(data)
        elif phase == BODY:
            self._last_read = self._loop.time()
        elif phase == IDLE:
            # An idle connection the upstream speaks on (a 408 before closing,
            # say) is out of step with us: never send on it again.
            self.reusable = False
            assert self.transport is not None
            self.transport.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as up:
            self._switch(bytes(data[up.args[0] :]))
        except httptools.HttpParserError as exc:
            self._bad(one_line(str(exc))[:100])
        if self._phase == HEAD:
            # Either a head still coming past the bound, or one that came whole
            # in a single read and was measured field by field.
            if self._head_size > self._max_head or self._too_large:
                self._bad("the response head is too large")
        elif self._phase == BODY and not self.closed:
            # Armed only for a body still coming: a small response never pays for it.
            now = self._last_read = self._loop.time()
            timer = self._timer
            if timer is None or timer.when() > now + self._idle_timeout:
                if timer is not None:
                    timer.cancel()
                self._timer = self._loop.call_at(now + self._idle_timeout, self._on_timer)

    def _switch(self, early: bytes) -> None:
        """A 101 (RFC 9110 §15.2.2): what follows its head, ``early`` on, is the new protocol's."""
        switch = self.on_switch
        if switch is None or self._phase != HEAD or self._parser.get_status_code() != 101:
            self._bad("it switched protocols unasked")
            return
        self._status, self._phase, self.reusable = 101, DONE, False
        self._stop_timer()
        assert self.transport is not None
        switch(self.transport, early)  # the transport is the switcher's from here (upgrade.py)
        wake(self._head_waiter)

    def _bad(self, what: str) -> None:
        """The upstream's bytes are not HTTP we accept."""
        phase = self._phase
        if phase == HEAD:
            self._fail_head(UpstreamError(f"{self.authority} sent a malformed response ({what})."))
        elif phase == BODY:
            self._malformed = what
            self._exc = UpstreamBodyError(f"{self.authority} sent a malformed body")
            self.abort()
            wake(self._body_waiter)
        else:
            self.reusable = False  # bytes after a complete response: never reuse

    def _fail_head(self, err: ProxyError) -> None:
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(err)
        self._phase = DONE
        self.abort()
        wake(self._drain_waiter)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Wire(asyncio.BufferedProtocol):
    """The asyncio protocol of one ``H1Connection``: each callback handed to it.

    Bytes arrive in the process's shared buffer (recvbuf.py): the parser copies
    what it hands on (head fields, body chunks) before ``buffer_updated`` returns.
    """

    __slots__ = ("conn",)

    def __init__(self, conn: H1Connection) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()

    def eof_received(self) -> bool:
        return self.conn.eof_received()

    def get_buffer(self, sizehint: int) -> memoryview:
        return recvbuf.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.data_received(recvbuf.VIEW[:nbytes])
