"""Framing the responses the server writes to its client (RFC 9112 §6), the rules h11 applied.

A body of known length keeps its Content-Length; one of unknown length is
chunked to an HTTP/1.1 client and delimited by the close to an HTTP/1.0 one;
HEAD, 204, 304 and a CONNECT's 2xx carry none. Whatever ends keep-alive
(the request, the response, a close-delimited body) puts ``Connection:
close`` on the response.
"""

from __future__ import annotations

from http import HTTPStatus

_LENGTH, _CHUNKED, _CLOSE, _NONE = 0, 1, 2, 3


class ResponseFramingError(Exception):
    """The body sent does not match the length its head declared."""


class ResponseFramer:
    """One response: its head as bytes, then each body chunk framed, then its end."""

    __slots__ = ("_kind", "_left", "head", "keep_alive")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        method: bytes,
        version: bytes,
        keep_alive: bool,
    ) -> None:
        kind, left = _LENGTH, 0
        need_close = False
        te, cl, connection = _framing(headers)
        if not (status in (204, 304) or (method == b"CONNECT" and 200 <= status < 300)):
            # A HEAD response's headers are the ones a GET would get (RFC 9110 §9.3.2).
            if te:
                kind = _CHUNKED
            elif cl:
                left = int(cl[0])
            else:
                kind = _CLOSE
            if kind != _LENGTH:
                headers = [(n, v) for n, v in headers if n.lower() not in (b"content-length", b"transfer-encoding")]
                if version == b"1.1":
                    kind = _CHUNKED
                    headers.append((b"Transfer-Encoding", b"chunked"))
                elif method != b"HEAD":
                    need_close = True
        if b"close" in connection:
            keep_alive = False
        if not keep_alive or need_close:
            keep_alive = False
            if connection != [b"close"]:
                tokens = sorted((set(connection) - {b"keep-alive"}) | {b"close"})
                headers = [(n, v) for n, v in headers if n.lower() != b"connection"]
                headers.append((b"Connection", b", ".join(tokens)))
        if method == b"HEAD":
            kind, left = _NONE, 0
        self._kind = kind
        self._left = left
        self.keep_alive = keep_alive
        self.head = _head(status, reason, headers)

    @property
    def bodyless(self) -> bool:
        return self._kind == _NONE or (self._kind == _LENGTH and self._left == 0)

    @property
    def complete(self) -> bool:
        """A Content-Length body has been framed to its last byte: nothing more may follow."""
        return self._kind == _LENGTH and self._left == 0

    def data(self, chunk: bytes) -> bytes:
        if self._kind == _CHUNKED:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        if self._kind == _LENGTH:
            if len(chunk) > self._left:
                raise ResponseFramingError("more body than the declared Content-Length")
            self._left -= len(chunk)
            return chunk
        if self._kind == _CLOSE:
            return chunk
        raise ResponseFramingError("a body on a response that has none")

    def end(self) -> bytes:
        if self._kind == _CHUNKED:
            return b"0\r\n\r\n"
        if self._kind == _LENGTH and self._left:
            raise ResponseFramingError("less body than the declared Content-Length")
        return b""


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The tokens of Transfer-Encoding, Content-Length and Connection, in one pass.

    Only names of those lengths are lowercased: this runs for every response.
    """
    te: list[bytes] = []
    cl: list[bytes] = []
    connection: list[bytes] = []
    for name, value in headers:
        k = len(name)
        if k != 10 and k != 14 and k != 17:
            continue
        low = name.lower()
        into = te if low == b"transfer-encoding" else cl if low == b"content-length" else None
        if into is None and low == b"connection":
            into = connection
        if into is not None:
            into += [t.strip().lower() for t in value.split(b",") if t.strip()]
    return te, cl, connection


# Status lines already made, by (status, reason): formatting one costs more than the rest of the head.
# Bounded, as an upstream chooses its reasons: past the bound a line is made each time.
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def _status_line(status: int, reason: bytes) -> bytes:
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %b\r\n" % (status, reason)
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[key] = line
    return line


def _head(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    parts = [_status_line(status, reason)]
    for name, value in headers:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    parts.append(b"\r\n")
    head = b"".join(parts)
    # One line per field: a CR or LF inside a value would split the response.
    lines = len(headers) + 2
    if head.count(b"\n") != lines or head.count(b"\r") != lines:
        raise ResponseFramingError("a response header holds a line break")
    return head


def informational(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A 1xx head (100 Continue, 101 Switching Protocols): no framing, no body."""
    return _head(status, reason, headers)


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Error"


def raw_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """A complete answer outside any request (a refusal, the connection limit); ``headers`` frame it."""
    return _head(status, reason_phrase(status), headers) + body
