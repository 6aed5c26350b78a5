"""Closes pass through: a WebSocket's or a tunnel's end reaches the other side as an event.

Every test sets ``timeouts.idle`` to 30 s, and each client's own close
timeout to 30 s where it has one, so a close that the proxy does not pass on
can only end by one of those timeouts: the tests wait for the end at most
``CLOSE_WITHIN`` (10 s; a Node client run, 20 s), which only the close itself can bring.

- WebSocket echo upstreams (aiohttp), over TLS reached by an intercepted
  CONNECT (``wss://``) and over TCP on a gateway path (``ws://``), with Python
  ``websockets`` and Node's undici ``WebSocket``: the server closes and the
  client sees the Close frame and the connection's end; the client closes and
  the upstream sees the Close frame, the client then the connection's end;
  the client's connection ends without a Close frame and the upstream sees it.
- Raw bytes after a 101 on an intercepted TLS connection: all the upstream's
  bytes, then a clean close_notify (not a ragged EOF); and the other way round.
- A blind tunnel keeps TCP's half-close in both directions.
- An upstream closing its side of a pooled connection never ends the client's
  keep-alive connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import websockets
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect

from .conftest import Proxy
from .test_tools import NODE_DIR, _ensure_undici

IDLE = 30  # timeouts.idle, and each client's close timeout
CLOSE_WITHIN = 10.0  # well under IDLE: only the close event itself ends a test this soon
TOKEN = "close-test-bearer-7c41e9a0d2"
PAYLOAD = os.urandom(2 * 1024 * 1024 + 123)  # more than any buffer on the way holds


# --------------------------------------------------------------------------- upstreams


@dataclass
class WsUpstream:
    """A WebSocket echo server that records how each connection ended."""

    port: int = 0
    auth: list[str | None] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"


def _ws_app(up: WsUpstream) -> web.Application:
    async def ws(request: web.Request) -> web.StreamResponse:
        up.auth.append(request.headers.get("Authorization"))
        # timeout: how long aiohttp waits for the client's Close frame; the answer to the client's own is ours.
        sock = web.WebSocketResponse(timeout=IDLE, autoclose=False)
        await sock.prepare(request)
        while True:
            msg = await sock.receive()
            if msg.type == web.WSMsgType.TEXT and msg.data == "close":
                # RFC 6455 §7.1.1: after the Close frames, the server closes the TCP connection first.
                await sock.close(code=4001, message=b"server bye")
                up.events.append(("server-closed",))
                break
            if msg.type == web.WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
            elif msg.type == web.WSMsgType.CLOSE:
                up.events.append(("close-frame", msg.data, msg.extra))
                await sock.close(code=4002, message=b"server ack")  # then the TCP close, as above
                break
            else:
                up.events.append(("ended", msg.type.name))
                break
        up.ended.set()
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws)
    return app


@asynccontextmanager
async def _ws_upstream(tls: ssl.SSLContext | None) -> AsyncIterator[WsUpstream]:
    up = WsUpstream()
    runner = web.AppRunner(_ws_app(up), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    up.port = runner.addresses[0][1]
    try:
        yield up
    finally:
        await runner.cleanup()


@dataclass
class Tls:
    """A test CA (trustme) and a server context for 127.0.0.1 issued by it."""

    server: ssl.SSLContext
    ca_path: Path


@pytest.fixture
def upstream_tls(tmp_path: Path) -> Tls:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    path = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return Tls(ctx, path)


async def _proxy(make_proxy: Callable[[str], Any], secret_env: Callable[[str, str], str], routes: str) -> Proxy:
    secret_env("CLOSE_TOKEN", TOKEN)
    p: Proxy = await make_proxy(f"timeouts: {{idle: {IDLE}}}\nroutes:\n{routes}")
    p.secrets.add(TOKEN)
    return p


def _route(up_authority: str, extra: str = "") -> str:
    return f"  - name: ws\n    match: {up_authority}\n{extra}" + '    auth: {type: bearer, token: "${CLOSE_TOKEN}"}\n'


def _tls_route(up_authority: str, tls: Tls) -> str:
    return _route(up_authority, f"    ca_file: {tls.ca_path}\n")


def _gateway(up_authority: str) -> str:
    return (
        f"  - name: wsgw\n    gateway: /live\n    upstream: http://{up_authority}\n"
        '    auth: {type: bearer, token: "${CLOSE_TOKEN}"}\n'
    )


def _client_ctx(p: Proxy) -> ssl.SSLContext:
    assert p.runtime.ca is not None
    return ssl.create_default_context(cafile=str(p.runtime.ca.files.cert))


@asynccontextmanager
async def _ws_setup(
    mode: str, make_proxy: Callable[[str], Any], secret_env: Callable[[str, str], str], tls: Tls
) -> AsyncIterator[tuple[WsUpstream, Proxy, str, dict[str, Any]]]:
    """An echo upstream and a proxy; yields them, the URL a client opens and its connect() arguments.

    ``wss``: a TLS upstream reached by an intercepted CONNECT; ``ws``: a TCP
    upstream on a gateway path; ``ws-absolute``: a TCP upstream asked for in
    absolute form (TCP on both sides of the proxy for both).
    """
    async with _ws_upstream(tls.server if mode == "wss" else None) as up:
        if mode == "ws":
            p = await _proxy(make_proxy, secret_env, _gateway(up.authority))
            url = f"ws://127.0.0.1:{p.port}/live/ws"
            kw: dict[str, Any] = {"proxy": None}
        elif mode == "wss":
            p = await _proxy(make_proxy, secret_env, _tls_route(up.authority, tls))
            url = f"wss://{up.authority}/ws"
            kw = {"proxy": p.url, "ssl": _client_ctx(p)}
        else:
            p = await _proxy(make_proxy, secret_env, _route(up.authority))
            url = f"ws://{up.authority}/ws"
            kw = {"proxy": p.url}
        yield up, p, url, kw
    assert up.auth and all(a == f"Bearer {TOKEN}" for a in up.auth)


async def _open_ws(url: str, kw: dict[str, Any]) -> ClientConnection:
    ws = await connect(url, close_timeout=IDLE, open_timeout=CLOSE_WITHIN, **kw)
    await ws.send("hello")
    assert await asyncio.wait_for(ws.recv(), CLOSE_WITHIN) == "echo:hello"
    return ws


# --------------------------------------------------------------------------- Python websockets


@pytest.mark.parametrize("mode", ["wss", "ws"])
async def test_server_close_reaches_websockets_client(make_proxy, secret_env, upstream_tls, mode) -> None:
    """The client gets the server's Close frame, then its connection ends: not after its 30 s close timeout."""
    async with _ws_setup(mode, make_proxy, secret_env, upstream_tls) as (up, _, url, kw):
        ws = await _open_ws(url, kw)
        await ws.send("close")
        async with asyncio.timeout(CLOSE_WITHIN):
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            await ws.wait_closed()
        assert ws.protocol.close_rcvd is not None
        assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (4001, "server bye")
        assert up.events == [("server-closed",)]


