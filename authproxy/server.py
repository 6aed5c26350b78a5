"""The client-facing HTTP/1.1 server: accept loop, one h11 connection per client.

h11 is strict and sans-IO; this module owns the sockets, the timeouts, the
request framing checks that h11 leaves to us, and the choice between the
three request forms (absolute → plain, origin → gateway, CONNECT → tunnel or
interception). Everything about credentials happens in ``pipeline.handle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time

import h11

from . import accesslog, pipeline
from .access import User
from .accesslog import AccessRecord
from .config import Limits
from .errors import (
    BadRequest,
    Denied,
    HeadersTooLarge,
    NotImplementedByProxy,
    ProxyError,
    RequestTimeout,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    UriTooLong,
    from_status_hint,
    one_line,
    render,
)
from .hosts import HostError, format_authority, normalize_host, parse_port, split_hostport
from .memory import Trimmer
from .messages import Origin, ProxyRequest, Reply, RequestBody
from .runtime import Runtime, Snapshot
from .tunnel import pump_both
from .upgrade import is_upgrade, switch_headers

log = logging.getLogger("authproxy.server")

_READ = 256 * 1024
_HEAD_KEEP = 16 * 1024  # raw head bytes kept to explain a refusal
_LINGER = 2.0  # how long a closing connection reads what the client still sends


class ClientGone(Exception):
    """The client closed or stalled; nothing more can be said to it."""


class Connection:
    """One client connection: a loop of requests over h11 (keep-alive, pipelining)."""

    def __init__(self, server: ProxyServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.rt = server.rt
        self.reader = reader
        self.writer = writer
        self.busy = False
        self.h11 = self._new_h11()
        # Inside an intercepted CONNECT: where the tunnel goes.
        self.tunnel: Origin | None = None
        self.head = b""
        self.user: User | None = None  # who proved themselves with Proxy-Authorization
        self.eof = False  # the client has closed its sending side

    def _new_h11(self) -> h11.Connection:
        limits = self.rt.snapshot.config.limits
        return h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)

    # -- reading ---------------------------------------------------------

    async def _fill(self, wait: float) -> bytes:
        try:
            data = await asyncio.wait_for(self.reader.read(_READ), wait)
        except TimeoutError:
            raise
        except OSError as exc:
            raise ClientGone() from exc
        if not data:
            self.eof = True
        self.h11.receive_data(data)
        return data

    async def _next_request(self) -> h11.Request | None:
        """The next request's head, or None when the client is done."""
        t = self.rt.snapshot.config.timeouts
        deadline = None
        # The head's raw bytes, kept (bounded) to say precisely why h11 refused one.
        self.head = bytes(self.h11.trailing_data[0][:_HEAD_KEEP])
        if self.head:
            deadline = time.monotonic() + t.client_header
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Request):
                return event
            if event is h11.NEED_DATA:
                if self.server.draining and deadline is None:
                    return None
                wait = t.idle if deadline is None else deadline - time.monotonic()
                try:
                    data = await self._fill(max(wait, 0.0))
                    if len(self.head) < _HEAD_KEEP:
                        self.head += data[: _HEAD_KEEP - len(self.head)]
                except TimeoutError:
                    if deadline is None:
                        return None  # an idle keep-alive connection: close quietly
                    raise RequestTimeout(f"the request headers did not arrive within {t.client_header:g} s.") from None
                if deadline is None:
                    deadline = time.monotonic() + t.client_header
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            # Anything else between requests is a protocol error h11 has flagged.
            return None

    async def _receive_body(self) -> bytes | None:
        """One chunk of the request body, None at its end."""
        if self.h11.they_are_waiting_for_100_continue:
            # RFC 9110 §10.1.1: we answer Expect ourselves and do not forward it.
            self._write(h11.InformationalResponse(status_code=100, headers=[]))
        idle = self.rt.snapshot.config.timeouts.idle
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:
                if self.eof:
                    # h11 calls an end of stream mid-body a protocol error; it is a client gone.
                    raise ClientGone("the client closed while sending its body") from None
                # A bad chunk size, more data than a chunk declared: the client's fault.
                raise BadRequest("the request body is malformed (bad chunked framing).") from None
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                return None
            if event is h11.NEED_DATA:
                try:
                    await self._fill(idle)
                except TimeoutError:
                    raise ClientGone("the client stopped sending its body") from None
                continue
            raise ClientGone("the client closed while sending its body")

    # -- writing ---------------------------------------------------------

    def _write(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            self.writer.write(data)

    async def _send_reply(self, reply: Reply, rec: AccessRecord, head: bool) -> None:
        headers = reply.headers
        if self.server.draining:
            headers = [*headers, (b"connection", b"close")]
        # The head waits for the first chunk so that a small response leaves in
        # one send: each transport.write() is a syscall when the buffer is empty.
        pending = self.h11.send(h11.Response(status_code=reply.status, headers=headers, reason=reply.reason)) or b""
        if reply.body is not None and not head:
            async for chunk in reply.body:
                if chunk:
                    rec.bytes_out += len(chunk)
                    self.writer.write(pending + (self.h11.send(h11.Data(data=chunk)) or b""))
                    pending = b""
                    await self.writer.drain()
        self.writer.write(pending + (self.h11.send(h11.EndOfMessage()) or b""))
        await self.writer.drain()

    async def _send_error(self, err: ProxyError, rec: AccessRecord, head: bool) -> None:
        status, headers, body = render(err)
        rec.status, rec.error = status, err.code
        if self.h11.their_state is not h11.DONE or err.status in (400, 408, 431, 501, 503):
            headers.append((b"connection", b"close"))
        if self.h11.our_state is h11.SEND_RESPONSE:
            self._write(h11.Response(status_code=status, headers=headers))
            if not head:
                rec.bytes_out += len(body)
                self._write(h11.Data(data=body))
            self._write(h11.EndOfMessage())
        elif self.h11.our_state in (h11.IDLE, h11.ERROR) or self.h11.their_state is h11.ERROR:
            # h11 refuses to speak after a protocol error: write the answer by hand.
            self.writer.write(_raw_response(status, headers, b"" if head else body))
        else:
            raise ClientGone("the response had already started")
        with contextlib.suppress(OSError):
            await self.writer.drain()

    # -- the loop --------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._serve_requests()
        except (ClientGone, OSError, h11.LocalProtocolError, h11.RemoteProtocolError):
            pass
        finally:
            self.busy = False
            await self._close()

    async def _close(self) -> None:
        """Close so that what was sent last is read, not destroyed by a reset.

        Closing a socket with unread bytes in it makes the kernel answer with
        RST, and a client that just reused the idle connection then sees
        ECONNRESET instead of a clean end. A half-close (FIN) first, then
        reading until the client closes too (bounded), turns that race into
        the EOF that clients recognise and retry (RFC 9112 §9.3.1).
        """
        w = self.writer
        if not w.is_closing():
            if w.can_write_eof():
                with contextlib.suppress(OSError, TimeoutError, ConnectionError):
                    w.write_eof()
                    async with asyncio.timeout(_LINGER):
                        while await self.reader.read(_READ):
                            pass
            w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()

    async def _serve_requests(self) -> None:
        """Requests one after another on this connection (or TLS layer) until it ends."""
        while True:
            try:
                event = await self._next_request()
            except h11.RemoteProtocolError as exc:
                err = _refusal(exc, self.head)
                if self.tunnel is not None and err.status == 400:
                    err.detail = "the bytes inside the intercepted connection are not a valid HTTP/1.1 request."
                await self._refuse(err)
                return
            except RequestTimeout as err:
                await self._refuse(err)
                return
            if event is None:
                return
            keep = await self._one(event)
            if not keep or self.server.draining:
                return
            if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                self.h11.start_next_cycle()
            else:
                return

    async def _refuse(self, err: ProxyError) -> None:
        """Answer a request that never got as far as a request head, and log it like any other."""
        rec = AccessRecord(method="-", mode="intercept" if self.tunnel else "plain", host="-", path="-")
        try:
            await self._send_error(err, rec, False)
        finally:
            accesslog.emit(rec)
            self.rt.metrics.request_done(rec)

    async def _one(self, event: h11.Request) -> bool:
        """Serve one request; False when the connection must close after it."""
        self.busy = True
        started = time.perf_counter()
        snap = self.rt.snapshot  # kept to the end, whatever a reload does
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("latin-1")
        rec = AccessRecord(method=method, mode="plain", host="-", path=_log_path(target))
        head = method == "HEAD"
        try:
            _check_framing(event)
            _check_size(event, snap.config.limits)
            if self.tunnel is None and snap.auth is not None:
                # Inside an intercepted CONNECT the user is the one the CONNECT proved.
                self.user = await snap.auth.check(list(event.headers.raw_items()))
            if method == "CONNECT":
                if self.tunnel is not None:
                    raise BadRequest("CONNECT inside an intercepted connection is not allowed.")
                return await self._connect(target, snap, rec)
            body = RequestBody(self._receive_body, _content_length(event))
            req = ProxyRequest(
                method,
                target,
                list(event.headers.raw_items()),
                body,
                event.http_version.decode("ascii"),
                self.tunnel,
                self.user,
            )
            reply = await pipeline.handle(req, self.rt, snap, rec)
            rec.status = reply.status
            rec.bytes_in = body.bytes_in
            if reply.upgraded is not None:
                return await self._switch(reply, req, rec)
            try:
                await self._send_reply(reply, rec, head)
            finally:
                reply.release()
            if self.h11.their_state is h11.SEND_BODY:
                return await self._finish_body(body)
        except ProxyError as err:
            err.with_route(rec.route)
            await self._send_error(err, rec, head)
        except ClientGone:
            rec.error = "client_gone"
            self.writer.transport.abort()
            return False
        except (h11.LocalProtocolError, OSError) as exc:
            # The upstream's body broke off mid-way (or lied about its length):
            # the only honest signal left is to cut the client connection.
            log.debug("aborting a response: %s", type(exc).__name__)
            rec.error = "upstream_broke_off"
            self.writer.transport.abort()
            return False
        except Exception as exc:
            if not _is_upstream_body_error(exc):
                log.exception("internal error while serving a request")
            rec.error = "upstream_broke_off" if _is_upstream_body_error(exc) else "internal_error"
            self.writer.transport.abort()
            return False
        finally:
            rec.ms = (time.perf_counter() - started) * 1000
            accesslog.emit(rec)
            self.rt.metrics.request_done(rec)
            self.busy = False
        return True

    async def _switch(self, reply: Reply, req: ProxyRequest, rec: AccessRecord) -> bool:
        """Relay the upstream's 101, then pump bytes both ways until either side closes."""
        up = reply.upgraded
        assert up is not None
        try:
            while self.h11.their_state is h11.SEND_BODY:  # h11 sends a 101 only after the request
                if await self._receive_body() is None:
                    break
            value = is_upgrade(req.headers) or b"websocket"
            self._write(
                h11.InformationalResponse(status_code=101, headers=switch_headers(reply, value), reason=reply.reason)
            )
            if up.early:
                self.writer.write(up.early)
            client_early = self.h11.trailing_data[0]
            if client_early:
                up.writer.write(client_early)
            idle = self.rt.snapshot.config.timeouts.idle
            bytes_in, bytes_out = await pump_both((self.reader, self.writer), (up.reader, up.writer), idle)
            rec.bytes_in += bytes_in + len(client_early)
            rec.bytes_out += bytes_out + len(up.early)
        finally:
            up.writer.close()
        return False

    async def _finish_body(self, body: RequestBody) -> bool:
        """Read what is left of a request body the upstream did not want, if it is small.

        Keep-alive needs the whole request off the wire; a large unread body
        is cheaper to drop with the connection than to read and discard.
        """
        left = None if body.length is None else body.length - body.bytes_in
        if left is None or left > 65536 or self.h11.they_are_waiting_for_100_continue:
            return False
        while self.h11.their_state is h11.SEND_BODY:
            if await self._receive_body() is None:
                break
        return self.h11.their_state is h11.DONE

    async def _connect(self, target: str, snap: Snapshot, rec: AccessRecord) -> bool:
        """CONNECT: interception for hosts a route matches, a blind tunnel for the rest."""
        host, port = _connect_target(target)
        rec.mode, rec.host, rec.path = "tunnel", format_authority(host, port), "-"
        matched = snap.table.candidates(host, port, 443)
        if matched:
            rec.route = matched[0].name if len(matched) == 1 else "*"
            return await self._intercept(host, port, rec)
        if snap.config.unmatched == "deny":
            raise Denied(f"{rec.host} matches no route and `unmatched` is deny.")
        t = snap.config.timeouts
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), t.connect)
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {rec.host} took longer than {t.connect:g} s.") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {rec.host}: {exc.strerror or type(exc).__name__}.") from None
        self._write(h11.Response(status_code=200, headers=[], reason=b"Connection established"))
        rec.status = 200
        early = self.h11.trailing_data[0]
        if early:
            up_writer.write(early)
        tunnels = self.rt.metrics.tunnels.labels("tunnel")
        tunnels.inc()
        try:
            bytes_in, bytes_out = await pump_both((self.reader, self.writer), (up_reader, up_writer), t.idle)
        finally:
            tunnels.dec()
        rec.bytes_in, rec.bytes_out = bytes_in + len(early), bytes_out
        return False

    async def _intercept(self, host: str, port: int, rec: AccessRecord) -> bool:
        """Answer 200, be ``host`` over TLS with a leaf from our CA, then serve the requests inside."""
        rec.mode = "intercept"
        ca = self.rt.ca
        if ca is None:
            raise NotImplementedByProxy(f"{rec.host} matches a route, but interception is not enabled.")
        ctx = await ca.context_for(host)
        if self.h11.trailing_data[0]:
            # Bytes sent before our 200 would be lost by start_tls
            # (python/cpython#142352); a conforming client waits for the 200.
            raise BadRequest("the client sent data before the CONNECT was answered.")
        self._write(h11.Response(status_code=200, headers=[], reason=b"Connection established"))
        rec.status = 200
        # No await between the 200 and start_tls: nothing may sit in the reader.
        try:
            await self.writer.start_tls(ctx, ssl_handshake_timeout=self.rt.snapshot.config.timeouts.tls_handshake)
        except (ssl.SSLError, TimeoutError, OSError, ConnectionError) as exc:
            rec.error = "client_tls_failed"
            log.debug("TLS handshake with a client for %s failed: %s", rec.host, type(exc).__name__)
            return False
        self.h11 = self._new_h11()  # a fresh HTTP/1.1 connection on the TLS layer
        self.tunnel = Origin("https", host, port)
        self.busy = False
        tunnels = self.rt.metrics.tunnels.labels("intercept")
        tunnels.inc()
        try:
            await self._serve_requests()
        finally:
            tunnels.dec()
        return False


