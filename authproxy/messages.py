"""The request and reply as the pipeline sees them, independent of the HTTP parser."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from authproxy.access import User
from authproxy.net.hosts import format_authority


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request goes (or came in for): scheme, host, port."""

    scheme: str
    host: str
    port: int

    @property
    def default_port(self) -> int:
        return 443 if self.scheme == "https" else 80

    @property
    def authority(self) -> str:
        return format_authority(self.host, self.port)


class BodySource(Protocol):
    """Where a request body's bytes come from: the client connection."""

    async def receive_body(self) -> bytes | None:
        """The next chunk, waiting for it; None at the body's end."""
        ...

    def body_at_hand(self) -> bytes | None:
        """The next chunk if it is already here, else b"" (no waiting); None at the body's end."""
        ...


class RequestBody:
    """The client's body, read on demand: buffered when small, else streamed once.

    Buffering up to ``limits.replay_body`` is what makes the 401 retry
    possible; a larger body streams through with memory bounded by one chunk.
    """

    __slots__ = ("_done", "_prefix", "_source", "buffered", "bytes_in", "error", "length")

    def __init__(self, source: BodySource, length: int | None) -> None:
        self._source = source
        self.length = length  # Content-Length, or None when chunked
        self.bytes_in = 0
        self.error: Exception | None = None  # why reading the client's body failed
        self._prefix: list[bytes] = []
        self._done = length == 0
        self.buffered: bytes | None = b"" if length == 0 else None

    @property
    def empty(self) -> bool:
        return self.length == 0

    async def _next(self) -> bytes | None:
        try:
            chunk = await self._source.receive_body()
        except Exception as exc:
            # The upstream client may wrap this in its own error; the pipeline
            # looks here to blame the client, not the upstream.
            self.error = exc
            raise
        return self._took(chunk)

    def _took(self, chunk: bytes | None) -> bytes | None:
        """Count a chunk read from the client; None is the body's end."""
        if chunk is None:
            self._done = True
        else:
            self.bytes_in += len(chunk)
        return chunk

    async def buffer(self, limit: int) -> bool:
        """Read the whole body if it fits in ``limit`` bytes; True when it did."""
        if self.buffered is not None:
            return True
        if self.length is not None and self.length > limit:
            return False
        size = sum(len(c) for c in self._prefix)
        while not self._done and size <= limit:
            chunk = await self._next()
            if chunk:
                self._prefix.append(chunk)
                size += len(chunk)
        if self._done and size <= limit:
            self.buffered = b"".join(self._prefix)
            self._prefix = []
            return True
        return False

    def ready(self) -> bytes | None:
        """Body bytes at hand, taken without waiting: b"" when none are, None once the body has all been taken.

        An upstream exchange sends them with the request head (h1client).
        """
        if self._prefix:
            return self._prefix.pop(0)
        if self._done:
            return None
        try:
            chunk = self._source.body_at_hand()
        except Exception as exc:
            self.error = exc
            raise
        return self._took(chunk)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Chunks(self)

    async def next_chunk(self) -> bytes | None:
        """What was read so far, then the rest as it arrives, a chunk at a time; None at the end."""
        if self._prefix:
            return self._prefix.pop(0)
        while not self._done:
            chunk = await self._next()
            if chunk:
                return chunk
        return None

    async def drain(self) -> None:
        """Read and drop what is left, so the connection can carry the next request."""
        self._prefix = []
        while not self._done:
            await self._next()


@dataclass(slots=True)
class ProxyRequest:
    method: str
    target: str  # the request-target as sent, decoded as latin-1
    headers: list[tuple[bytes, bytes]]  # as sent, original case
    body: RequestBody
    http_version: str = "1.1"
    # Set for requests inside an intercepted CONNECT: where the tunnel goes.
    tunnel: Origin | None = None
    user: User | None = None  # the proxy user, when proxy_auth is on


class ByteReader(Protocol):
    """What the upstream side of a switched connection is read through: a StreamReader, or a scrubbing one."""

    async def read(self, n: int = -1) -> bytes: ...


@dataclass(slots=True)
class Upgraded:
    """The upstream side of a switched (101) connection, and bytes it sent past the 101."""

    reader: ByteReader
    writer: asyncio.StreamWriter
    early: bytes


@dataclass(slots=True)
class Reply:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: AsyncIterator[bytes] | None = None
    release: Callable[[], None] = field(default=lambda: None)
    upgraded: Upgraded | None = None


class _Chunks:
    """A request body's chunks, iterated once (``async for``).

    A class, not an async generator, so that this module can be compiled (mypyc).
    """

    __slots__ = ("_body",)

    def __init__(self, body: RequestBody) -> None:
        self._body = body

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._body.next_chunk()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


class Replayed:
    """A body whose first chunks were read already (to peek at them): those again, then ``rest``.

    A class, not an async generator, so that the modules mypyc compiles can build one.
    """

    __slots__ = ("_head", "_rest")

    def __init__(self, head: list[bytes], rest: AsyncIterator[bytes] | None) -> None:
        self._head = head[::-1]  # popped from the end
        self._rest = rest

    def __aiter__(self) -> Replayed:
        return self

    async def __anext__(self) -> bytes:
        if self._head:
            return self._head.pop()
        if self._rest is None:
            raise StopAsyncIteration
        return await self._rest.__anext__()
