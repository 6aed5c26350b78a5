"""CONNECT and protocol switches: where a client connection stops being one HTTP request after another.

A CONNECT to a host a route matches is intercepted (answered 200, then TLS
with a leaf from our CA, or plain HTTP if that is what the client sends
first, then the requests inside are served like any others); one to any
other host becomes a blind byte tunnel. An upgrade the
upstream accepted (101) turns the connection into a tunnel too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING, Protocol

from authproxy.errors import (
    BadRequest,
    Denied,
    NotImplementedByProxy,
    PlaceholderMisdirected,
    ProxyError,
    UpstreamError,
    UpstreamTimeout,
)
from authproxy.http1.h1request import connect_target
from authproxy.http1.h1response import informational
from authproxy.messages import Origin, ProxyRequest, Reply
from authproxy.net.chain import open_through
from authproxy.net.egress import Guard
from authproxy.net.hosts import format_authority
from authproxy.ops.accesslog import AccessRecord
from authproxy.placeholders.guard import check_connect
from authproxy.placeholders.index import Placeholders
from authproxy.placeholders.tunnelscan import ScanningSource
from authproxy.routes import connect_default
from authproxy.runtime import Snapshot
from authproxy.server.sniff import Inside, sniff
from authproxy.transport.stream import Source
from authproxy.transport.tunnel import pump_both
from authproxy.upstream.upgrade import is_upgrade, switch_headers

if TYPE_CHECKING:
    from authproxy.http1.h1response import ResponseFramer
    from authproxy.runtime import Runtime
    from authproxy.transport.stream import ClientStream


class Connection(Protocol):
    """What CONNECT and a protocol switch need of the client connection they run on (server/connection.py's)."""

    rt: Runtime
    stream: ClientStream
    buf: bytearray
    busy: bool
    req_done: bool
    tunnel: Origin | None  # inside an intercepted CONNECT: where the tunnel goes

    async def receive_body(self) -> bytes | None: ...

    def framer(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> ResponseFramer: ...

    async def refuse(self, err: ProxyError) -> None: ...

    async def serve_requests(self, opened: float | None = None) -> None: ...

log = logging.getLogger("authproxy.server")


async def switch(conn: Connection, snap: Snapshot, reply: Reply, req: ProxyRequest, rec: AccessRecord) -> bool:
    """Relay the upstream's 101, then pump bytes both ways until either side closes (``snap``'s idle timeout)."""
    up = reply.upgraded
    assert up is not None
    try:
        while not conn.req_done:  # the 101 goes out only after the whole request
            if await conn.receive_body() is None:
                break
        value = is_upgrade(req.headers) or b"websocket"
        conn.stream.write(informational(101, reply.reason, switch_headers(reply, value)))
        if up.early:
            conn.stream.write(up.early)
        client_early = bytes(conn.buf)
        conn.buf.clear()
        if client_early:
            up.writer.write(client_early)
        idle = snap.config.timeouts.idle
        bytes_in, bytes_out = await pump_both((conn.stream, conn.stream), (up.reader, up.writer), idle)
        rec.bytes_in += bytes_in + len(client_early)
        rec.bytes_out += bytes_out + len(up.early)
    finally:
        up.writer.close()
    return False


async def connect(conn: Connection, target: str, snap: Snapshot, rec: AccessRecord) -> bool:
    """CONNECT: interception for hosts a route matches, a blind tunnel for the rest."""
    host, port = connect_target(target)
    rec.mode, rec.host, rec.path = "tunnel", format_authority(host, port), "-"
    ph = snap.placeholders
    if ph is not None:
        check_connect(ph, target, rec, conn.rt.metrics)
    matched = snap.table.candidates(host, port, connect_default(port))
    if matched:
        rec.route = matched[0].name if len(matched) == 1 else "*"
        return await _intercept(conn, snap, host, port, rec)
    if ph is not None and ph.stubs_host(host, port):
        return await _intercept(conn, snap, host, port, rec)  # a stubbed token endpoint is answered inside
    if snap.config.unmatched == "deny":
        raise Denied(f"{rec.host} matches no route and `unmatched` is deny.")
    t = snap.config.timeouts
    parent = snap.parents.choose(None, host, port, connect_default(port))
    try:
        # Judged by address (a loop to ourselves, the `destinations` policy) before the 200: the client's
        # bytes sent ahead of it would otherwise go into a tunnel we should never have opened.
        if parent is not None:
            up_reader, up_writer = await open_through(conn.rt.egress, parent, host, port, Guard.UNMATCHED, t.connect)
        else:
            up_reader, up_writer = await asyncio.wait_for(conn.rt.egress.open(host, port, Guard.UNMATCHED), t.connect)
    except TimeoutError:
        raise UpstreamTimeout(f"connecting to {rec.host} took longer than {t.connect:g} s.") from None
    except OSError as exc:
        raise UpstreamError(f"cannot connect to {rec.host}: {exc.strerror or type(exc).__name__}.") from None
    conn.stream.write(conn.framer(200, b"Connection established", []).head)
    rec.status = 200
    early = bytes(conn.buf)
    conn.buf.clear()
    source: Source = conn.stream
    if ph is not None:
        source = scanned = _scanned(conn, ph, up_writer, rec)
        early = scanned.feed(early)
    if early:
        up_writer.write(early)
    tunnels = conn.rt.metrics.tunnels.labels("tunnel")
    tunnels.inc()
    try:
        bytes_in, bytes_out = await pump_both((source, conn.stream), (up_reader, up_writer), t.idle)
    finally:
        tunnels.dec()
    rec.bytes_in, rec.bytes_out = bytes_in + len(early), bytes_out
    return False


def _scanned(conn: Connection, ph: Placeholders, up_writer: asyncio.StreamWriter, rec: AccessRecord) -> ScanningSource:
    """The client side of a blind tunnel, watched for placeholders; a hit closes both sides (tunnelscan.py)."""

    def on_hit(route: str) -> None:
        rec.error = PlaceholderMisdirected.code
        conn.rt.metrics.placeholder_misdirected.labels(route, "tunnel").inc()
        log.warning("closed a tunnel to %s: it carried the placeholder of route %s", rec.host, route)
        up_writer.transport.abort()
        conn.stream.transport.abort()

    return ScanningSource(conn.stream, ph, on_hit)


async def _intercept(conn: Connection, snap: Snapshot, host: str, port: int, rec: AccessRecord) -> bool:
    """Answer 200, then serve the requests inside: over TLS as ``host`` with a leaf from our CA, or in plain HTTP.

    The client's first byte decides (sniff.py): some clients open a tunnel
    for ``http://`` and ``ws://`` URLs too (undici, https-proxy-agent,
    Python websockets, Java), and speak plain HTTP/1.1 inside it.
    """
    rec.mode = "intercept"
    ca = conn.rt.ca
    if ca is None:
        raise NotImplementedByProxy(f"{rec.host} matches a route, but interception is not enabled.")
    if conn.buf:
        # Bytes sent before our 200 would be lost by start_tls
        # (python/cpython#142352); a conforming client waits for the 200.
        raise BadRequest("the client sent data before the CONNECT was answered.")
    conn.stream.write(conn.framer(200, b"Connection established", []).head)
    rec.status = 200
    t = snap.config.timeouts
    opened = time.monotonic()
    # No await between the 200 and the sniff's pause: nothing of the answer may reach the buffer.
    try:
        inside = await sniff(conn.stream.transport, t.client_header)
    except TimeoutError:
        inside = None
    if inside is not Inside.TLS:
        conn.stream.transport.resume_reading()  # the connection reads again, if only to see the close
    if inside is None or inside is Inside.GONE:
        rec.error = "client_timeout" if inside is None else "client_gone"
        return False
    if inside is Inside.OTHER:
        conn.tunnel = Origin("http", host, port)  # the refusal has a line of its own
        await conn.refuse(BadRequest("the bytes inside the tunnel are neither TLS nor an HTTP/1.1 request."))
        return False
    if inside is Inside.TLS:
        try:
            await conn.stream.start_tls(await ca.context_for(host), t.tls_handshake)
        except (ssl.SSLError, TimeoutError, OSError, ConnectionError) as exc:
            rec.error = "client_tls_failed"
            log.debug("TLS handshake with a client for %s failed: %s", rec.host, type(exc).__name__)
            return False
        # A fresh HTTP/1.1 connection on the TLS layer; its first head is due from the end of the handshake.
        conn.tunnel, start = Origin("https", host, port), None
    else:
        # Plain HTTP/1.1 on the tunnel's bytes; the first head is due from the 200 (the wait for its first byte too).
        conn.tunnel, start, rec.note = Origin("http", host, port), opened, "plain"
    conn.busy = False
    tunnels = conn.rt.metrics.tunnels.labels("intercept")
    tunnels.inc()
    try:
        await conn.serve_requests(start)
    finally:
        tunnels.dec()
    return False
