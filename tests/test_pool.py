"""The upstream connection pool (authproxy.upstream.pool, authproxy.upstream.h1client) against real servers on 127.0.0.1.

Well-behaved upstreams are aiohttp servers whose accepted connections are
counted (an aiohttp low-level server behind our own protocol factory);
misbehaving ones are raw asyncio servers that say exactly the bytes a case
needs. Nothing here measures time: waits are for events, bounded only so a
bug fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from authproxy.config import Timeouts
from authproxy.errors import ProxyError, UpstreamError, UpstreamTimeout, UpstreamTLSError
from authproxy.http1.h1errors import UpstreamBodyError
from authproxy.http1.h1message import Response
from authproxy.messages import Origin
from authproxy.upstream.h1client import H1Connection
from authproxy.upstream.h1parse import HIGH_WATER
from authproxy.upstream.pool import Pool
from tests.support.liveness import alive

KEY = "pool-key-3c1d5e7f9a"
BIG = 64 * 1024 * 1024


# -- upstreams -------------------------------------------------------------------


@dataclass
class Counted:
    """An aiohttp upstream that counts the connections it accepted."""

    port: int = 0
    accepted: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"


async def _handler(up: Counted, request: web.BaseRequest) -> web.StreamResponse:
    up.requests.append({"method": request.method, "path": request.path_qs, "headers": dict(request.headers)})
    path = request.path
    if path == "/small":
        return web.Response(body=b"hello", headers={"X-Up": "yes"})
    if path == "/chunked":
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"one,", b"two,", b"three"):
            await resp.write(part)
        await resp.write_eof()
        return resp
    if path.startswith("/status/"):
        return web.Response(status=int(path.rsplit("/", 1)[1]))
    if path == "/close":
        return web.Response(body=b"bye", headers={"Connection": "close"})
    if path == "/big":
        size = int(request.query["size"])
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        block = b"b" * 65536
        for _ in range(size // len(block)):
            await resp.write(block)
        await resp.write_eof()
        return resp
    if path == "/upload":
        h = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            size += len(chunk)
        info = {
            "size": size,
            "sha256": h.hexdigest(),
            "te": request.headers.get("Transfer-Encoding"),
            "cl": request.headers.get("Content-Length"),
        }
        return web.json_response(info)
    return web.Response(status=404)


@contextlib.asynccontextmanager
async def counted(ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[Counted]:
    up = Counted()
    low = web.Server(lambda request: _handler(up, request), access_log=None)

    def factory() -> asyncio.Protocol:
        up.accepted += 1
        return low()

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0, ssl=ssl_ctx)
    up.port = server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        server.close()
        await low.shutdown(1.0)


Script = Callable[[int, bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Raw:
    """A raw asyncio upstream: ``script(n, head, reader, writer)`` answers the n-th request on a connection
    and returns whether the connection stays open."""

    port: int = 0
    accepted: int = 0
    heads: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # some connection saw our side close

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def raw(script: Script) -> AsyncIterator[Raw]:
    up = Raw()
    tasks: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        up.accepted += 1
        n = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    up.closed.set()  # the client closed (an idle pooled connection, say)
                    return
                up.heads.append(head)
                n += 1
                if not await script(n, head, reader, writer):
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            tasks.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    up.port = server.sockets[0].getsockname()[1]
    try:
        yield up
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.sleep(0)


def _reply(*lines: str, body: bytes = b"") -> bytes:
    return "".join(line + "\r\n" for line in lines).encode() + b"\r\n" + body


# -- the pool, used directly -----------------------------------------------------


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    p = Pool(Timeouts(connect=5, idle=30, upstream_headers=5), 64 * 1024)
    yield p
    await p.close()


def _origin(port: int, scheme: str = "http") -> Origin:
    return Origin(scheme, "127.0.0.1", port)


async def fetch(
    pool: Pool,
    port: int,
    path: str,
    method: str = "GET",
    body: bytes | AsyncIterator[bytes] | None = None,
    length: int | None = None,
    sslctx: ssl.SSLContext | None = None,
    head_timeout: float = 5.0,
) -> tuple[Response, bytes]:
    """One request through the pool; the body read to its end (which hands the connection back)."""
    scheme = "https" if sslctx is not None else "http"
    headers = [(b"Host", f"127.0.0.1:{port}".encode()), (b"X-Key", KEY.encode())]
    resp = await pool.request(_origin(port, scheme), sslctx, method, path, headers, body, length, head_timeout)
    data = b"".join([chunk async for chunk in resp])
    return resp, data


async def test_keep_alive_reuses_one_connection(pool: Pool) -> None:
    async with counted() as up:
        for _ in range(5):
            resp, data = await fetch(pool, up.port, "/small")
            assert (resp.status, resp.reason, data) == (200, b"OK", b"hello")
            assert (b"X-Up", b"yes") in resp.headers  # raw names, as received
        assert up.accepted == 1
        assert up.requests[0]["headers"]["X-Key"] == KEY
        # Two at once need two connections; both are kept for later.
        await asyncio.gather(fetch(pool, up.port, "/small"), fetch(pool, up.port, "/small"))
        await asyncio.gather(fetch(pool, up.port, "/small"), fetch(pool, up.port, "/small"))
        assert up.accepted == 2


async def test_chunked_response_is_dechunked_and_reused(pool: Pool) -> None:
    async with counted() as up:
        for _ in range(2):
            resp, data = await fetch(pool, up.port, "/chunked")
            assert data == b"one,two,three"
            assert any(n.lower() == b"transfer-encoding" for n, _ in resp.headers)
        assert up.accepted == 1


@pytest.mark.parametrize(("method", "path"), [("HEAD", "/small"), ("GET", "/status/204"), ("GET", "/status/304")])
async def test_bodiless_responses_end_at_the_head(pool: Pool, method: str, path: str) -> None:
    async with counted() as up:
        for _ in range(3):
            resp, data = await fetch(pool, up.port, path, method=method)
            assert data == b""
        assert up.accepted == 1
        if method == "HEAD":
            assert (b"Content-Length", b"5") in resp.headers  # the GET's length, no body


async def test_head_response_followed_by_body_bytes_is_not_reused(pool: Pool) -> None:
    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        # A broken server sends a body with its HEAD answer: those bytes must not
        # be read as the next response.
        w.write(_reply("HTTP/1.1 200 OK", "Content-Length: 5", body=b"hello"))
        return True

    async with raw(script) as up:
        for _ in range(2):
            _, data = await fetch(pool, up.port, "/", method="HEAD")
            assert data == b""
        assert up.accepted == 2


async def test_close_delimited_body_is_complete_and_not_reused(pool: Pool) -> None:
    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_reply("HTTP/1.1 200 OK", "X-A: b", body=b"until the end"))
        await w.drain()
        w.close()
        return False

    async with raw(script) as up:
        for _ in range(2):
            resp, data = await fetch(pool, up.port, "/")
            assert (resp.status, data) == (200, b"until the end")
        assert up.accepted == 2


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (_reply("HTTP/1.1 200 OK", "Connection: close", "Content-Length: 2", body=b"ok"), False),
        (_reply("HTTP/1.0 200 OK", "Content-Length: 2", body=b"ok"), False),
        (_reply("HTTP/1.0 200 OK", "Connection: keep-alive", "Content-Length: 2", body=b"ok"), True),
        (_reply("HTTP/1.1 200 OK", "Content-Length: 2", body=b"ok"), True),
    ],
    ids=["1.1-close", "1.0", "1.0-keep-alive", "1.1"],
)
async def test_reuse_follows_the_response(pool: Pool, answer: bytes, reused: bool) -> None:
    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(answer)
        return True

    async with raw(script) as up:
        for _ in range(2):
            _, data = await fetch(pool, up.port, "/")
            assert data == b"ok"
        assert up.accepted == (1 if reused else 2)


async def test_interim_responses_are_skipped(pool: Pool) -> None:
    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_reply("HTTP/1.1 100 Continue"))
        w.write(_reply("HTTP/1.1 103 Early Hints", "Link: </style.css>; rel=preload"))
        w.write(_reply("HTTP/1.1 201 Created", "X-Final: 1", "Content-Length: 4", body=b"done"))
        return True

    async with raw(script) as up:
        for _ in range(2):
            resp, data = await fetch(pool, up.port, "/")
            assert (resp.status, resp.reason, data) == (201, b"Created", b"done")
            assert resp.headers == [(b"X-Final", b"1"), (b"Content-Length", b"4")]  # none of the interim ones
        assert up.accepted == 1


async def test_large_download_pauses_the_socket_and_streams_in_bounded_chunks(pool: Pool) -> None:
    """The upstream gets stalled by TCP flow control while nobody reads: the pool paused the socket."""
    produced = 0
    stalled, finished = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    class Writer(asyncio.Protocol):
        """Writes one block per loop turn, so an unpaused reader keeps up with it to the end."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.t = transport

        def data_received(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                self.t.write(_reply("HTTP/1.1 200 OK", f"Content-Length: {BIG}"))
                self.pump()

        def pump(self) -> None:
            nonlocal produced
            if produced >= BIG:
                finished.set()
            elif not stalled.is_set():
                self.t.write(b"z" * 65536)
                produced += 65536
                loop.call_soon(self.pump)

        def pause_writing(self) -> None:
            stalled.set()  # kernel buffers and our own are full: the reader stopped reading

        def resume_writing(self) -> None:
            stalled.clear()
            self.pump()

    server = await loop.create_server(Writer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        headers = [(b"Host", f"127.0.0.1:{port}".encode())]
        resp = await pool.request(_origin(port), None, "GET", "/", headers, None, None, 5)
        waits = [asyncio.ensure_future(e.wait()) for e in (stalled, finished)]
        await asyncio.wait(waits, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        assert stalled.is_set(), "the whole body was read while nobody consumed it: the socket was not paused"
        assert produced < BIG // 4
        got, largest = 0, 0
        async for chunk in resp:
            got += len(chunk)
            largest = max(largest, len(chunk))
        assert got == BIG
        assert largest <= HIGH_WATER + 256 * 1024  # what was buffered, plus one read
    finally:
        server.close()


async def _blocks(n: int, size: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield bytes([65 + i % 26]) * size
        await asyncio.sleep(0)


@pytest.mark.parametrize("with_length", [False, True], ids=["chunked", "content-length"])
async def test_streamed_upload(pool: Pool, with_length: bool) -> None:
    n, size = 64, 128 * 1024
    expected = hashlib.sha256(b"".join([bytes([65 + i % 26]) * size for i in range(n)])).hexdigest()
    async with counted() as up:
        length = n * size if with_length else None
        resp, data = await fetch(pool, up.port, "/upload", "POST", _blocks(n, size), length)
        info = json.loads(data)
        assert resp.status == 200 and info["size"] == n * size and info["sha256"] == expected
        if with_length:
            assert (info["te"], info["cl"]) == (None, str(n * size))
        else:
            assert (info["te"], info["cl"]) == ("chunked", None)
        # Bytes and no body are framed with Content-Length (0 for a POST, none for a GET).
        _, data = await fetch(pool, up.port, "/upload", "POST", b"abc")
        assert json.loads(data)["cl"] == "3"
        _, data = await fetch(pool, up.port, "/upload", "POST")
        assert json.loads(data)["cl"] == "0"
        _, data = await fetch(pool, up.port, "/upload")
        assert json.loads(data)["cl"] is None
        assert up.accepted == 1


def _stale_second_request(keep: bool) -> Script:
    """Answers the first request on a connection; then closes without answering (an idle timeout
    racing our next request), unless ``keep``."""

    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if head.startswith(b"POST") and b"content-length: 2" in head.lower():
            await r.readexactly(2)
        if n == 1 or keep:
            w.write(_reply("HTTP/1.1 200 OK", "Content-Length: 2", body=b"ok"))
            return True
        return False

    return script


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_idempotent_request_on_a_stale_connection_is_resent_once(pool: Pool, method: str) -> None:
    async with raw(_stale_second_request(keep=False)) as up:
        await fetch(pool, up.port, "/one", method, b"hi" if method == "PUT" else None)
        resp, data = await fetch(pool, up.port, "/two", method, b"hi" if method == "PUT" else None)
        assert (resp.status, data) == (200, b"ok")
        assert up.accepted == 2
        assert [h.split(b" ")[1] for h in up.heads] == [b"/one", b"/two", b"/two"]


async def test_post_on_a_stale_connection_is_not_resent(pool: Pool) -> None:
    async with raw(_stale_second_request(keep=False)) as up:
        await fetch(pool, up.port, "/one", "POST", b"hi")
        with pytest.raises(UpstreamError) as err:
            await fetch(pool, up.port, "/two", "POST", b"hi")
        assert err.value.detail == f"{up.authority} closed the connection without answering."
        assert len(up.heads) == 2


async def test_streamed_body_on_a_stale_connection_is_not_resent(pool: Pool) -> None:
    async with raw(_stale_second_request(keep=False)) as up:
        await fetch(pool, up.port, "/one", "PUT", b"hi")
        with pytest.raises(UpstreamError):
            await fetch(pool, up.port, "/two", "PUT", _blocks(1, 2), 2)
        assert len(up.heads) == 2


async def test_closed_without_answering_on_a_fresh_connection_is_not_resent(pool: Pool) -> None:
    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        return False

    async with raw(script) as up:
        with pytest.raises(UpstreamError) as err:
            await fetch(pool, up.port, "/")
        assert err.value.detail == f"{up.authority} closed the connection without answering."
        assert up.accepted == 1


async def test_reset_mid_body_raises_a_connection_error(pool: Pool) -> None:
    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_reply("HTTP/1.1 200 OK", "Content-Length: 100000", body=b"x" * 5000))
        await w.drain()
        await asyncio.sleep(0.05)
        w.transport.abort()
        return False

    async with raw(script) as up:
        headers = [(b"Host", up.authority.encode())]
        resp = await pool.request(_origin(up.port), None, "GET", "/", headers, None, None, 5)
        got = 0
        with pytest.raises(UpstreamBodyError) as err:
            async for chunk in resp:
                got += len(chunk)
        assert got == 5000
        assert isinstance(err.value, ConnectionError)  # what the server treats as "upstream broke off"


async def test_unfinished_response_release_closes_the_connection(pool: Pool) -> None:
    async with counted() as up:
        headers = [(b"Host", up.authority.encode())]
        resp = await pool.request(_origin(up.port), None, "GET", f"/big?size={BIG}", headers, None, None, 5)
        resp.release()
        _, data = await fetch(pool, up.port, "/small")
        assert data == b"hello" and up.accepted == 2


async def test_head_timeout_and_stalled_body(pool: Pool) -> None:
    stall = asyncio.Event()

    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if b"/body" in head:
            w.write(_reply("HTTP/1.1 200 OK", "Content-Length: 10", body=b"12345"))
        await stall.wait()
        return False

    short = Pool(Timeouts(connect=5, idle=0.3, upstream_headers=5), 64 * 1024)
    try:
        async with raw(script) as up:
            with pytest.raises(UpstreamTimeout) as err:
                await fetch(short, up.port, "/head", head_timeout=0.3)
            assert err.value.detail == f"{up.authority} did not answer within 0.3 s."
            with pytest.raises(UpstreamBodyError):
                await fetch(short, up.port, "/body")
            stall.set()
    finally:
        await short.close()


async def test_a_reused_connection_watches_its_body_by_the_idle_timeout_not_an_old_head_deadline() -> None:
    """The connection's one timer is left set after an exchange; a later stalled body must still be caught.

    The head deadline (60 s) would fire long after the guard below; the body
    stall (0.3 s without a byte) is what must end the second exchange.
    """
    release = asyncio.Event()

    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if b"/stall" in head:
            w.write(_reply("HTTP/1.1 200 OK", "Content-Length: 10", body=b"12345"))
            await release.wait()
            return False
        w.write(_reply("HTTP/1.1 200 OK", "Content-Length: 2", body=b"ok"))
        return True

    short = Pool(Timeouts(connect=5, idle=0.3, upstream_headers=60), 64 * 1024)
    try:
        async with raw(script) as up:
            _, data = await fetch(short, up.port, "/first", head_timeout=60)
            assert data == b"ok"
            with pytest.raises(UpstreamBodyError):
                await asyncio.wait_for(fetch(short, up.port, "/stall", head_timeout=60), 20)
            assert up.accepted == 1, "the stalled request did not reuse the first connection"
            release.set()
    finally:
        await short.close()


async def test_idle_connections_expire_and_close_with_the_pool() -> None:
    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_reply("HTTP/1.1 200 OK", "Content-Length: 2", body=b"ok"))
        return True

    short = Pool(Timeouts(connect=5, idle=0.2, upstream_headers=5), 64 * 1024)
    try:
        async with raw(script) as up:
            await fetch(short, up.port, "/")
            await asyncio.wait_for(up.closed.wait(), 10)  # the pool closed its idle connection
            up.closed.clear()
            await fetch(short, up.port, "/")
            assert up.accepted == 2
            await short.close()
            await asyncio.wait_for(up.closed.wait(), 10)
    finally:
        await short.close()


async def test_a_closed_connection_is_freed_without_the_cycle_collector(pool: Pool) -> None:
    """Freed by reference counting alone: a cycle would keep its buffers until a full collection."""
    async with counted() as up:
        gc.disable()
        try:
            headers = [(b"Host", up.authority.encode())]
            resp = await pool.request(_origin(up.port), None, "GET", "/close", headers, None, None, 5)
            conn_id = id(next(iter(pool._all)))
            assert alive(conn_id, H1Connection)
            assert b"".join([chunk async for chunk in resp]) == b"bye"
            del resp
            for _ in range(100):  # loop turns, until connection_lost has run
                if not alive(conn_id, H1Connection):
                    break
                await asyncio.sleep(0)
            assert not alive(conn_id, H1Connection)
        finally:
            gc.enable()


@pytest.mark.parametrize(("size", "ok"), [(60 * 1024, True), (100 * 1024, False), (400 * 1024, False)])
async def test_response_head_is_bounded(pool: Pool, size: int, ok: bool) -> None:
    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_reply("HTTP/1.1 200 OK", "X-Big: " + "h" * size, "Content-Length: 2", body=b"ok"))
        return True

    async with raw(script) as up:
        if ok:
            _, data = await fetch(pool, up.port, "/")
            assert data == b"ok"
        else:
            with pytest.raises(UpstreamError) as err:
                await fetch(pool, up.port, "/")
            assert err.value.detail == f"{up.authority} sent a malformed response (the response head is too large)."


async def test_a_header_with_a_line_break_is_never_sent(pool: Pool) -> None:
    async with counted() as up:
        headers = [(b"Host", up.authority.encode()), (b"X-A", b"a\r\nX-Smuggled: 1")]
        with pytest.raises(ProxyError):
            await pool.request(_origin(up.port), None, "GET", "/small", headers, None, None, 5)
        assert up.accepted == 0


# -- TLS ---------------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    ca_path = tmp_path / "pool-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return server_ctx, ca_path


async def test_tls_upstream_with_a_route_ca_file(make_proxy, secret_env, tls) -> None:
    server_ctx, ca_path = tls
    secret_env("POOL_KEY", KEY)
    async with counted(server_ctx) as up:
        p = await make_proxy(
            f"""
            routes:
              - name: pinned
                gateway: /p
                upstream: https://{up.authority}
                ca_file: {ca_path}
                auth: {{type: api_key, header: X-Key, value: "${{POOL_KEY}}"}}
            """
        )
        p.secrets.add(KEY)
        for _ in range(3):
            resp = await _raw_get(p.port, "/p/small")
            assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(b"hello")
        assert up.accepted == 1
        assert [r["headers"]["X-Key"] for r in up.requests] == [KEY] * 3


async def test_tls_verification_failure_says_why(make_proxy, secret_env, tls) -> None:
    server_ctx, _ = tls
    secret_env("POOL_KEY", KEY)
    async with counted(server_ctx) as up:
        p = await make_proxy(
            f"""
            routes:
              - name: unpinned
                gateway: /u
                upstream: https://{up.authority}
                auth: {{type: api_key, header: X-Key, value: "${{POOL_KEY}}"}}
            """
        )
        p.secrets.add(KEY)
        resp = await _raw_get(p.port, "/u/small")
        body = json.loads(resp.split(b"\r\n\r\n", 1)[1])
        p.bodies.append(json.dumps(body))
        assert resp.startswith(b"HTTP/1.1 502")
        assert body["error"] == "upstream_tls_error"
        assert body["detail"] == (
            f"the certificate of {up.authority} failed verification: unable to get local issuer certificate."
        )
        assert up.requests == []


async def test_tls_pool_used_directly(pool: Pool, tls) -> None:
    server_ctx, ca_path = tls
    client_ctx = ssl.create_default_context(cafile=str(ca_path))
    async with counted(server_ctx) as up:
        for _ in range(2):
            _, data = await fetch(pool, up.port, "/chunked", sslctx=client_ctx)
            assert data == b"one,two,three"
        assert up.accepted == 1
        with pytest.raises(UpstreamTLSError) as err:
            await fetch(pool, up.port, "/small", sslctx=ssl.create_default_context())
        assert "failed verification" in err.value.detail


# -- through the proxy -------------------------------------------------------------


async def _raw_get(port: int, target: str, host: str = "a") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()


async def _proxy_for(make_proxy, secret_env, authority: str) -> Any:
    secret_env("POOL_KEY", KEY)
    p = await make_proxy(
        f"""
        timeouts: {{upstream_headers: 2}}
        routes:
          - name: up
            match: {authority}
            auth: {{type: api_key, header: X-Key, value: "${{POOL_KEY}}"}}
        """
    )
    p.secrets.add(KEY)
    return p


async def test_malformed_status_line_is_a_clean_502(make_proxy, secret_env) -> None:
    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 2x0 " + KEY.encode() + b"\r\nContent-Length: 0\r\n\r\n")
        return True

    async with raw(script) as up:
        p = await _proxy_for(make_proxy, secret_env, up.authority)
        resp = await _raw_get(p.port, f"http://{up.authority}/x")
        body = json.loads(resp.split(b"\r\n\r\n", 1)[1])
        p.bodies.append(json.dumps(body))
        assert resp.startswith(b"HTTP/1.1 502")
        assert body == {
            "error": "upstream_error",
            "route": "up",
            "detail": f"{up.authority} sent a malformed response (Invalid status code).",
        }


async def test_malformed_header_message_holds_no_header_value(make_proxy, secret_env) -> None:
    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: " + KEY.encode() + b"\x01\r\nContent-Length: 0\r\n\r\n")
        return True

    async with raw(script) as up:
        p = await _proxy_for(make_proxy, secret_env, up.authority)
        resp = await _raw_get(p.port, f"http://{up.authority}/x")
        assert resp.startswith(b"HTTP/1.1 502")
        p.bodies.append(resp.decode("latin-1"))  # the fixture greps it for the key


async def test_reset_mid_body_cuts_the_client(make_proxy, secret_env) -> None:
    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_reply("HTTP/1.1 200 OK", "Content-Length: 100000", body=b"x" * 5000))
        await w.drain()
        await asyncio.sleep(0.05)
        w.transport.abort()
        return False

    async with raw(script) as up:
        p = await _proxy_for(make_proxy, secret_env, up.authority)
        resp = await _raw_get(p.port, f"http://{up.authority}/x")
        head, _, body = resp.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 100000" in head.lower()
        assert 0 < len(body) < 100000  # cut short, never padded
        assert "error=upstream_broke_off" in p.access_lines()[-1]