@pytest.mark.parametrize("mode", ["wss", "ws"])
async def test_client_close_reaches_upstream(make_proxy, secret_env, upstream_tls, mode) -> None:
    """The upstream gets the client's Close frame and answers; the client's close() ends with the connection."""
    async with _ws_setup(mode, make_proxy, secret_env, upstream_tls) as (up, _, url, kw):
        ws = await _open_ws(url, kw)
        async with asyncio.timeout(CLOSE_WITHIN):
            await ws.close(code=4000, reason="client bye")  # returns once the TCP connection has closed
            await up.ended.wait()
        assert up.events == [("close-frame", 4000, "client bye")]
        assert ws.protocol.close_rcvd is not None
        assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (4002, "server ack")


@pytest.mark.parametrize("mode", ["wss", "ws"])
async def test_client_connection_end_reaches_upstream(make_proxy, secret_env, upstream_tls, mode) -> None:
    """A client whose connection ends without a Close frame (close_notify or FIN only): the upstream sees the end."""
    async with _ws_setup(mode, make_proxy, secret_env, upstream_tls) as (up, _, url, kw):
        ws = await _open_ws(url, kw)
        ws.transport.close()  # TLS: close_notify, then FIN; TCP: FIN
        async with asyncio.timeout(CLOSE_WITHIN):
            await up.ended.wait()
        assert up.events == [("ended", "CLOSED")]


