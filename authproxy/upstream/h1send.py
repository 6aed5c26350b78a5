"""Sending a request body upstream: what of it is at hand leaves with the head, a task of its own sends the rest.

A streamed body keeps flowing while the response comes back: a server may
answer before it has read the whole request and go on reading (RFC 9112 §9.3;
an echo, a transcoder). It stops when the response is complete, the connection
is gone, or the body is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

from authproxy.errors import ProxyError, UpstreamError
from authproxy.upstream.h1parse import DONE, HEAD, ResponseParsing

# What of a streamed body is already at hand leaves with the head up to this much (and the chunk crossing it).
_WITH_HEAD = 256 * 1024


class RequestSending(ResponseParsing):
    """The request-body half of ``H1Connection``: the first write, the sender task, the drain.

    It extends the response half, not beside it: mypyc compiles single inheritance
    (and one interpreted base, asyncio's protocol, which ``H1Connection`` adds).
    """

    authority: str
    closed: bool
    sent: bool
    _loop: asyncio.AbstractEventLoop
    _write_paused: bool
    _sender: asyncio.Task[None] | None

    def abort(self) -> None:
        raise NotImplementedError  # H1Connection's

    def _fail_head(self, err: ProxyError) -> None:
        raise NotImplementedError  # H1Connection's

    def _send_start(
        self, transport: asyncio.Transport, head: bytes, body: AsyncIterable[bytes], length: int | None
    ) -> None:
        """The head, with what of the body is already at hand, in one write; a sender task for the rest.

        Most bodies are whole by then: they need no task and leave with the
        head, as a client would send them. The rest is sent by a task of its
        own: the head wait must not hang on a client that holds its body back
        until it sees an answer, and the body must go on once the answer starts.
        """
        self.sent = False
        ready = getattr(body, "ready", None)
        parts = [head]
        size = 0
        end = False
        try:
            while ready is not None and size < _WITH_HEAD:
                chunk = ready()
                if chunk is None:
                    end = True
                    break
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
        except ProxyError:
            raise
        except Exception as exc:
            raise UpstreamError(f"the request to {self.authority} failed ({type(exc).__name__}).") from None
        left = None if length is None else length - size
        if left is None and size:
            parts.insert(1, b"%x\r\n" % size)
            parts.append(b"\r\n")
        if end and left:
            raise UpstreamError(f"the request to {self.authority} failed (body shorter than declared).")
        if left is not None and left < 0:
            raise UpstreamError(f"the request to {self.authority} failed (body longer than declared).")
        if end and left is None:
            parts.append(b"0\r\n\r\n")
        if size <= 65536:
            transport.write(b"".join(parts))  # one segment, as for a buffered body
        else:
            for part in parts:  # not copied just to be glued to the head
                transport.write(part)
        if end:
            self.sent = True
        else:
            self._sender = self._loop.create_task(self._send_body(body, left))

    async def _send_body(self, body: AsyncIterable[bytes], left: int | None) -> None:
        """The sender task: a failure before the response head is the exchange's, after it the body's."""
        try:
            await self._send_stream(body, left)
        except ProxyError as err:
            if self._phase == HEAD:
                self._fail_head(err)
            else:
                # The upstream must never take a truncated body for a whole
                # request; the response being read then breaks off too.
                self.abort()

    async def _send_stream(self, body: AsyncIterable[bytes], left: int | None) -> None:
        """Send the rest of the body (``left``: bytes of its Content-Length to go, None: chunked).

        It goes on until the body ends, the response is complete, or the connection is gone.
        """
        transport = self.transport
        assert transport is not None
        try:
            async for chunk in body:
                if self._phase == DONE or self.closed or transport.is_closing():
                    # Answered in full (or gone) before the body was all sent: the
                    # rest is not wanted, and the connection is not reused.
                    return
                if not chunk:
                    continue
                if left is None:
                    transport.write(b"".join((b"%x\r\n" % len(chunk), chunk, b"\r\n")))
                else:
                    left -= len(chunk)
                    if left < 0:
                        raise UpstreamError(f"the request to {self.authority} failed (body longer than declared).")
                    transport.write(chunk)
                if self._write_paused:
                    await self._drain()
        except ProxyError:
            raise
        except Exception as exc:
            # Usually the client's body broke; the pipeline reports that one instead.
            raise UpstreamError(f"the request to {self.authority} failed ({type(exc).__name__}).") from None
        if left is None:
            transport.write(b"0\r\n\r\n")
        elif left:
            raise UpstreamError(f"the request to {self.authority} failed (body shorter than declared).")
        self.sent = True

    async def _drain(self) -> None:
        """Wait until the transport takes more, the response is complete, or the connection is gone."""
        while self._write_paused and not self.closed and self._phase != DONE:
            waiter = self._drain_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._drain_waiter = None