def _log_path(target: str) -> str:
    """The path to log before the target is understood: never the authority (it may hold user:password)."""
    if target.startswith("/"):
        return target.partition("?")[0][:200]
    scheme, sep, rest = target.partition("://")
    if sep and scheme.isalpha():
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        return rest[cut:].partition("?")[0][:200] or "/"
    return "-"


def _refusal(exc: h11.RemoteProtocolError, head: bytes) -> ProxyError:
    """Turn h11's refusal into ours, looking at the raw head to be precise where h11 is not."""
    hint = exc.error_status_hint
    if hint == 431 and b"\n" not in head:
        return UriTooLong("the request line is longer than the proxy accepts.")
    if hint == 431:
        return HeadersTooLarge("the request headers are larger than the proxy accepts.")
    if hint == 501:
        codings = _transfer_encodings(head)
        # RFC 9112 §6.3: chunked that is not the final coding, or a repeated
        # Transfer-Encoding, is a framing error (400, close); an unknown coding is 501.
        if len(codings) > 1 or any("chunked" in c for c in codings):
            return BadRequest("the request's Transfer-Encoding is not a single final `chunked`.")
        return NotImplementedByProxy("the request uses a Transfer-Encoding the proxy does not support.")
    return from_status_hint(hint, f"malformed request ({one_line(str(exc))[:120]}).")


