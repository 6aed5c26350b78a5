"""Reading an upstream's response: the phases of an exchange and the llhttp callbacks that move it through them.

``H1Connection`` (h1client.py) feeds the bytes; httptools' parser calls back
here, field by field and chunk by chunk. A parser replaced after a HEAD
response may still call these for bytes that followed it; the phase checks
catch that.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools

# Buffered body bytes above which the socket is paused until the consumer catches up.
HIGH_WATER = 256 * 1024

# Where a connection is in its current exchange.
IDLE, HEAD, BODY, DONE = 0, 1, 2, 3


class ResponseParsing:
    """The httptools (llhttp) callbacks of ``H1Connection``, over the per-exchange state it keeps."""

    transport: asyncio.Transport | None
    reusable: bool
    _parser: Any
    _phase: int
    _max_head: int
    _is_head: bool
    _head_only: bool
    _interim: bool
    _fields_size: int
    _too_large: bool
    _framed: bool
    _keep_alive: bool
    _status: int
    _reason: bytes
    _headers: list[tuple[bytes, bytes]]
    _head_waiter: asyncio.Future[None] | None
    _chunks: list[bytes]
    _buffered: int
    _body_waiter: asyncio.Future[None] | None
    _drain_waiter: asyncio.Future[None] | None
    _paused: bool

    def on_message_begin(self) -> None:
        if self._phase == HEAD:
            self._headers = []  # an interim (1xx) response's headers are dropped
            self._framed = False
            self._fields_size = 0
        else:
            self.reusable = False

    def on_status(self, reason: bytes) -> None:
        if self._phase == HEAD:
            self._reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._phase != HEAD:
            return  # trailers (dropped), or bytes a stale parser saw
        # llhttp strips whitespace before a value, not after (RFC 9110 §5.5 says both).
        self._headers.append((name, value.rstrip(b" \t")))
        n = len(name)
        self._fields_size += n + len(value) + 4
        if n == 14 or n == 17:
            low = name.lower()
            if low == b"content-length":
                self._framed = True
            elif low == b"transfer-encoding":
                self._framed = value.rstrip().lower().endswith(b"chunked")

    def on_headers_complete(self) -> None:
        if self._phase != HEAD:
            self.reusable = False
            return
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            # 100 Continue and other interim answers are skipped; a 101 makes
            # llhttp stop with HttpParserUpgrade (_switch).
            self._interim = status != 101
            return
        if self._fields_size > self._max_head:
            self._too_large = True  # refused once feed_data returns; the head stays unanswered
            return
        self._status = status
        self._keep_alive = parser.should_keep_alive()
        if self._is_head:
            # httptools cannot tell llhttp that a HEAD response has no body:
            # the message ends here and a fresh parser takes the next one.
            self._phase = DONE
            self._head_only = True
            self._parser = new_parser(self)
            wake(self._drain_waiter)
        else:
            self._phase = BODY  # a body still being sent goes on (RFC 9112 §9.3)
        wake(self._head_waiter)

    def on_body(self, body: bytes) -> None:
        if self._phase != BODY:
            self.reusable = False  # a body after a HEAD response, or bytes nobody asked for
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        wake(self._body_waiter)

    def on_message_complete(self) -> None:
        phase = self._phase
        if phase == BODY:
            self._phase = DONE
            wake(self._body_waiter)
            wake(self._drain_waiter)  # a body still being sent is no longer wanted
        elif phase == HEAD and self._interim:
            self._interim = False
        elif phase == DONE and self._head_only:
            self._head_only = False  # the HEAD response's own end, as the old parser saw it
        else:
            self.reusable = False


def wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def new_parser(protocol: Any) -> Any:
    parser = httptools.HttpResponseParser(protocol)
    # The leniencies aiohttp's client had: bare LF line ends and spaces after a
    # chunk size, seen from old servers. The server side re-frames every answer.
    parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True, lenient_spaces_after_chunk_size=True)
    return parser
