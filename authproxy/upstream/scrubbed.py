"""Response scrubbing, upstream side: ask for what can be read, hand back the reply without the credential.

On a route with ``scrub`` on (config/route.py), every value the proxy
injected (``secrets_of``) is replaced in the reply's status line, headers and
body by ``secrecy/scrub.py``, as the body streams; a WebSocket's frames go
through ``http1/wsframes.py``. What cannot be read is not passed on:

- the request asks for ``Accept-Encoding: identity`` (RFC 9110 §12.5.3),
  offers no WebSocket extension (``Sec-WebSocket-Extensions`` removed, so no
  permessage-deflate, RFC 7692) and asks for no range (a client's ranges
  could cut an echoed value into slices that no match can recognise);
- a reply that comes compressed anyway is decompressed when it is gzip or
  deflate (RFC 9110 §8.4.1), in bounded steps, and relayed without
  ``Content-Encoding`` and ``Content-Length`` (its length is no longer
  known: chunked); any other coding (br, zstd, compress, a stack of codings)
  is refused with 502 ``unscrubbable_encoding`` before a byte of it leaves.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Protocol

from authproxy.credentials.grants import Credential
from authproxy.errors import UnscrubbableEncoding
from authproxy.http1.h1errors import UpstreamBodyError
from authproxy.http1.h1message import Response
from authproxy.http1.wsframes import FrameError, FrameScrubber
from authproxy.messages import ByteReader, Reply, Upgraded
from authproxy.ops.accesslog import AccessRecord
from authproxy.secrecy.scrub import Needles, Scrubber, needles_for

# What a scrubbed route's request does not carry from the client, and what it asks for instead
# (pipeline.outbound_headers). A client's Range (RFC 9110 §14.2) could cut the echoed value into
# slices no match can see: the whole body comes back.
NOT_ASKED = frozenset({b"accept-encoding", b"sec-websocket-extensions", b"range", b"if-range"})
ASK_IDENTITY = (b"Accept-Encoding", b"identity")
_DECODED = frozenset({b"content-encoding", b"content-length"})
# zlib's window bits: gzip only; a zlib stream; raw deflate (what some servers send as "deflate").
_WBITS = {b"gzip": 16 + 15, b"x-gzip": 16 + 15, b"deflate": 15}
_STEP = 64 * 1024  # decompressed bytes per step: a small compressed chunk may inflate a thousandfold


def secrets_of(cred: Credential) -> tuple[str, ...]:
    """The values the proxy injected: each header's value after its auth scheme, Basic's password, each query value."""
    return _secrets(cred.headers, cred.query)


@lru_cache(maxsize=512)
def _secrets(headers: tuple[tuple[str, str], ...], query: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    out: list[str] = []
    for _, value in headers:
        scheme, sep, rest = value.partition(" ")
        if not (sep and scheme.isalpha() and len(scheme) < 16 and rest):
            out.append(value)
            continue
        out.append(rest)  # Basic's blob, a token: the whole value holds it
        if scheme.lower() == "basic":
            out += _basic_password(rest)
    out += [v for _, v in query]
    return tuple(dict.fromkeys(out))


def _basic_password(blob: str) -> list[str]:
    """The password inside a Basic credential (RFC 7617 §2): an echo may show it decoded."""
    try:
        _, sep, password = base64.b64decode(blob, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return []
    return [password] if sep and password else []


_NEEDLES: dict[int, tuple[Credential, Needles]] = {}


def needles_of(cred: Credential) -> Needles:
    """Computed once per credential (a refreshed token is a new one); looked up by identity, the cheapest key."""
    hit = _NEEDLES.get(id(cred))
    if hit is not None and hit[0] is cred:
        return hit[1]
    if len(_NEEDLES) >= 512:
        _NEEDLES.clear()
    needles = needles_for(secrets_of(cred))
    _NEEDLES[id(cred)] = (cred, needles)
    return needles


def scrub_reply(
    reply: Reply, cred: Credential, rec: AccessRecord, bodyless: bool, substitute: bytes | None = None
) -> Reply:
    """``reply``, changed in place: ``cred``'s values replaced in its reason, headers and body (or WebSocket frames).

    ``bodyless``: the request was HEAD, so a content coding names a body that never comes.
    A reply in a coding that cannot be read is let go and refused (UnscrubbableEncoding).
    """
    hit = _NEEDLES.get(id(cred))
    needles = hit[1] if hit is not None and hit[0] is cred else needles_of(cred)
    if not needles.forms:  # not `not needles`: Needles.__bool__ is a Python call
        return reply
    # The status line and every name and value in one buffer, searched once per form. Cheaper than
    # skipping fields shorter than every form: any per-field look (their lengths, sorted) costs more.
    # The same walk notes a Content-Encoding (the only 16-byte name that lower-cases to it).
    parts = [reply.reason]
    coded = False
    for name, value in reply.headers:
        parts.append(name)
        parts.append(value)
        if len(name) == 16 and name.lower() == b"content-encoding":
            coded = True
    head = b"\n".join(parts)
    if needles.found(head):
        _scrub_head(reply, needles, substitute, rec)
    if reply.upgraded is not None:
        up = reply.upgraded
        ws = any(n.lower() == b"upgrade" and v.strip().lower() == b"websocket" for n, v in reply.headers)
        stream: _Stream = FrameScrubber(needles, substitute) if ws else Scrubber(needles, substitute)
        reader = ScrubbedSwitch(up.reader, stream, rec, up.early)
        reply.upgraded = Upgraded(reader, up.writer, b"")
        return reply
    body = reply.body
    if body is None or bodyless or reply.status in (204, 304):
        return reply
    scrubber = Scrubber(needles, substitute, rec)
    if coded:
        try:
            wbits = _coding(reply.headers)
        except UnscrubbableEncoding:
            reply.release()
            raise
        if wbits is not None:
            reply.headers = [h for h in reply.headers if h[0].lower() not in _DECODED]
            reply.body = ScrubbedBody(_Inflated(body, wbits), scrubber)
            return reply
    if isinstance(body, Response):
        body.filter(scrubber)  # no wrapping iterator: the hot path of a small reply
    else:
        reply.body = ScrubbedBody(body, scrubber)
    return reply


def _scrub_head(reply: Reply, needles: Needles, substitute: bytes | None, rec: AccessRecord) -> None:
    s = Scrubber(needles, substitute, rec)
    reply.reason = s.whole(reply.reason)
    reply.headers = [(s.whole(n), s.whole(v)) for n, v in reply.headers]  # `*` is a token character


def _coding(headers: list[tuple[bytes, bytes]]) -> int | None:
    """zlib's window bits for the reply's content coding; None for none; UnscrubbableEncoding for one it cannot read."""
    codings = [
        c.strip().lower() for n, v in headers if n.lower() == b"content-encoding" for c in v.split(b",") if c.strip()
    ]
    codings = [c for c in codings if c != b"identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _WBITS:
        return _WBITS[codings[0]]
    shown = ", ".join(c.decode("latin-1")[:20] for c in codings[:3])
    raise UnscrubbableEncoding(f"the response is encoded as {shown}, which the proxy cannot scrub.")


class ScrubbedBody:
    """A body that is not an upstream ``Response`` (a decompressed one) through a ``Scrubber``."""

    def __init__(self, body: AsyncIterator[bytes], scrubber: Scrubber) -> None:
        self._body = body
        self._scrubber: Scrubber | None = scrubber

    def __aiter__(self) -> ScrubbedBody:
        return self

    async def __anext__(self) -> bytes:
        scrubber = self._scrubber
        if scrubber is None:
            raise StopAsyncIteration
        try:
            return scrubber.feed(await self._body.__anext__())  # b"" when all of it is kept: skipped
        except StopAsyncIteration:
            self._scrubber = None
            return scrubber.flush()


class _Inflated:
    """``body`` inflated in steps of at most ``_STEP`` bytes; gzip members one after another (RFC 1952 §2.2).

    An iterator class rather than an async generator, which mypyc cannot compile.
    """

    def __init__(self, body: AsyncIterator[bytes], wbits: int) -> None:
        self._body = body
        self._d = zlib.decompressobj(wbits)
        self._wbits = wbits
        self._first = True
        self._data = b""  # compressed bytes not inflated yet
        self._ended = False

    def __aiter__(self) -> _Inflated:
        return self

    async def __anext__(self) -> bytes:
        while True:
            while self._data:
                out = self._step()
                if out:
                    return out
            if self._ended:
                raise StopAsyncIteration
            try:
                self._data = await self._body.__anext__()
            except StopAsyncIteration:
                self._ended = True
                if not self._d.eof and not self._first:
                    raise UpstreamBodyError("the compressed response body ends before its stream does") from None
                raise

    def _step(self) -> bytes:
        d = self._d
        try:
            out = d.decompress(self._data, _STEP)
        except zlib.error:
            if not (self._first and self._wbits == 15):
                raise UpstreamBodyError("the compressed response body is corrupt") from None
            self._d, self._wbits = zlib.decompressobj(-15), -15  # "deflate" sent as raw deflate
            return b""
        self._first = False
        data = d.unconsumed_tail
        if d.eof:
            data = d.unused_data
            if data:
                self._d = zlib.decompressobj(self._wbits)
        self._data = data
        return out


class _Stream(Protocol):
    """A scrubber of a switched connection's bytes: a ``FrameScrubber`` or a ``Scrubber``."""

    @property
    def scrubbed(self) -> int: ...

    def feed(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class ScrubbedSwitch:
    """The upstream side of a switched connection, read through a scrubber: what the tunnel pumps to the client.

    A WebSocket through a ``FrameScrubber``; any other protocol (``Upgrade: foo``) is
    bytes the proxy cannot frame, scrubbed as one stream (same lengths, so a length
    field in it stays true), its kept tail let go at the end.
    """

    def __init__(self, reader: ByteReader, stream: _Stream, rec: AccessRecord, early: bytes) -> None:
        self._reader = reader
        self._stream = stream
        self._rec = rec
        self._base = rec.scrubbed
        self._pending = self._feed(early) if early else b""
        self._ended = False

    def _feed(self, data: bytes) -> bytes:
        try:
            out = self._stream.feed(data)
        except FrameError as exc:
            raise ConnectionAbortedError(str(exc)) from None  # the tunnel cuts both sides
        self._rec.scrubbed = self._base + self._stream.scrubbed
        return out

    async def read(self, n: int = -1) -> bytes:
        if self._pending:
            out, self._pending = self._pending, b""
            return out
        while not self._ended:
            data = await self._reader.read(n)
            if not data:
                self._ended = True
                out = self._stream.flush()
                self._rec.scrubbed = self._base + self._stream.scrubbed
                return out
            out = self._feed(data)
            if out:
                return out
        return b""