def _transfer_encodings(head: bytes) -> list[str]:
    values = []
    for line in head.split(b"\n")[1:]:
        if not line.strip():
            break
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"transfer-encoding":
            values.append(value.strip().lower().decode("latin-1"))
    return values


def _check_framing(event: h11.Request) -> None:
    """Reject what request smuggling is made of (RFC 9112 §6.1, §6.3)."""
    names = [n for n, _ in event.headers]
    if b"transfer-encoding" in names:
        if b"content-length" in names:
            raise BadRequest("the request has both Content-Length and Transfer-Encoding.")
        if event.http_version == b"1.0":
            raise BadRequest("Transfer-Encoding is not allowed in an HTTP/1.0 request.")
        if names.count(b"transfer-encoding") > 1:
            raise BadRequest("the request repeats Transfer-Encoding.")


def _check_size(event: h11.Request, limits: Limits) -> None:
    """h11 bounds only a head still incomplete; one arriving whole is measured here."""
    if len(event.method) + len(event.target) + 10 > limits.max_request_line:
        # RFC 9112 §3: a request-target longer than we parse gets 414.
        raise UriTooLong(f"the request line is longer than {limits.max_request_line} bytes.")
    if len(event.headers) > limits.max_headers:
        raise HeadersTooLarge(f"the request has more than {limits.max_headers} header fields.")
    size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
    if size > limits.max_header_bytes:
        raise HeadersTooLarge("the request headers are larger than the proxy accepts.")


