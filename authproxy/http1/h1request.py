"""The client's request as the server reads it: the head on httptools (llhttp), the body by hand.

The server finds the end of a head itself (it must keep the raw bytes anyway,
and the bytes after the head are the next request, a tunnel's early bytes or
an upgraded protocol), then parses the head with llhttp. llhttp is stricter
than the grammar the proxy accepts, and more lenient in a few places. So a
head llhttp refuses, or one with anything unusual about it, is handed to h11
for the verdict. h11 is no client anywhere in the proxy; it stays here, off
the hot path, because it still decides what llhttp cannot:

- heads llhttp refuses that RFC 9112 allows: bare LF line ends (§2.2),
  obs-fold (§5.2, replaced by a space), identical duplicate Content-Lengths
  (§6.3, merged), any token as a method (RFC 9110 §9.1);
- heads llhttp lets through that must be refused: extra spaces in the
  request line (§3), a missing or repeated Host (§3.2), a Transfer-Encoding
  other than one ``chunked`` (§6.1);
- the precise status of a refusal (414, 431 or 400), from its
  ``error_status_hint``.

Dropping it would mean writing a second request grammar here for these
cases alone (tests/test_hostile.py, tests/test_raw_http.py and
tests/test_fuzz.py hold them); h11 is small, pure Python, and already that
grammar.

Bodies are framed here and not by llhttp: a body read by the same parser
would run on into the next pipelined request with no way to learn where the
first one ended.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httptools

from authproxy.config import Limits
from authproxy.errors import (
    BadRequest,
    HeadersTooLarge,
    NotImplementedByProxy,
    ProxyError,
    UriTooLong,
    VersionNotSupported,
    from_status_hint,
    one_line,
)
from authproxy.net.hosts import HostError, normalize_host, parse_port, split_hostport

if TYPE_CHECKING:
    import h11

_HEAD_END = re.compile(rb"\n\r?\n")
# h11's request line (RFC 9112 §3): single spaces, a visible-ASCII target, a version.
_REQUEST_LINE = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+ [\x21-\x7e]+ HTTP/1\.[01]\r\n")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*\r\n")
_TRAILER_LINE = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+:[^\r\n]*\r?\n")
_MAX_CHUNK_LINE = 4096


class Head:
    """A request head that passed every check of the grammar (not yet the proxy's own checks)."""

    __slots__ = ("expect_continue", "headers", "keep_alive", "method", "names", "target", "version")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], version: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers  # as sent (original case), values without surrounding whitespace
        self.version = version  # b"1.1" or b"1.0"
        self.names = [n.lower() for n, _ in headers]
        # RFC 9112 §9.3: an HTTP/1.0 client gets one response and a close, as h11 always did.
        self.keep_alive = version == b"1.1" and b"close" not in self._tokens(b"connection")
        self.expect_continue = version == b"1.1" and b"100-continue" in self._tokens(b"expect")

    def _tokens(self, name: bytes) -> list[bytes]:
        if name not in self.names:
            return []
        return [t.strip().lower() for n, v in self.headers if n.lower() == name for t in v.split(b",")]

    def content_length(self) -> int | None:
        """The body's length; None when it is chunked."""
        names = self.names
        if b"transfer-encoding" in names:
            return None
        if b"content-length" in names:
            return int(self.headers[names.index(b"content-length")][1])
        return 0


def head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Where the head in ``buf`` ends (after its blank line), or -1 while it is incomplete."""
    m = _HEAD_END.search(buf, start)
    return m.end() if m else -1


def too_large(partial: bytes) -> ProxyError:
    """An incomplete head past the limit: the request line alone (414) or the fields (431)."""
    if b"\n" not in partial:
        return UriTooLong("the request line is longer than the proxy accepts.")
    return HeadersTooLarge("the request headers are larger than the proxy accepts.")


class _Collect:
    """llhttp's callbacks for one head."""

    __slots__ = ("complete", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.complete = True


def parse_head(raw: bytes, limits: Limits) -> Head:
    """The head in ``raw`` (complete, ending with its blank line), or the ProxyError refusing it."""
    c = _Collect()
    parser = httptools.HttpRequestParser(c)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass  # CONNECT or Upgrade: the head is whole, what follows is not ours to parse here
    except httptools.HttpParserError:
        return _by_h11(raw, limits)
    if not c.complete or not _REQUEST_LINE.match(raw):
        return _by_h11(raw, limits)
    head = Head(parser.get_method(), c.url, c.headers, b"1.1" if parser.get_http_version() == "1.1" else b"1.0")
    names = head.names
    # What llhttp lets through and h11 does not, or treats differently: h11 decides.
    hosts = names.count(b"host")
    if hosts > 1 or (hosts == 0 and head.version == b"1.1"):
        return _by_h11(raw, limits)
    if b"transfer-encoding" in names and (
        names.count(b"transfer-encoding") > 1
        or head.headers[names.index(b"transfer-encoding")][1].lower() != b"chunked"
    ):
        return _by_h11(raw, limits)
    return head


def _by_h11(raw: bytes, limits: Limits) -> Head:
    import h11  # only for the rare head llhttp refuses or finds unusual: a proxy at rest never loads it

    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max(limits.max_header_bytes, len(raw)))
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise _refusal(exc, raw) from None
    if not isinstance(event, h11.Request):
        raise BadRequest("malformed request (no request line).")
    if event.http_version not in (b"1.0", b"1.1"):
        # h11 takes any `HTTP/d.d`; this proxy speaks 1.x only (RFC 9110 §15.6.6). A version
        # that is not `d.d` was refused above as malformed (400).
        raise VersionNotSupported(
            f"HTTP/{event.http_version.decode('ascii', 'replace')} is not supported; send HTTP/1.1."
        )
    return Head(event.method, event.target, list(event.headers.raw_items()), event.http_version)