# --------------------------------------------------------------------------- Node (undici)


async def _undici(url: str, who: str, proxy: str | None, ca: Path | None, absolute: bool) -> list[dict[str, Any]]:
    """Runs websocket_close.mjs; its events, one dict per line."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    if ca is not None:
        env["NODE_EXTRA_CA_CERTS"] = str(ca)
    argv = ["node", str(NODE_DIR / "websocket_close.mjs"), url, who]
    if proxy:
        argv += [proxy, "absolute" if absolute else "tunnel"]
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        # Shorter than IDLE: a close that waited for a timeout is killed here, and fails.
        out, err = await asyncio.wait_for(proc.communicate(), CLOSE_WITHIN * 2)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"node did not finish within {CLOSE_WITHIN * 2:g} s: the close did not come") from None
    assert proc.returncode == 0, f"node failed ({proc.returncode}):\n{out.decode()}\n{err.decode()[-2000:]}"
    return [json.loads(line) for line in out.decode().splitlines()]


@pytest.mark.timeout(300)  # npm ci, when node_modules is missing
@pytest.mark.parametrize("who", ["server", "client"])
@pytest.mark.parametrize("mode", ["wss", "ws", "ws-absolute"])
async def test_undici_websocket_sees_the_close(make_proxy, secret_env, upstream_tls, mode, who) -> None:
    """undici fires `close` only when the connection has ended, and has no close timeout: only the close ends it."""
    await _ensure_undici()
    async with _ws_setup(mode, make_proxy, secret_env, upstream_tls) as (up, p, url, _):
        proxy = None if mode == "ws" else p.url
        events = await _undici(url, who, proxy, _ca_file(p) if mode == "wss" else None, mode == "ws-absolute")
    assert events[0] == {"event": "message", "data": "echo:hello"}, events
    close = events[-1]
    assert close["event"] == "close" and close["wasClean"], events
    expected = (4001, "server bye") if who == "server" else (4002, "server ack")
    assert (close["code"], close["reason"]) == expected, events
    assert up.events == ([("server-closed",)] if who == "server" else [("close-frame", 4000, "client bye")])


def _ca_file(p: Proxy) -> Path:
    assert p.runtime.ca is not None
    return Path(p.runtime.ca.files.cert)


# --------------------------------------------------------------------------- raw TLS after a 101


class _TlsUpstreamThread:
    """A blocking TLS server for one connection: it reads an upgrade request, answers 101, then runs ``then``.

    Blocking sockets with ``suppress_ragged_eofs=False`` tell a clean
    close_notify (recv returns b"") from a connection cut without one
    (SSLEOFError), which an asyncio stream does not.
    """

    def __init__(self, ctx: ssl.SSLContext, then: Callable[[ssl.SSLSocket], None]) -> None:
        self.ctx, self.then = ctx, then
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.head = b""
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
            raw.settimeout(CLOSE_WITHIN)
            with self.ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False) as tls:
                self.head = _read_head(tls)
                tls.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: bytes\r\n\r\n")
                self.then(tls)
        except BaseException as exc:  # reported by the test, in its own thread
            self.error = exc
        finally:
            self.listener.close()

    async def join(self) -> None:
        await asyncio.to_thread(self.thread.join, CLOSE_WITHIN * 2)
        assert not self.thread.is_alive(), "the upstream thread did not finish"
        if self.error is not None:
            raise self.error


def _read_head(s: ssl.SSLSocket) -> bytes:
    """Reads byte by byte up to the blank line: nothing after the head is taken."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        assert b, f"the connection ended inside a head: {head!r}"
        head += b
    return head


