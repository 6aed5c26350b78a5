"""The upstream connection pool: HTTP/1.1 keep-alive connections per destination, reused last-in first-out.

Keyed by (scheme, host, port, TLS context, rule, parent proxy): a route with
its own ``ca_file`` never shares a connection verified against other roots,
and a connection made through one parent proxy (or none) is never lent to a
request that must go another way. Idle connections are
closed after ``timeouts.idle`` (one timer for the whole pool, not one per
connection), and at most ``MAX_IDLE_PER_KEY`` wait per destination.

A request on a reused connection that the upstream closed before answering
(it timed the idle connection out as we wrote) is sent once more on a new
connection, when resending is safe: an idempotent method (RFC 9110 §9.2.2)
and a body we still hold (none, or buffered).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TypeVar

from authproxy.config import Timeouts
from authproxy.errors import UpstreamError, UpstreamProxyAuthFailed, UpstreamTimeout, UpstreamTLSError
from authproxy.http1.h1errors import NoAnswer
from authproxy.http1.h1message import Body, Key, Response, serialize_request
from authproxy.messages import Origin
from authproxy.net import chain
from authproxy.net.egress import Egress, Guard
from authproxy.net.hosts import format_host
from authproxy.net.parent import Parent, auth_failed
from authproxy.upstream.h1client import H1Connection, Wire

MAX_IDLE_PER_KEY = 256
_P = TypeVar("_P", bound=asyncio.BaseProtocol)
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"})


class Pool:
    def __init__(self, timeouts: Timeouts, max_head: int, egress: Egress | None = None) -> None:
        self._egress = egress if egress is not None else Egress()
        self._connect_timeout = timeouts.connect
        self._handshake_timeout = timeouts.tls_handshake
        self._idle_timeout = timeouts.idle
        self._max_head = max_head
        self._idle: dict[Key, list[H1Connection]] = {}
        self._all: set[H1Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        # The loop the pooled connections were made on, kept when one is: asking for the
        # running loop per request costs a getpid() system call each time (CPython checks
        # the loop belongs to this process), and every request takes and releases.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def connect_alone(
        self,
        dest: Origin,
        sslctx: ssl.SSLContext | None,
        guard: Guard,
        connect_timeout: float,
        on_switch: Callable[[asyncio.Transport, bytes], None],
        parent: Parent | None = None,
    ) -> H1Connection:
        """A connection outside the pool, for a request that asks to switch protocols: after a 101
        it is not HTTP any more, and it is closed once its response is, whatever that was. Through
        a parent it is a tunnel whatever the scheme (RFC 6455 §4.1), so it is spoken to as a direct one."""
        key = (dest.scheme, dest.host, dest.port, sslctx, self._egress.rule(guard), parent)

        def factory() -> Wire:
            conn = H1Connection(key, dest.authority, self._max_head, self._idle_timeout, _close, _forget)
            conn.on_switch = on_switch
            return Wire(conn)

        handshake = self._handshake_timeout if sslctx is not None else None
        wire = await dial(self._egress, dest, sslctx, guard, factory, connect_timeout, handshake, parent, tunnel=True)
        return wire.conn

    async def request(
        self,
        dest: Origin,
        sslctx: ssl.SSLContext | None,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: Body,
        length: int | None,
        head_timeout: float,
        guard: Guard = Guard.ROUTE,
        parent: Parent | None = None,
    ) -> Response:
        """Send a request and return its response once the head is in.

        ``headers`` must not frame the body: Content-Length (``length`` for a
        streamed body) or chunked Transfer-Encoding is added here. ``guard``:
        what a new connection's address is judged by (egress.py). ``parent``:
        the parent proxy to go through (chain.py), None for a direct connection.
        """
        m = method.encode("ascii")
        forward = parent is not None and sslctx is None
        if forward:
            # RFC 9112 §3.2.2: to a proxy, the absolute form; its credentials with the request.
            assert parent is not None
            target, headers = _forward(dest, target, headers, parent)
        head = serialize_request(m, target, headers, body, length)
        key = (dest.scheme, dest.host, dest.port, sslctx, self._egress.rule(guard), parent)
        conn = self._take(key)
        is_head = m == b"HEAD"
        resp: Response | None = None
        if conn is not None:
            try:
                resp = await conn.exchange(head, body, length, is_head, head_timeout)
            except NoAnswer:
                if m not in _IDEMPOTENT or not (body is None or isinstance(body, bytes)):
                    raise
        if resp is None:
            conn = await self._connect(key, dest, sslctx)
            resp = await conn.exchange(head, body, length, is_head, head_timeout)
        if forward and resp.status == 407:
            # Only a proxy answers 407 (RFC 9110 §15.5.8): the parent's, not the upstream's, and never
            # one to relay, which the client would take for this proxy's own `proxy_auth`.
            assert parent is not None
            resp.release()
            challenges = [v.decode("latin-1") for n, v in resp.headers if n.lower() == b"proxy-authenticate"]
            raise UpstreamProxyAuthFailed(auth_failed(parent, challenges))
        return resp

    def _take(self, key: Key) -> H1Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        loop = self._loop
        assert loop is not None  # a connection was made, so the loop is known
        now = loop.time()
        while idle:
            conn = idle.pop()
            if conn.closed or not conn.reusable:
                continue
            if now - conn.idle_since >= self._idle_timeout:
                conn.close()
                continue
            return conn
        return None

    def _release(self, conn: H1Connection) -> None:
        if not conn.finish():
            conn.abort()
            return
        if self._closed:
            conn.close()
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        elif len(idle) >= MAX_IDLE_PER_KEY:
            conn.close()
            return
        loop = self._loop
        assert loop is not None  # set by _connect, which made this connection
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_at(conn.idle_since + self._idle_timeout, self._sweep)

    def _lost(self, conn: H1Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        """Close connections idle for ``timeouts.idle``; the oldest sit first in each list."""
        self._sweeper = None
        loop = self._loop
        assert loop is not None  # armed by _release
        now = loop.time()
        due: float | None = None
        for key in list(self._idle):
            idle = self._idle[key]
            n = 0
            while n < len(idle) and now - idle[n].idle_since >= self._idle_timeout:
                n += 1
            expired, idle[:n] = idle[:n], []
            for conn in expired:
                conn.close()
            if idle:
                first = idle[0].idle_since + self._idle_timeout
                due = first if due is None else min(due, first)
            else:
                del self._idle[key]
        if due is not None and not self._closed:
            self._sweeper = loop.call_at(due, self._sweep)

    async def _connect(self, key: Key, dest: Origin, sslctx: ssl.SSLContext | None) -> H1Connection:
        """A new connection, made by the one dial that judges addresses (loop check, destination policy)."""
        authority = dest.authority
        self._loop = asyncio.get_running_loop()

        def factory() -> Wire:
            return Wire(H1Connection(key, authority, self._max_head, self._idle_timeout, self._release, self._lost))

        handshake = self._handshake_timeout if sslctx is not None else None
        wire = await dial(
            self._egress, dest, sslctx, key[4].guard, factory, self._connect_timeout, handshake, key[5], tunnel=False
        )
        conn = wire.conn
        if self._closed:
            conn.abort()
            raise UpstreamError(f"cannot connect to {authority}: the proxy is shutting down.")
        self._all.add(conn)
        return conn

    async def close(self) -> None:
        """Close every connection, idle or busy (shutdown: the drain is over)."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._idle.clear()
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
        await asyncio.sleep(0)  # let the transports' connection_lost run