def _content_length(event: h11.Request) -> int | None:
    for name, value in event.headers:
        if name == b"content-length":
            return int(value)
        if name == b"transfer-encoding":
            return None
    return 0


def _connect_target(target: str) -> tuple[str, int]:
    try:
        host, port = split_hostport(target)
        if port is None:
            raise HostError("a CONNECT target needs a port")
        return normalize_host(host), parse_port(port)
    except HostError as exc:
        raise BadRequest(f"bad CONNECT target `{target[:100]}`: {exc}.") from None


def _raw_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    from http import HTTPStatus

    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b"Error"
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    lines += [n + b": " + v for n, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _is_upstream_body_error(exc: BaseException) -> bool:
    import aiohttp

    return isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError))


class ProxyServer:
    """The accept loop, the connection limit, and the drain on shutdown."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.draining = False
        self.connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.trimmer = Trimmer()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._accept, host, port, limit=_READ, backlog=1024)
        self.trimmer.start()
        sock = self._server.sockets[0].getsockname()
        self.rt.bound = (normalize_host(str(sock[0])), int(sock[1]))
        return self.rt.bound

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self.rt.snapshot.config.limits
        if self.draining or len(self.connections) >= limits.max_connections:
            why = "the proxy is shutting down." if self.draining else "the proxy is at its connection limit."
            # Take the request off the wire first: closing a socket with unread
            # data sends a reset, which would destroy the 503 before it is read.
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(reader.read(65536), 0.5)
            status, headers, body = render(Unavailable(why))
            headers.append((b"connection", b"close"))
            writer.write(_raw_response(status, headers, body))
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            return
        conn = Connection(self, reader, writer)
        self.connections.add(conn)
        self.rt.metrics.connections.inc()
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            self.rt.metrics.connections.dec()
            if not self.connections:
                self.trimmer.idle()
            if task is not None:
                self._tasks.discard(task)

    async def drain(self, grace: float) -> None:
        """Stop accepting; let requests in flight finish within ``grace``; close the rest."""
        self.draining = True
        self.trimmer.stop()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if not conn.busy:
                conn.writer.close()
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for t in still:
                t.cancel()
            if still:
                await asyncio.wait(still, timeout=1.0)