def _refusal(exc: h11.RemoteProtocolError, head: bytes) -> ProxyError:
    """Turn h11's refusal into ours, looking at the raw head to be precise where h11 is not."""
    hint = exc.error_status_hint
    if hint == 431:
        return too_large(head)
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


def check_framing(head: Head) -> None:
    """Reject what request smuggling is made of (RFC 9112 §6.1, §6.3)."""
    names = head.names
    if b"transfer-encoding" in names:
        if b"content-length" in names:
            raise BadRequest("the request has both Content-Length and Transfer-Encoding.")
        if head.version == b"1.0":
            raise BadRequest("Transfer-Encoding is not allowed in an HTTP/1.0 request.")
        if names.count(b"transfer-encoding") > 1:
            raise BadRequest("the request repeats Transfer-Encoding.")


def check_size(head: Head, limits: Limits) -> None:
    """The limits on a head that arrived whole (an incomplete one is bounded while it is read)."""
    if len(head.method) + len(head.target) + 10 > limits.max_request_line:
        # RFC 9112 §3: a request-target longer than we parse gets 414.
        raise UriTooLong(f"the request line is longer than {limits.max_request_line} bytes.")
    if len(head.headers) > limits.max_headers:
        raise HeadersTooLarge(f"the request has more than {limits.max_headers} header fields.")
    size = len(head.target) + sum(len(n) + len(v) + 4 for n, v in head.headers)
    if size > limits.max_header_bytes:
        raise HeadersTooLarge("the request headers are larger than the proxy accepts.")


def log_path(target: str) -> str:
    """The path to log before the target is understood: never the authority (it may hold user:password)."""
    if target.startswith("/"):
        return target.partition("?")[0][:200]
    scheme, sep, rest = target.partition("://")
    if sep and scheme.isalpha():
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        return rest[cut:].partition("?")[0][:200] or "/"
    return "-"


def connect_target(target: str) -> tuple[str, int]:
    try:
        host, port = split_hostport(target)
        if port is None:
            raise HostError("a CONNECT target needs a port")
        return normalize_host(host), parse_port(port)
    except HostError as exc:
        raise BadRequest(f"bad CONNECT target `{target[:100]}`: {exc}.") from None


class ChunkedBodyError(Exception):
    """The request body's chunked framing is broken."""


class LengthBody:
    """A Content-Length body taken from the connection's buffer."""

    __slots__ = ("left",)

    def __init__(self, length: int) -> None:
        self.left = length

    def next(self, buf: bytearray) -> bytes | None:
        """Body bytes, None at the end, b"" when the buffer must be filled first."""
        left = self.left
        if left == 0:
            return None
        if len(buf) <= left:
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:left])
            del buf[:left]
        self.left = left - len(data)
        return data


class ChunkedBody:
    """A chunked body (RFC 9112 §7.1): sizes of up to 20 hex digits, extensions and trailers ignored."""

    __slots__ = ("_crlf", "_left", "_trailer")

    def __init__(self) -> None:
        self._left = 0  # data bytes left in the current chunk
        self._crlf = False  # the CRLF after a chunk's data is due
        self._trailer = False

    def next(self, buf: bytearray) -> bytes | None:
        """Body bytes, None at the end, b"" when the buffer must be filled first; ChunkedBodyError when broken."""
        while True:
            if self._left:
                if not buf:
                    return b""
                n = min(self._left, len(buf))
                data = bytes(buf[:n])
                del buf[:n]
                self._left -= n
                self._crlf = self._left == 0
                return data
            if self._crlf:
                if len(buf) < 2:
                    return b""
                if buf[:2] != b"\r\n":
                    raise ChunkedBodyError("chunk data longer than its size")
                del buf[:2]
                self._crlf = False
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > _MAX_CHUNK_LINE:
                    raise ChunkedBodyError("chunk line too long")
                return b""
            line = bytes(buf[: end + 1])
            del buf[: end + 1]
            if self._trailer:
                if line in (b"\r\n", b"\n"):
                    return None
                if not _TRAILER_LINE.fullmatch(line):
                    raise ChunkedBodyError("bad trailer field")
                continue
            m = _CHUNK_LINE.fullmatch(line)
            if m is None:
                raise ChunkedBodyError("bad chunk size line")
            self._left = int(m.group(1), 16)
            self._trailer = self._left == 0
