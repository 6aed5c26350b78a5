"""Upgrades (WebSocket and others): the handshake carries the credential, then bytes flow both ways.

The pool's connections carry HTTP exchanges only, so an upgrade gets its own
upstream connection, spoken to with an h11 client:
send the request head, read the answer; on 101 the caller pumps bytes, on
anything else the answer is relayed like any response.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import h11

from authproxy.errors import UpstreamError, UpstreamTimeout, UpstreamTLSError
from authproxy.messages import Origin, Reply, Upgraded
from authproxy.net.egress import Egress, Guard
from authproxy.upstream.upstreams import filter_response_headers

_MAX_REFUSAL_BODY = 1024 * 1024  # a non-101 answer to an upgrade is buffered up to this


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
    egress: Egress,
    guard: Guard,
    dest: Origin,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    upgrade: bytes,
    sslctx: ssl.SSLContext | None,
    connect_timeout: float,
    headers_timeout: float,
) -> Reply:
    """Send the upgrade request on a fresh connection (dialled as every upstream connection is,
    judged by ``guard``); a 101 reply carries ``upgraded``."""
    try:
        reader, writer = await asyncio.wait_for(
            egress.open(dest.host, dest.port, guard, sslctx=sslctx, limit=256 * 1024), connect_timeout
        )
    except TimeoutError:
        raise UpstreamTimeout(f"connecting to {dest.authority} took longer than {connect_timeout:g} s.") from None
    except ssl.SSLCertVerificationError as exc:
        raise UpstreamTLSError(
            f"the certificate of {dest.authority} failed verification: {exc.verify_message}."
        ) from None
    except ssl.SSLError as exc:
        raise UpstreamTLSError(f"TLS with {dest.authority} failed: {exc.reason or exc}.") from None
    except OSError as exc:
        raise UpstreamError(f"cannot connect to {dest.authority}: {exc.strerror or type(exc).__name__}.") from None

    conn = h11.Connection(h11.CLIENT)
    head = [*headers, (b"Connection", b"Upgrade"), (b"Upgrade", upgrade)]
    try:
        writer.write(conn.send(h11.Request(method=method, target=path, headers=head)))
        writer.write(conn.send(h11.EndOfMessage()))
        event = await asyncio.wait_for(_next(conn, reader), headers_timeout)
    except TimeoutError:
        writer.close()
        raise UpstreamTimeout(f"{dest.authority} did not answer within {headers_timeout:g} s.") from None
    except (h11.ProtocolError, OSError) as exc:
        writer.close()
        raise UpstreamError(f"{dest.authority} answered the upgrade badly ({type(exc).__name__}).") from None

    if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
        up = Upgraded(reader, writer, conn.trailing_data[0])
        return Reply(101, event.reason, list(event.headers.raw_items()), upgraded=up)
    if not isinstance(event, h11.Response):
        writer.close()
        raise UpstreamError(f"{dest.authority} answered the upgrade with something other than a response.")
    body = await _read_body(conn, reader, headers_timeout)
    writer.close()
    kept = [(n, v) for n, v in filter_response_headers(event.headers.raw_items()) if n.lower() != b"content-length"]
    return Reply(event.status_code, event.reason, kept, body=_once(body))


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event:
    """The next event that is not NEED_DATA, skipping 100 Continue."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
            continue
        if not isinstance(event, h11.Event):  # PAUSED: nothing more will come in HTTP
            raise h11.RemoteProtocolError("the upstream connection switched protocols unasked")
        if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
            continue
        return event


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader, wait: float) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        while size <= _MAX_REFUSAL_BODY:
            event = await asyncio.wait_for(_next(conn, reader), wait)
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
                size += len(event.data)
            else:
                break
    except (TimeoutError, h11.ProtocolError, OSError):
        pass
    return b"".join(parts)[:_MAX_REFUSAL_BODY]


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def switch_headers(reply: Reply, upgrade: bytes) -> list[tuple[bytes, bytes]]:
    """The 101's headers for the client: the upstream's, with the hop-by-hop pair restored."""
    kept = filter_response_headers(reply.headers)
    return [*kept, (b"connection", b"Upgrade"), (b"upgrade", _upgrade_of(reply.headers) or upgrade)]


def _upgrade_of(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for n, v in headers:
        if n.lower() == b"upgrade":
            return v
    return None
