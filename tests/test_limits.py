"""Each limit and timeout exceeded once: its precise status, and a log line."""

from __future__ import annotations

import asyncio
import contextlib
import json

from .conftest import Proxy, Upstream


async def _proxy(make_proxy, upstream: Upstream, extra: str) -> Proxy:
    return await make_proxy(
        f"""
        {extra}
        routes:
          - name: local
            match: {upstream.authority}
            auth: {{type: api_key, header: X-Key, value: "limits-key-000"}}
        """
    )


async def _exchange(p: Proxy, data: bytes, wait: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(data)
    out = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), wait):
            out += chunk
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return out


def _status(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1])


def _code(resp: bytes) -> str:
    return str(json.loads(resp.split(b"\r\n\r\n", 1)[1])["error"])


async def test_too_many_headers_is_431(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream, "limits: {max_headers: 10}")
    headers = "".join(f"X-H{i}: v\r\n" for i in range(20))
    resp = await _exchange(p, f"GET {upstream.url}/x HTTP/1.1\r\nHost: a\r\n{headers}\r\n".encode())
    assert _status(resp) == 431 and _code(resp) == "headers_too_large"
    assert "more than 10 header fields" in resp.decode()
    assert any("status=431" in line and "error=headers_too_large" in line for line in p.access_lines())


async def test_long_request_line_is_414(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream, "limits: {max_request_line: 1024}")
    resp = await _exchange(p, f"GET {upstream.url}/{'a' * 3000} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert _status(resp) == 414 and _code(resp) == "uri_too_long"
    assert upstream.seen == []


async def test_idle_keep_alive_connection_is_closed(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream, "timeouts: {idle: 0.5}")
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(f"GET {upstream.url}/x HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    # Nothing more is sent: the proxy closes the idle connection quietly.
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_client_tls_handshake_timeout(make_proxy, tls_upstream) -> None:
    up, ca = tls_upstream
    p = await make_proxy(
        f"""
        timeouts: {{tls_handshake: 0.5}}
        routes:
          - name: secure
            match: {up.authority}
            ca_file: {ca}
            auth: {{type: api_key, header: X-Key, value: "limits-key-000"}}
        """
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(f"CONNECT {up.authority} HTTP/1.1\r\nHost: {up.authority}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    # A handshake record begins (so the tunnel is TLS) and its ClientHello never comes:
    # after tls_handshake seconds the connection is closed.
    writer.write(b"\x16\x03\x01\x00\xc8")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    for _ in range(50):
        if any("CONNECT intercept" in x and "error=client_tls_failed" in x for x in p.access_lines()):
            break
        await asyncio.sleep(0.05)
    assert any("CONNECT intercept" in x and "error=client_tls_failed" in x for x in p.access_lines())


async def test_connect_timeout_to_an_unroutable_upstream_is_504_or_502(make_proxy, upstream) -> None:
    # A connect timeout, exercised on loopback with a listening socket whose backlog is full.
    import socket

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the accept queue so further SYNs wait
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    p = await _proxy(make_proxy, upstream, "timeouts: {connect: 0.5, upstream_headers: 2}")
    resp = await _exchange(p, f"GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: a\r\n\r\n".encode(), wait=15)
    # Linux may answer the SYN (queue overflow handling varies): either way the
    # proxy answers within its connect timeout, never hangs.
    assert _status(resp) in (502, 504)
    for s in fillers:
        s.close()
    lsock.close()


async def test_an_ipv4_mapped_client_counts_as_its_ipv4_address(make_proxy, upstream) -> None:
    """A dual-stack socket (handed over by a service manager, say) shows 127.0.0.1 as ::ffff:127.0.0.1."""
    import socket

    p = await _proxy(make_proxy, upstream, "limits: {max_connections_per_client: 1}")
    _held_reader, held_writer = await asyncio.open_connection("127.0.0.1", p.port)  # 127.0.0.1's one slot
    dual = socket.socket(socket.AF_INET6)
    dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    dual.bind(("::", 0))
    dual.listen()
    dual.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        for _ in range(100):
            if p.server.per_client.get("127.0.0.1") == 1:
                break
            await asyncio.sleep(0.02)
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", dual.getsockname()[1]))
        accepted, peer = await loop.sock_accept(dual)
        assert peer[0] == "::ffff:127.0.0.1"
        accepted.setblocking(False)
        await p.server._adopt(accepted)  # as the accept loop hands over a connection
        await loop.sock_sendall(client, f"GET {upstream.url}/x HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        out = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(client, 65536), 5):
            out += chunk
        client.close()
        assert _status(out) == 503 and _code(out) == "too_many_connections", out[:300]
        assert upstream.seen == []
    finally:
        dual.close()
        held_writer.close()
    assert any("status=503" in line and "error=too_many_connections" in line for line in p.access_lines())
