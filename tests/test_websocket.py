"""WebSockets through the proxy: the handshake gets the credential (and the 401 rule), then frames flow."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from .conftest import Proxy, Upstream

TOKEN = "ws-bearer-token-8080"


def _guard(up: Upstream) -> None:
    up.check_auth = lambda h: h == f"Bearer {TOKEN}"


async def _echo(session: aiohttp.ClientSession, url: str, **kw: object) -> list[str]:
    async with session.ws_connect(url, **kw) as ws:  # type: ignore[arg-type]
        await ws.send_str("hello")
        first = await ws.receive_str(timeout=10)
        await ws.send_bytes(b"\x00\x01" * 40000)
        second = await ws.receive_bytes(timeout=10)
        await ws.send_str("bye")
        third = await ws.receive_str(timeout=10)
    assert second == b"\x00\x01" * 40000
    return [first, third]


async def _proxy(make_proxy, match: str, secret_env, extra: str = "") -> Proxy:
    secret_env("WS_TOKEN", TOKEN)
    p = await make_proxy(
        f"""
        routes:
          - name: ws
            match: {match}
            {extra}
            auth: {{type: bearer, token: "${{WS_TOKEN}}"}}
        """
    )
    p.secrets.add(TOKEN)
    return p


async def test_plain_ws_through_proxy(make_proxy, upstream: Upstream, secret_env) -> None:
    _guard(upstream)
    p = await _proxy(make_proxy, upstream.authority, secret_env)
    async with aiohttp.ClientSession() as s:
        got = await _echo(s, f"ws://{upstream.authority}/ws", proxy=p.url)
    assert got == ["echo:hello", "echo:bye"]
    assert [v for k, v in upstream.seen[-1]["headers"] if k == "Authorization"] == [f"Bearer {TOKEN}"]


async def test_wss_through_intercepted_connect(make_proxy, tls_upstream, secret_env) -> None:
    up, ca_path = tls_upstream
    _guard(up)
    p = await _proxy(make_proxy, up.authority, secret_env, f"ca_file: {ca_path}")
    assert p.runtime.ca is not None
    ctx = ssl.create_default_context(cafile=str(p.runtime.ca.files.cert))
    async with aiohttp.ClientSession() as s:
        got = await _echo(s, f"wss://{up.authority}/ws", proxy=p.url, ssl=ctx)
    assert got == ["echo:hello", "echo:bye"]
    for _ in range(100):  # the line is written when the socket closes
        if any("GET intercept" in x and "status=101" in x for x in p.access_lines()):
            break
        await asyncio.sleep(0.05)
    assert any("GET intercept" in x and "status=101" in x for x in p.access_lines())


async def test_ws_in_gateway_mode(make_proxy, upstream: Upstream, secret_env) -> None:
    _guard(upstream)
    secret_env("WS_TOKEN", TOKEN)
    p = await make_proxy(
        f"""
        routes:
          - name: wsgw
            gateway: /live
            upstream: http://{upstream.authority}
            auth: {{type: bearer, token: "${{WS_TOKEN}}"}}
        """
    )
    p.secrets.add(TOKEN)
    async with aiohttp.ClientSession() as s:
        got = await _echo(s, f"ws://127.0.0.1:{p.port}/live/ws")
    assert got == ["echo:hello", "echo:bye"]


async def test_ws_handshake_refused_is_relayed(make_proxy, upstream: Upstream, secret_env) -> None:
    upstream.check_auth = lambda h: False
    p = await _proxy(make_proxy, upstream.authority, secret_env)
    async with aiohttp.ClientSession() as s:
        try:
            await s.ws_connect(f"ws://{upstream.authority}/ws", proxy=p.url)
            raise AssertionError("the handshake should have been refused")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 401
    assert "retry=skipped" not in p.access_lines()[-1]  # a literal bearer never retries


async def test_ws_handshake_401_forces_one_refresh_and_retry(
    make_proxy, upstream: Upstream, oauth_server, secret_env
) -> None:
    secret_env("WS_CC", "ws-cc-secret-123456")
    oauth_server.add_client("ws", "ws-cc-secret-123456")
    upstream.check_auth = lambda h: bool(h and h.startswith("Bearer ") and oauth_server.is_valid(h[7:]))
    p = await make_proxy(
        f"""
        routes:
          - name: wsoauth
            match: {upstream.authority}
            auth: {{type: client_credentials, token_url: {oauth_server.token_url}, client_id: ws,
                    client_secret: "${{WS_CC}}"}}
        """
    )
    p.secrets.add("ws-cc-secret-123456")
    async with aiohttp.ClientSession() as s:
        assert await _echo(s, f"ws://{upstream.authority}/ws", proxy=p.url) == ["echo:hello", "echo:bye"]
        oauth_server.revoke_all()
        assert await _echo(s, f"ws://{upstream.authority}/ws", proxy=p.url) == ["echo:hello", "echo:bye"]
    assert oauth_server.token_requests() == 2
    p.secrets.update(oauth_server.issued())


async def test_bytes_the_upstream_sends_with_its_101_reach_the_client(make_proxy, secret_env) -> None:
    """An upstream may write its first frames in the same segment as the 101 head: none may be lost."""
    seen: list[bytes] = []
    frame = b"\x81\x05hello"  # a final text frame, unmasked, as a server sends it (RFC 6455 §5.2)

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        seen.append(await r.readuntil(b"\r\n\r\n"))
        w.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n" + frame
        )
        await w.drain()
        seen.append(await r.read(100))  # what the client sends after the switch
        w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    p = await _proxy(make_proxy, f"127.0.0.1:{port}", secret_env)
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(
        f"GET http://127.0.0.1:{port}/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert await asyncio.wait_for(reader.readexactly(len(frame)), 10) == frame
    writer.write(b"\x88\x80abcd")  # a masked close frame from the client
    await writer.drain()
    for _ in range(100):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.05)
    assert f"Bearer {TOKEN}".encode() in seen[0]
    assert seen[1] == b"\x88\x80abcd"
    writer.close()
    server.close()
