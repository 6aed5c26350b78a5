"""What a client sends first inside an intercepted CONNECT, looked at without reading it.

After the 200 the client speaks first: a TLS ClientHello, whose record
starts with content type 22, handshake (RFC 8446 §5.1), or a plain HTTP/1.1
request (undici for ``http://`` URLs, ``ws://`` clients), whose request line
starts with a method token (RFC 9112 §3), perhaps after an empty line
(§2.2). The loop's start_tls must find the ClientHello in the socket: what
the connection had already read would never reach the TLS layer
(python/cpython#142352). So the transport stops reading, a duplicate of the
socket waits until something is readable, and MSG_PEEK looks at the first
byte, leaving it in the kernel for whoever reads next (the TLS layer, or the
connection again). A handful of system calls per CONNECT, none per request.
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket

_TLS_HANDSHAKE = 0x16
# tchar (RFC 9110 §5.6.2) starts a method; CR or LF an empty line before the request line.
_HTTP_FIRST = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\r\n")


class Inside(enum.Enum):
    """What the client's first byte says the tunnel carries."""

    TLS = "tls"
    HTTP = "http"
    OTHER = "other"  # neither: refused with a 400
    GONE = "gone"  # the client closed (or reset) before sending a byte


def classify(first: int) -> Inside:
    if first == _TLS_HANDSHAKE:
        return Inside.TLS
    return Inside.HTTP if first in _HTTP_FIRST else Inside.OTHER


async def sniff(transport: asyncio.Transport, wait: float) -> Inside:
    """What the client sends first, left unread; TimeoutError when nothing came within ``wait`` seconds.

    Reading is paused on return: the caller resumes it, or start_tls does.
    The pause comes first, in the same loop turn as the 200 was written, so
    that no byte of the answer to it can be taken by the connection.
    """
    transport.pause_reading()
    sock = transport.get_extra_info("socket")
    try:
        # Family and type given: socket() would otherwise ask the kernel for them.
        peek = socket.socket(sock.family, sock.type, sock.proto, os.dup(sock.fileno()))
    except (OSError, AttributeError):
        return Inside.GONE  # the transport already closed its socket
    loop = asyncio.get_running_loop()
    fd = peek.fileno()
    try:
        async with asyncio.timeout(wait):
            while True:
                ready: asyncio.Future[None] = loop.create_future()
                # A duplicate, not the socket: the loop refuses a reader on a transport's own descriptor.
                loop.add_reader(fd, _wake, ready)
                try:
                    await ready
                finally:
                    # Before the duplicate closes: epoll keeps watching a file another descriptor still holds.
                    loop.remove_reader(fd)
                try:
                    data = peek.recv(1, socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return Inside.GONE
                return classify(data[0]) if data else Inside.GONE
    finally:
        peek.close()


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
