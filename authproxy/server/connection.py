"""The client-facing HTTP/1.1 server: one Connection per client (the accept loop is listener's).

This module owns the sockets, the timeouts, the request loop (keep-alive,
pipelining, Expect) and the choice between the three request forms
(absolute → plain, origin → gateway, CONNECT → tunnel or interception, which
``connect.py`` carries out, as it does a protocol switch).
Reading a request off the socket, head and body under their timeouts, is
``reading.py``'s (``RequestReading``, which ``Connection`` extends); parsing
it is h1request's, framing a response h1response's; everything about
credentials happens in ``pipeline.handle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

from authproxy import pipeline
from authproxy.access import User
from authproxy.errors import BadRequest, ProxyError, render
from authproxy.http1.h1request import ChunkedBody, Head, LengthBody, check_framing, check_size, log_path
from authproxy.http1.h1response import ResponseFramer, ResponseFramingError, raw_response, reason_phrase
from authproxy.messages import Origin, ProxyRequest, Reply, RequestBody
from authproxy.ops import accesslog
from authproxy.ops.accesslog import AccessRecord
from authproxy.server import connect
from authproxy.server.reading import ClientGone, RequestReading, Server
from authproxy.transport.stream import ClientStream

log = logging.getLogger("authproxy.server")

_LINGER = 2.0  # how long a closing connection reads what the client still sends


class Connection(RequestReading):
    """One client connection: a loop of requests (keep-alive, pipelining), each head parsed on its own."""

    def __init__(self, server: Server, stream: ClientStream) -> None:
        self.server = server
        self.rt = server.rt
        self.stream = stream
        self.busy = False
        # Read and not yet parsed (the next head, body bytes, a tunnel's early bytes): the stream's own buffer.
        self.buf = stream.buf
        # Inside an intercepted CONNECT: where the tunnel goes (scheme https over TLS, http when plain).
        self.tunnel: Origin | None = None
        self.head = b""  # the current head's raw bytes (bounded), to explain a refusal
        self.user: User | None = None  # who proved themselves with Proxy-Authorization
        self.eof = False  # the client has closed its sending side
        # The exchange in progress: its head, its body, whether we started answering.
        self.req: Head | None = None
        self.body: LengthBody | ChunkedBody = LengthBody(0)
        self.req_done = True  # the request's body has been read to its end
        self.waiting_100 = False  # Expect: 100-continue, not yet answered
        self.responding = False
        self.keep_alive = True
        # The snapshot of the request in progress (the one in force when it started), for its body's reads.
        self.snap = self.rt.snapshot
        # The read deadline (see _fill): one timer, checked when it fires.
        # The stream's, rather than asked for again (each ask is a getpid() system call).
        self._loop = stream.loop
        self._task = stream.task
        self._deadline: float | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._expired = False
        # When the connection (or its TLS layer) became ready for its first request, whose
        # head must then be whole within timeouts.client_header; None after that request.
        self._opened: float | None = None

    # -- writing ---------------------------------------------------------

    def framer(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> ResponseFramer:
        req = self.req
        assert req is not None
        self.responding = True
        self.waiting_100 = False  # a final answer ends the wait (RFC 9110 §10.1.1)
        framer = ResponseFramer(status, reason, headers, req.method, req.version, self.keep_alive)
        self.keep_alive = framer.keep_alive
        return framer

    async def _send_reply(self, reply: Reply, rec: AccessRecord) -> None:
        headers = reply.headers
        if self.server.draining:
            headers = [*headers, (b"connection", b"close")]
        framer = self.framer(reply.status, reply.reason, headers)
        # The head waits for the first chunk so that a small response leaves in
        # one send: each transport.write() is a syscall when the buffer is empty.
        pending: bytes | None = framer.head
        if reply.body is not None and not framer.bodyless:
            async for chunk in reply.body:
                if chunk:
                    rec.bytes_out += len(chunk)
                    data = (pending or b"") + framer.data(chunk)
                    if framer.complete:
                        # The last byte of a sized body: no wait for the body's end to be
                        # signalled (one turn of the loop per response), the pool learns it on release.
                        self.stream.write(data)
                        pending = None
                        break
                    self.stream.write(data)
                    pending = b""
                    if not self.stream.writable:
                        await self._drain()
        if pending is not None:
            self.stream.write(pending + framer.end())
        if not self.stream.writable:
            await self._drain()

    async def _drain(self) -> None:
        """Wait for the client to take what was written; its reset is the client's going, not the upstream's."""
        try:
            await self.stream.drain()
        except OSError as exc:
            raise ClientGone("the client went away during the response") from exc

    async def _send_error(self, err: ProxyError, rec: AccessRecord) -> None:
        status, headers, body = render(err)
        rec.status, rec.error = status, err.code
        if self.req is None or not self.req_done or err.status in (400, 408, 431, 501, 503):
            headers.append((b"connection", b"close"))
            self.keep_alive = False
        if self.responding:
            raise ClientGone("the response had already started")
        if self.req is None:
            # No request head to answer: a refusal of the head itself.
            self.stream.write(raw_response(status, headers, body))
        else:
            framer = self.framer(status, reason_phrase(status), headers)
            if framer.bodyless:
                self.stream.write(framer.head + framer.end())
            else:
                rec.bytes_out += len(body)
                self.stream.write(framer.head + framer.data(body) + framer.end())
        with contextlib.suppress(OSError):
            await self.stream.drain()

    # -- the loop --------------------------------------------------------

    async def run(self) -> None:
        try:
            await self.serve_requests()
        except (ClientGone, OSError, ResponseFramingError):
            pass
        finally:
            self.busy = False
            if self._watch is not None:
                self._watch.cancel()
                self._watch = None
            await self._close()

    async def _close(self) -> None:
        """Close so that what was sent last is read, not destroyed by a reset.

        Closing a socket with unread bytes in it makes the kernel answer with
        RST, and a client that just reused the idle connection then sees
        ECONNRESET instead of a clean end. A half-close (FIN) first, then
        reading until the client closes too (bounded), turns that race into
        the EOF that clients recognise and retry (RFC 9112 §9.3.1).
        """
        w = self.stream
        loop = self._loop
        # Bounded by timers of the loop's, not asyncio.timeout: that asks for the running loop
        # and the current task (a getpid() system call each) twice per bound, per connection.
        if not w.is_closing():
            if w.can_write_eof():
                # Past the linger, closing ends the read: the loss wakes it as an EOF.
                linger = loop.call_later(_LINGER, w.close)
                try:
                    with contextlib.suppress(OSError, ConnectionError):
                        w.write_eof()
                        while await w.read():
                            pass
                finally:
                    linger.cancel()
            w.close()
        # A TLS peer that never answers our close_notify would hold this for
        # the loop's TLS shutdown timeout (30 s): cut it after the linger.
        cut = loop.call_later(_LINGER, w.transport.abort)
        try:
            with contextlib.suppress(OSError, ConnectionError, ssl.SSLError):
                await w.wait_closed()
        finally:
            cut.cancel()

    async def serve_requests(self, opened: float | None = None) -> None:
        """Requests one after another on this connection (or TLS layer, or tunnel) until it ends.

        ``opened``: when the first request's head became due (``time.monotonic()``), if not now.
        """
        self._opened = time.monotonic() if opened is None else opened
        while True:
            try:
                req = await self._next_request()
            except ProxyError as err:
                if self.tunnel is not None and err.status == 400:
                    err.detail = "the bytes inside the intercepted connection are not a valid HTTP/1.1 request."
                await self.refuse(err)
                return
            if req is None:
                return
            self.req, self.keep_alive = req, req.keep_alive
            self.req_done = False  # until the body's end is read, even an empty one's: an error before closes
            keep = await self._one(req)
            if not keep or self.server.draining or not (self.keep_alive and self.req_done):
                return

    async def refuse(self, err: ProxyError) -> None:
        """Answer a request that never got as far as a request head, and log it like any other."""
        self.req, self.responding = None, False
        tun = self.tunnel
        mode = "intercept" if tun is not None and tun.scheme == "https" else "plain"
        rec = AccessRecord(method="-", mode=mode, host=tun.authority if tun else "-", path="-")
        try:
            await self._send_error(err, rec)
        finally:
            accesslog.emit(rec)
            self.rt.metrics.request_done(rec)

    async def _one(self, req: Head) -> bool:
        """Serve one request; False when the connection must close after it.

        Longer than a screen on purpose: the request's whole lifecycle (checks, pipeline,
        reply, and every way it can end, each with its access-log record) in one place,
        so it reads top to bottom, without an extra call per request on the hot path.
        """
        self.busy = True
        started = time.perf_counter()
        snap = self.snap = self.rt.snapshot  # kept to the end, whatever a reload does
        method = req.method.decode("ascii", "replace")
        target = req.target.decode("latin-1")
        # The path is the pipeline's to log once it understood the target; log_path only if it never did.
        rec = AccessRecord(method, "plain", "-", "")  # positional: a class call with keywords builds a dict
        body: RequestBody | None = None
        try:
            check_framing(req)
            check_size(req, snap.config.limits)
            length = req.content_length()
            self.body = ChunkedBody() if length is None else LengthBody(length)
            self.waiting_100 = req.expect_continue
            if self.tunnel is None and snap.auth is not None:
                # Inside an intercepted CONNECT the user is the one the CONNECT proved.
                self.user = await snap.auth.check(req.headers)
            if method == "CONNECT":
                if self.tunnel is not None:
                    raise BadRequest("CONNECT inside an intercepted connection is not allowed.")
                return await connect.connect(self, target, snap, rec)
            body = RequestBody(self, length)
            preq = ProxyRequest(method, target, req.headers, body, req.version.decode("ascii"), self.tunnel, self.user)
            reply = await pipeline.handle(preq, self.rt, snap, rec)
            rec.status = reply.status
            if reply.upgraded is not None:
                rec.bytes_in = body.bytes_in
                return await connect.switch(self, snap, reply, preq, rec)
            try:
                await self._send_reply(reply, rec)
            finally:
                reply.release()  # a body still on its way upstream stops here (h1client)
                rec.bytes_in = body.bytes_in  # counted once the response is done: it goes on meanwhile
            if not self.req_done:
                if length == 0 and not self.waiting_100:
                    self.req_done = True  # a request without a body: nothing left to read (_finish_body's answer)
                else:
                    return await self._finish_body(body)
        except ProxyError as err:
            err.with_route(rec.route)
            await self._send_error(err, rec)
        except ClientGone:
            rec.error = "client_gone"
            self.stream.transport.abort()
            return False
        except (ResponseFramingError, OSError) as exc:
            # The upstream's body broke off mid-way (or lied about its length):
            # the only honest signal left is to cut the client connection.
            log.debug("aborting a response: %s", type(exc).__name__)
            rec.error = "upstream_broke_off"
            if body is not None and body.error is not None:
                # The client's body broke while the response streamed; the upstream was cut for it.
                rec.error = body.error.code if isinstance(body.error, ProxyError) else "client_gone"
            self.stream.transport.abort()
            return False
        except Exception as exc:
            if not _is_upstream_body_error(exc):
                log.exception("internal error while serving a request")
            rec.error = "upstream_broke_off" if _is_upstream_body_error(exc) else "internal_error"
            self.stream.transport.abort()
            return False
        finally:
            rec.ms = (time.perf_counter() - started) * 1000
            if not rec.path:
                rec.path = log_path(target)
            accesslog.emit(rec)
            self.rt.metrics.request_done(rec)
            self.busy = False
        return True

    async def _finish_body(self, body: RequestBody) -> bool:
        """Read what is left of a request body the upstream did not want, if it is small.

        Keep-alive needs the whole request off the wire; a large unread body
        is cheaper to drop with the connection than to read and discard.
        """
        left = None if body.length is None else body.length - body.bytes_in
        if left is None or left > 65536 or self.waiting_100:
            return False
        while not self.req_done:
            if await self.receive_body() is None:
                break
        return self.req_done


def _is_upstream_body_error(exc: BaseException) -> bool:
    import sys

    # An aiohttp exception needs aiohttp loaded: a proxy that never loaded it must not load it here.
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None:
        return isinstance(exc, TimeoutError)
    return isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError))
