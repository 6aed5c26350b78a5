"""Upgrades (WebSocket and others): the handshake carries the credential, then bytes flow both ways.

The pool's connections carry HTTP exchanges only, so an upgrade gets a
connection of its own, dialled and spoken to as the pool's are (pool.py,
h1client.py): the same address checks, the same response parser, the same
errors. On a 101 the connection's transport is handed over to asyncio
streams for the tunnel (transport/tunnel.py); anything else is relayed like
any response, and the connection closed after it.
"""

from __future__ import annotations

import asyncio
import ssl

from authproxy.http1.h1message import serialize_request
from authproxy.messages import Origin, Reply, Upgraded
from authproxy.net.egress import Guard
from authproxy.net.parent import Parent
from authproxy.upstream.pool import Pool
from authproxy.upstream.upstreams import filter_response_headers

# The tunnel reads up to this much at a time from the upstream side.
_READ_LIMIT = 256 * 1024


def is_upgrade(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The Upgrade header's value when the client asks for one (RFC 9110 §7.8)."""
    upgrade = None
    tokens: set[bytes] = set()
    for name, value in headers:
        low = name.lower()
        if low == b"upgrade":
            upgrade = value.strip()
        elif low == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return upgrade if upgrade and b"upgrade" in tokens else None


async def open_upgrade(
    pool: Pool,
    guard: Guard,
    dest: Origin,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    upgrade: bytes,
    sslctx: ssl.SSLContext | None,
    connect_timeout: float,
    headers_timeout: float,
    parent: Parent | None = None,
) -> Reply:
    """Send the upgrade request on a connection of its own (judged by ``guard``); a 101 reply carries ``upgraded``."""
    switched: list[Upgraded] = []

    def on_switch(transport: asyncio.Transport, early: bytes) -> None:
        # In the protocol's callback, before another read: no byte of the new protocol goes astray.
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_READ_LIMIT, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        switched.append(Upgraded(reader, asyncio.StreamWriter(transport, protocol, reader, loop), early))

    m = method.encode("ascii")
    head = serialize_request(m, path, [*headers, (b"Connection", b"Upgrade"), (b"Upgrade", upgrade)], None, None)
    conn = await pool.connect_alone(dest, sslctx, guard, connect_timeout, on_switch, parent)
    resp = await conn.exchange(head, None, None, m == b"HEAD", headers_timeout)
    if switched:
        return Reply(101, resp.reason, resp.headers, upgraded=switched[0])
    return Reply(resp.status, resp.reason, filter_response_headers(resp.headers), body=resp, release=resp.release)


def switch_headers(reply: Reply, upgrade: bytes) -> list[tuple[bytes, bytes]]:
    """The 101's headers for the client: the upstream's, with the hop-by-hop pair restored."""
    kept = filter_response_headers(reply.headers)
    return [*kept, (b"connection", b"Upgrade"), (b"upgrade", _upgrade_of(reply.headers) or upgrade)]


def _upgrade_of(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for n, v in headers:
        if n.lower() == b"upgrade":
            return v
    return None
