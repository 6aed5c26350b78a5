"""Connections through the parent proxy: a CONNECT tunnel, or the connection to the parent itself.

Two ways through an HTTP proxy (RFC 9110 §9.3.6, RFC 9112 §3.2.2):

- a tunnel: ``CONNECT host:port`` to the parent, then, once it answers 2xx,
  TLS with the upstream end to end (an https upstream: the parent sees no
  byte of the exchange), or the bytes as they are (a blind tunnel, a
  WebSocket: RFC 6455 §4.1 asks a client behind a proxy to tunnel);
- the forward connection: the TCP connection to the parent, on which the
  pool sends absolute-form requests with ``Proxy-Authorization`` (plain
  ``http://`` upstreams).

Both are dialled through ``Egress`` like any other connection. The parent's
own address is judged as a route's upstream is (the loop check: a parent that
is this proxy is refused with ``proxy_loop``; it is configured on purpose, so
a parent on loopback or a private network is fine). The destination is
judged by what its name resolves to *here* (``Egress.judged_name``), but the
parent is sent the name and resolves it again: it may get another answer, and
a name that does not resolve here is not judged at all (docs/networks.md).

The parent's failures are its own errors, naming it (``host:port``, never its
credentials): 407 is ``upstream_proxy_auth_failed``; no connection, another
non-2xx answer or a broken answer ``upstream_proxy_error`` (502), and no
answer in time the same code with 504. There is no falling back to a direct
connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TypeVar, cast

from authproxy.errors import UpstreamProxyAuthFailed, UpstreamProxyError, UpstreamProxyTimeout, one_line
from authproxy.net.egress import Egress, Guard
from authproxy.net.hosts import format_authority
from authproxy.net.parent import Parent, auth_failed

_P = TypeVar("_P", bound=asyncio.BaseProtocol)

# The parent's answer to CONNECT: a status line and a few headers.
_MAX_ANSWER = 16 * 1024


class _Answer(asyncio.Protocol):
    """Reads the parent's answer to CONNECT, then stops reading: what follows is the tunnel's."""

    def __init__(self, who: str) -> None:
        self._who = who
        self.buf = bytearray()
        self.end = -1
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.done.done():
            return  # a byte of the tunnel that came before reading stopped: kept for its protocol
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0:
            self.end = end + 4
            assert self.transport is not None
            self.transport.pause_reading()
            self.done.set_result(None)
        elif len(self.buf) > _MAX_ANSWER:
            self.done.set_exception(UpstreamProxyError(f"{self._who} sent an answer to CONNECT too large to read."))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(UpstreamProxyError(f"{self._who} closed the connection without answering."))


async def through(
    egress: Egress,
    parent: Parent,
    host: str,
    port: int,
    factory: Callable[[], _P],
    guard: Guard,
    *,
    tunnel: bool,
    connect_timeout: float,
    sslctx: ssl.SSLContext | None = None,
    handshake_timeout: float | None = None,
) -> tuple[asyncio.Transport, _P]:
    """A connection to ``host:port`` through ``parent``: a tunnel (TLS in it with ``sslctx``), or the
    forward connection (``tunnel`` False: ``factory``'s protocol speaks absolute-form to the parent).

    Raises the parent's ProxyErrors, a refusal of the destination, and, for
    TLS through the tunnel, what ``start_tls`` raises (ssl.SSLError,
    ConnectionAbortedError on its timeout), as a direct dial does.
    """
    who = f"the parent proxy {parent.authority}"
    try:
        async with asyncio.timeout(connect_timeout):
            await egress.judged_name(host, port, guard)
    except TimeoutError:
        pass  # this host's resolver is too slow to answer: as for a name it does not know, the parent resolves it
    try:
        async with asyncio.timeout(connect_timeout):
            if not tunnel:
                return await egress.connect(parent.host, parent.port, factory, Guard.ROUTE)
            transport, answer = await egress.connect(parent.host, parent.port, lambda: _Answer(who), Guard.ROUTE)
            try:
                transport.write(_connect_request(parent, host, port))
                await answer.done
                _check_answer(parent, bytes(answer.buf[: answer.end]), format_authority(host, port))
            except BaseException:
                transport.abort()
                raise
    except TimeoutError:
        raise UpstreamProxyTimeout(f"{who} did not answer within {connect_timeout:g} s.") from None
    except OSError as exc:
        raise UpstreamProxyError(f"cannot connect to {who}: {exc.strerror or type(exc).__name__}.") from None
    early = bytes(answer.buf[answer.end :])
    protocol = factory()
    if sslctx is None:
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if early:
            _feed(protocol, early)
        transport.resume_reading()
        return transport, protocol
    if early:
        transport.abort()
        raise UpstreamProxyError(f"{who} sent bytes into the tunnel before TLS began.")
    try:
        tls = await asyncio.get_running_loop().start_tls(
            transport, protocol, sslctx, server_hostname=host, ssl_handshake_timeout=handshake_timeout
        )
    except BaseException:
        transport.abort()
        raise
    if tls is None:  # the connection closed during the handshake
        raise ConnectionAbortedError("the connection closed during the TLS handshake")
    protocol.connection_made(tls)  # start_tls does not call it: the protocol is new to the connection
    return tls, protocol


async def open_through(
    egress: Egress, parent: Parent, host: str, port: int, guard: Guard, connect_timeout: float, limit: int = 2**16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A tunnel through ``parent`` as streams (a blind tunnel's upstream side)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await through(
        egress, parent, host, port, lambda: protocol, guard, tunnel=True, connect_timeout=connect_timeout
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def _connect_request(parent: Parent, host: str, port: int) -> bytes:
    """RFC 9110 §9.3.6: the authority as the target and in Host, the parent's credentials with it."""
    authority = format_authority(host, port).encode("ascii")
    head = b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n"
    header = parent.header
    if header is not None:
        head += header[0] + b": " + header[1] + b"\r\n"
    return head + b"\r\n"


def _check_answer(parent: Parent, head: bytes, target: str) -> None:
    """A 2xx opens the tunnel (its framing headers mean nothing, RFC 9110 §9.3.6); anything else is the parent's no."""
    who = f"the parent proxy {parent.authority}"
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status_text, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(status_text) != 3 or not status_text.isdigit():
        raise UpstreamProxyError(f"{who} answered CONNECT with something that is not HTTP/1.1.")
    status = int(status_text)
    if 200 <= status < 300:
        return
    if status == 407:
        fields = (line.partition(":") for line in lines[1:])
        challenges = [v.strip() for n, _, v in fields if n.strip().lower() == "proxy-authenticate"]
        raise UpstreamProxyAuthFailed(auth_failed(parent, challenges))
    said = one_line(reason.strip())[:80]
    raise UpstreamProxyError(f"{who} answered {status} {said}".rstrip() + f" to CONNECT {target[:200]}.")


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Bytes that came with the parent's answer, handed to the protocol that reads the tunnel."""
    if isinstance(protocol, asyncio.BufferedProtocol) and not hasattr(protocol, "data_received"):
        view = data
        while view:
            buf = memoryview(protocol.get_buffer(len(view)))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
        return
    cast(asyncio.Protocol, protocol).data_received(data)