def _upgraded_client(proxy_port: int, target: str, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """CONNECT, TLS with the proxy's leaf, an upgrade request and its 101: the socket, ready for raw bytes."""
    raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=CLOSE_WITHIN)
    raw.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += raw.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False)
    tls.sendall(f"GET /raw HTTP/1.1\r\nHost: {target}\r\nConnection: Upgrade\r\nUpgrade: bytes\r\n\r\n".encode())
    head = _read_head(tls)
    assert head.startswith(b"HTTP/1.1 101"), head
    return tls


async def test_raw_upstream_bytes_then_close_notify_reach_the_client(make_proxy, secret_env, upstream_tls) -> None:
    """The upstream sends 2 MiB and closes (close_notify): the client reads all of it, then a clean close_notify."""

    def send_then_close(tls: ssl.SSLSocket) -> None:
        tls.sendall(PAYLOAD)
        tls.unwrap()  # close_notify, then the proxy's own close_notify in answer

    up = _TlsUpstreamThread(upstream_tls.server, send_then_close)
    target = f"127.0.0.1:{up.port}"
    p = await _proxy(make_proxy, secret_env, _tls_route(target, upstream_tls))
    ctx = _client_ctx(p)

    def client() -> bytes:
        # Each recv waits at most CLOSE_WITHIN: a close_notify that never comes is a socket.timeout.
        with _upgraded_client(p.port, target, ctx) as tls:
            got = bytearray()
            while chunk := tls.recv(65536):  # b"" only on close_notify; a ragged end raises SSLEOFError
                got += chunk
            return bytes(got)

    got = await asyncio.to_thread(client)
    await up.join()
    assert got == PAYLOAD
    assert f"Bearer {TOKEN}".encode() in up.head


async def test_raw_client_bytes_then_close_notify_reach_the_upstream(make_proxy, secret_env, upstream_tls) -> None:
    """The client sends 2 MiB and closes (close_notify): the upstream reads all of it, then a clean close_notify."""
    received = bytearray()

    def read_to_close(tls: ssl.SSLSocket) -> None:
        while chunk := tls.recv(65536):  # a ragged end raises SSLEOFError, reported by join()
            received.extend(chunk)

    up = _TlsUpstreamThread(upstream_tls.server, read_to_close)
    target = f"127.0.0.1:{up.port}"
    p = await _proxy(make_proxy, secret_env, _tls_route(target, upstream_tls))
    ctx = _client_ctx(p)

    def client() -> None:
        tls = _upgraded_client(p.port, target, ctx)
        tls.sendall(PAYLOAD)
        raw = tls.unwrap()  # close_notify; returns when the proxy's close_notify answers it
        raw.close()

    await asyncio.to_thread(client)
    await up.join()
    assert bytes(received) == PAYLOAD


# --------------------------------------------------------------------------- blind tunnel half-close


