"""An upstream on raw sockets that sends a request's credential back, in pieces the test chooses.

Every body is written in several ``write``s with a drain between, split in
the middle of every spelling of the echoed value, so that the proxy reads
the value in two (or more) chunks. Paths:

- ``/json``: the request headers as JSON (plus the value Base64-, URL- and
  ``\\/``-encoded) with a Content-Length; ``/chunked``: the same, chunked;
- ``/gzip``: that JSON gzip-compressed whatever was asked; ``/br``: a body
  labelled ``Content-Encoding: br``;
- ``/sse``: three Server-Sent Events, each holding the value; before each
  event after the first it waits for ``gate`` (set by the test once the
  client has the previous one); ``/drip``: the same with chunks that are
  not events;
- ``/ws``: a WebSocket handshake (RFC 6455 §4.2.2), then a text message in
  three fragments with a ping between them, a binary message, and a Close;
- ``/switch``: a 101 to a protocol that is not WebSocket (``Upgrade: echo``),
  then the value in raw bytes, and the end of the connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import itertools
import json
import ssl
from dataclasses import dataclass, field
from urllib.parse import quote

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _split(body: bytes, value: bytes) -> list[bytes]:
    """``body`` cut in the middle of every spelling of ``value`` it holds."""
    cuts = set()
    for form in _forms(value):
        i = body.find(form)
        while i >= 0:
            cuts.add(i + len(form) // 2)
            i = body.find(form, i + 1)
    edges = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges) if b > a]


def _forms(value: bytes) -> list[bytes]:
    return [value, base64.b64encode(value), quote(value.decode(), safe="").encode(), value.replace(b"/", b"\\/")]


@dataclass
class RawEcho:
    """Echo the header ``name`` of each request, as the path says."""

    name: str
    ssl_ctx: ssl.SSLContext | None = None
    port: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    seen: list[dict[str, str]] = field(default_factory=list)
    _server: asyncio.Server | None = None

    async def start(self) -> RawEcho:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")
            path = line.split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}
            self.seen.append({"path": path, **headers})
            value = headers.get(self.name.lower(), "").encode()
            await getattr(self, "_" + path.strip("/").partition("?")[0])(writer, headers, value)
        writer.close()

    def _echo_body(self, headers: dict[str, str], value: bytes) -> bytes:
        text = json.dumps({"headers": headers, "b64": base64.b64encode(value).decode(), "url": quote(value)})
        return text.encode()[:-1] + b', "escaped": "' + value.replace(b"/", b"\\/") + b'"}'

    async def _send(self, writer: asyncio.StreamWriter, pieces: list[bytes], chunked: bool = False) -> None:
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
            await asyncio.sleep(0.005)  # so each piece travels on its own (nothing is measured)
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def _json(self, writer: asyncio.StreamWriter, headers: dict[str, str], value: bytes) -> None:
        body = self._echo_body(headers, value)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Echo: %s\r\nContent-Length: %d\r\n\r\n"
        writer.write(head % (value, len(body)))
        await self._send(writer, _split(body, value))

    async def _chunked(self, writer: asyncio.StreamWriter, headers: dict[str, str], value: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        await self._send(writer, _split(self._echo_body(headers, value), value), chunked=True)

    async def _gzip(self, writer: asyncio.StreamWriter, headers: dict[str, str], value: bytes) -> None:
        body = gzip.compress(self._echo_body(headers, value))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body))
        await self._send(writer, [body[: len(body) // 2], body[len(body) // 2 :]])

    async def _br(self, writer: asyncio.StreamWriter, headers: dict[str, str], value: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 4\r\n\r\n\x8b\x01\x80\x03")
        await writer.drain()

    async def _sse(self, writer: asyncio.StreamWriter, headers: dict[str, str], value: bytes) -> None:
        await self._stream(writer, value, b"text/event-stream", b'data: {"n": %d, "auth": "%s"}\n\n')

    async def _drip(self, writer: asyncio.StreamWriter, headers: dict[str, str], value: bytes) -> None:
        await self._stream(writer, value, b"text/plain", b"part %d holds %s.")

    async def _stream(self, writer: asyncio.StreamWriter, value: bytes, ctype: bytes, shape: bytes) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % ctype)
        for n in range(3):
            if n:
                await self.gate.wait()  # the client has event n-1: only now is event n produced
                self.gate.clear()
            for piece in _split(shape % (n, value), value):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.005)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _ws(self, writer: asyncio.StreamWriter, headers: dict[str, str], value: bytes) -> None:
        accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + _GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: %s\r\n\r\n" % accept
        )
        text = b"header: " + value + b" and again " + value
        a, b = len(b"header: ") + len(value) // 2, len(text) - len(value) // 3
        frames = [
            _frame(0x1, text[:a], fin=False),
            _frame(0x9, b"ping"),
            _frame(0x0, text[a:b], fin=False),
            _frame(0x0, text[b:]),
            _frame(0x2, b"\x00bin " + value + b" \xff"),
            _frame(0x8, b"\x03\xe8"),
        ]
        stream = b"".join(frames)
        await self._send(writer, _split(stream, value))

    async def _switch(self, writer: asyncio.StreamWriter, headers: dict[str, str], value: bytes) -> None:
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
        await self._send(writer, _split(b"raw " + value + b" end", value))


def _frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    assert len(payload) < 126
    return bytes([b0, len(payload)]) + payload