async def test_proxy_shutdown_closes_pooled_connections(make_proxy, secret_env) -> None:
    async def script(n: int, head: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(_reply("HTTP/1.1 200 OK", "Content-Length: 2", body=b"ok"))
        return True

    async with raw(script) as up:
        p = await _proxy_for(make_proxy, secret_env, up.authority)
        for _ in range(2):
            assert (await _raw_get(p.port, f"http://{up.authority}/x")).endswith(b"ok")
        assert up.accepted == 1
        await p.server.drain(1.0)
        await p.runtime.close()
        await asyncio.wait_for(up.closed.wait(), 10)


async def test_a_reused_connection_asks_nothing_of_the_running_loop(pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython's get_running_loop() makes a getpid() system call each time (it checks the loop
    belongs to this process): the pool asks once per new connection, never per request."""
    real = asyncio.get_running_loop
    callers: list[str] = []

    def counting() -> asyncio.AbstractEventLoop:
        callers.append(sys._getframe(1).f_code.co_filename)
        return real()

    async with counted() as up:
        await fetch(pool, up.port, "/small")  # the connection is made, and learns its loop
        monkeypatch.setattr(asyncio, "get_running_loop", counting)
        for _ in range(20):
            resp, data = await fetch(pool, up.port, "/small")
            assert (resp.status, data) == (200, b"hello")
        monkeypatch.undo()
        assert up.accepted == 1
    assert callers == []