@asynccontextmanager
async def _tcp_server(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _blind_tunnel(
    make_proxy: Callable[[str], Any], port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    p: Proxy = await make_proxy(
        f"""
        timeouts: {{idle: {IDLE}}}
        routes:
          - name: other
            match: api.example.com
            auth: {{type: api_key, value: "blind-tunnel-key"}}
        """
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSE_WITHIN)
    assert head.startswith(b"HTTP/1.1 200") and b"Connection established" in head
    return reader, writer


async def test_blind_tunnel_client_half_close_still_gets_the_answer(make_proxy) -> None:
    """The client sends its request and half-closes; the upstream answers after that EOF, and the answer arrives."""
    got: list[int] = []

    async def answer_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(len(await reader.read()))  # to EOF: the client's FIN, passed on
        writer.write(PAYLOAD)
        await writer.drain()
        writer.close()

    async with _tcp_server(answer_after_eof) as port:
        reader, writer = await _blind_tunnel(make_proxy, port)
        writer.write(b"q" * 300_000)
        writer.write_eof()
        async with asyncio.timeout(CLOSE_WITHIN):
            answer = await reader.read()  # to the upstream's FIN, passed on
        writer.close()
    assert got == [300_000]
    assert answer == PAYLOAD


async def test_blind_tunnel_upstream_half_close_still_takes_the_client_bytes(make_proxy) -> None:
    """The upstream sends and half-closes, then still reads: the client gets the bytes and EOF, and may answer."""
    got = asyncio.get_running_loop().create_future()

    async def send_then_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(PAYLOAD)
        writer.write_eof()
        got.set_result(await reader.read())
        writer.close()

    async with _tcp_server(send_then_read) as port:
        reader, writer = await _blind_tunnel(make_proxy, port)
        async with asyncio.timeout(CLOSE_WITHIN):
            first = await reader.read()  # to the upstream's FIN
            writer.write(b"after your EOF")
            writer.write_eof()
            answer = await got
            assert await reader.read() == b""
        writer.close()
    assert first == PAYLOAD
    assert answer == b"after your EOF"


# --------------------------------------------------------------------------- keep-alive vs. pooled upstream closes


@dataclass
class Closer:
    """An HTTP/1.1 upstream that closes each connection after one response, saying so or not."""

    say_close: bool
    connections: int = 0
    auth: list[bytes] = field(default_factory=list)
    closed: asyncio.Queue[int] = field(default_factory=asyncio.Queue)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = self.connections
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.auth += [line for line in head.split(b"\r\n") if line.lower().startswith(b"authorization:")]
            body = f"answer {n}".encode()
            close = b"Connection: close\r\n" if self.say_close else b""
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), close, body))
            await writer.drain()
        finally:
            # Without Connection: close this is an idle timeout the proxy learns of only by the FIN.
            writer.close()
            with suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
            self.closed.put_nowait(n)


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, target: str) -> bytes:
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(v) for k, _, v in (x.partition(b":") for x in head.split(b"\r\n")) if k.lower() == b"content-length"
    )
    assert b"connection: close" not in head.lower(), "the client's connection was to end with the upstream's"
    return await reader.readexactly(length)


@pytest.mark.parametrize("say_close", [True, False], ids=["connection-close", "silent-close"])
@pytest.mark.parametrize("mode", ["intercept", "plain"])
async def test_upstream_closing_pooled_connections_keeps_the_client_connection(
    make_proxy, secret_env, upstream_tls, mode, say_close
) -> None:
    """Three requests on one client connection, each upstream connection closed by the upstream after its answer."""
    up = Closer(say_close)
    server = await asyncio.start_server(
        up.handle, "127.0.0.1", 0, ssl=upstream_tls.server if mode == "intercept" else None
    )
    port = server.sockets[0].getsockname()[1]
    host = f"127.0.0.1:{port}"
    route = _tls_route(host, upstream_tls) if mode == "intercept" else _route(host)
    p = await _proxy(make_proxy, secret_env, route)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        if mode == "intercept":
            writer.write(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await writer.start_tls(_client_ctx(p), server_hostname="127.0.0.1")
            target = "/n"
        else:
            target = f"http://{host}/n"
        async with asyncio.timeout(CLOSE_WITHIN):
            for n in (1, 2, 3):
                assert await _get(reader, writer, host, target) == f"answer {n}".encode()
                # The upstream's side of that pooled connection is closed before the next request.
                assert await up.closed.get() == n
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert up.connections == 3
    assert up.auth == [f"Authorization: Bearer {TOKEN}".encode()] * 3