def _close(conn: H1Connection) -> None:
    if conn.finish():
        conn.close()
    else:
        conn.abort()


def _forget(conn: H1Connection) -> None:
    """A connection outside the pool has nothing to be removed from."""


async def dial(
    egress: Egress,
    dest: Origin,
    sslctx: ssl.SSLContext | None,
    guard: Guard,
    factory: Callable[[], _P],
    connect_timeout: float,
    handshake_timeout: float | None,
    parent: Parent | None = None,
    *,
    tunnel: bool = False,
) -> _P:
    """A new upstream connection made by ``egress`` (the one dial that judges addresses), through
    ``parent`` when given: a tunnel for TLS (or when ``tunnel``), else the forward connection.

    Every way it can fail becomes the ProxyError a client sees, for the
    pool's connections and an upgrade's alike: too slow 504, TLS refused
    502 ``upstream_tls_error``, anything else 502; the parent's failures are
    its own errors (chain.py).
    """
    authority = dest.authority
    try:
        if parent is not None:
            _, conn = await chain.through(
                egress,
                parent,
                dest.host,
                dest.port,
                factory,
                guard,
                tunnel=tunnel or sslctx is not None,
                connect_timeout=connect_timeout,
                sslctx=sslctx,
                handshake_timeout=handshake_timeout,
            )
            return conn
        async with asyncio.timeout(connect_timeout + (handshake_timeout or 0.0)):
            _, conn = await egress.connect(
                dest.host, dest.port, factory, guard, sslctx=sslctx, handshake_timeout=handshake_timeout
            )
    except TimeoutError:
        raise UpstreamTimeout(f"connecting to {authority} took longer than {connect_timeout:g} s.") from None
    except ssl.SSLCertVerificationError as exc:
        raise UpstreamTLSError(f"the certificate of {authority} failed verification: {_ssl_reason(exc)}.") from None
    except ssl.SSLError as exc:
        raise UpstreamTLSError(f"TLS with {authority} failed: {_ssl_reason(exc)}.") from None
    except ConnectionAbortedError:
        if handshake_timeout is None:
            raise UpstreamError(f"cannot connect to {authority}: connection aborted.") from None
        # asyncio's way of saying the TLS handshake ran out of time.
        raise UpstreamTimeout(f"the TLS handshake with {authority} took longer than {handshake_timeout:g} s.") from None
    except OSError as exc:
        raise UpstreamError(f"cannot connect to {authority}: {exc.strerror or type(exc).__name__}.") from None
    return conn


def _forward(
    dest: Origin, target: str, headers: list[tuple[bytes, bytes]], parent: Parent
) -> tuple[str, list[tuple[bytes, bytes]]]:
    """An origin-form request as a proxy is sent it: the absolute URL, and ``Proxy-Authorization``."""
    absolute = f"{dest.scheme}://{format_host(dest.host, dest.port, dest.default_port)}{target}"
    header = parent.header
    return absolute, headers if header is None else [*headers, header]


def _ssl_reason(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    return str(reason).splitlines()[0][:200]
