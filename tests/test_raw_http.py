"""Hand-made bytes on a raw socket: exact statuses, closes, and framing rules."""

from __future__ import annotations

import asyncio
import json

import pytest

from .conftest import Proxy, Upstream


async def _open(p: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", p.port)


async def _exchange(p: Proxy, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    reader, writer = await _open(p)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), read_timeout)
            if not chunk:
                break
            out += chunk
    except TimeoutError:
        pass
    writer.close()
    return out


def _status(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1])


def _json(resp: bytes) -> dict:
    return json.loads(resp.split(b"\r\n\r\n", 1)[1].split(b"\r\n\r\n")[0])


async def _proxy(make_proxy, upstream: Upstream, extra: str = "") -> Proxy:
    return await make_proxy(
        f"""
        {extra}
        routes:
          - name: local
            match: {upstream.authority}
            auth: {{type: api_key, header: X-Key, value: "raw-test-key-123"}}
        """
    )


async def test_cl_and_te_together_is_400_and_close(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream)
    resp = await _exchange(
        p,
        f"POST {upstream.url}/x HTTP/1.1\r\nHost: {upstream.authority}\r\nContent-Length: 5\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
    )
    assert _status(resp) == 400
    assert b"connection: close" in resp.lower()
    assert _json(resp)["error"] == "bad_request"
    assert upstream.seen == []


async def test_te_on_http10_is_400(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream)
    resp = await _exchange(p, f"POST {upstream.url}/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode())
    assert _status(resp) == 400


async def test_unknown_transfer_encoding_is_501(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream)
    resp = await _exchange(p, f"POST {upstream.url}/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".encode())
    assert _status(resp) == 501
    assert _json(resp)["error"] == "not_implemented"


async def test_headers_too_large_is_431(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream, "limits: {max_header_bytes: 4096}")
    big = "X-Big: " + "a" * 8000 + "\r\n"
    resp = await _exchange(p, f"GET {upstream.url}/x HTTP/1.1\r\nHost: a\r\n{big}\r\n".encode())
    assert _status(resp) == 431
    assert _json(resp)["error"] == "headers_too_large"


async def test_slow_headers_get_408(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream, "timeouts: {client_header: 0.5}")
    resp = await _exchange(p, f"GET {upstream.url}/x HTTP/1.1\r\nHost: a\r\n".encode())
    assert _status(resp) == 408
    assert _json(resp)["error"] == "client_timeout"


@pytest.mark.parametrize(
    "line",
    [b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"],
)
async def test_malformed_request_is_400(make_proxy, upstream, line: bytes) -> None:
    p = await _proxy(make_proxy, upstream)
    resp = await _exchange(p, line)
    assert _status(resp) == 400


async def test_origin_form_without_gateway_is_400(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream)
    resp = await _exchange(p, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(resp) == 400
    assert "gateway" in _json(resp)["detail"]


async def test_proxy_loop_is_refused(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream)
    resp = await _exchange(p, f"GET http://127.0.0.1:{p.port}/x HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert _status(resp) == 400
    assert "loop" in _json(resp)["detail"]


async def test_expect_100_continue_answered_by_proxy(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream)
    reader, writer = await _open(p)
    writer.write(
        f"POST {upstream.url}/e HTTP/1.1\r\nHost: {upstream.authority}\r\nContent-Length: 4\r\n"
        "Expect: 100-continue\r\n\r\n".encode()
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"body")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()
    names = [k.lower() for k, _ in upstream.seen[-1]["headers"]]
    assert "expect" not in names
    assert upstream.seen[-1]["body_size"] == 4


async def test_pipelined_requests_answered_in_order(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream)
    req = f"GET {upstream.url}/p1 HTTP/1.1\r\nHost: {upstream.authority}\r\n\r\n"
    req2 = f"GET {upstream.url}/p2 HTTP/1.1\r\nHost: {upstream.authority}\r\nConnection: close\r\n\r\n"
    resp = await _exchange(p, (req + req2).encode())
    assert resp.count(b"HTTP/1.1 200") == 2
    assert resp.index(b'"/p1"') < resp.index(b'"/p2"')


async def test_pipelined_after_a_chunked_body_and_an_unusual_head(make_proxy, upstream) -> None:
    """The server frames bodies itself so that the next pipelined head starts where a chunked body ended;
    a head llhttp refuses but the grammar allows (bare LF) takes the other path and the loop goes on."""
    p = await _proxy(make_proxy, upstream)
    a = upstream.authority
    req1 = f"POST {upstream.url}/c1 HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\n\r\n"
    req1 += "5;x=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"
    req2 = f"GET {upstream.url}/c2 HTTP/1.1\nHost: {a}\n\n"
    req3 = f"GET {upstream.url}/c3 HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n"
    resp = await _exchange(p, (req1 + req2 + req3).encode())
    assert resp.count(b"HTTP/1.1 200") == 3, resp[:500]
    assert resp.index(b'"/c1"') < resp.index(b'"/c2"') < resp.index(b'"/c3"')
    assert [s["path"] for s in upstream.seen] == ["/c1", "/c2", "/c3"]
    assert upstream.seen[0]["body_size"] == 5


async def test_http10_client_gets_close_delimited_answer(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream)
    resp = await _exchange(p, f"GET {upstream.url}/big?size=1000&chunked=1 HTTP/1.0\r\n\r\n".encode())
    assert resp.startswith(b"HTTP/1.1 200")
    head, body = resp.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head.lower()
    assert body == b"x" * 1000


async def test_connect_without_port_and_bad_target_are_400(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream)
    for target in (b"example.com", b"[::1", b"exa mple.com:443", b"example.com:99999"):
        resp = await _exchange(p, b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status(resp) == 400, target


async def test_connect_to_unmatched_is_a_blind_tunnel(make_proxy, upstream) -> None:
    p = await make_proxy(
        """
        routes:
          - name: other
            match: api.example.com
            auth: {type: api_key, value: "tunnel-test-key"}
        """
    )
    reader, writer = await _open(p)
    writer.write(f"CONNECT {upstream.authority} HTTP/1.1\r\nHost: {upstream.authority}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.write(f"GET /through HTTP/1.1\r\nHost: {upstream.authority}\r\nConnection: close\r\n\r\n".encode())
    body = await asyncio.wait_for(reader.read(), 5)
    assert b"HTTP/1.1 200" in body and b'"/through"' in body
    writer.close()
    names = [k.lower() for k, _ in upstream.seen[-1]["headers"]]
    assert "x-api-key" not in names and "authorization" not in names
    for _ in range(20):
        if any("CONNECT tunnel" in line for line in p.access_lines()):
            break
        await asyncio.sleep(0.05)
    assert any("CONNECT tunnel" in line and "status=200" in line for line in p.access_lines())


async def test_connect_under_deny_is_403(make_proxy, upstream) -> None:
    p = await make_proxy(
        """
        unmatched: deny
        routes:
          - name: other
            match: api.example.com
            auth: {type: api_key, value: "tunnel-test-key"}
        """
    )
    resp = await _exchange(p, f"CONNECT {upstream.authority} HTTP/1.1\r\nHost: {upstream.authority}\r\n\r\n".encode())
    assert _status(resp) == 403


async def test_upstream_timeout_is_504(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream, "timeouts: {upstream_headers: 0.5}")
    resp = await _exchange(p, f"GET {upstream.url}/hang HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    assert _status(resp) == 504
    assert _json(resp) == {
        "error": "upstream_timeout",
        "route": "local",
        "detail": f"{upstream.authority} did not answer within 0.5 s.",
    }


async def test_upstream_refused_is_502(make_proxy, upstream) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    p = await _proxy(make_proxy, upstream)
    resp = await _exchange(
        p, f"GET http://127.0.0.1:{dead}/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode()
    )
    assert _status(resp) == 502
    assert _json(resp)["error"] == "upstream_error"
    assert f"127.0.0.1:{dead}" in _json(resp)["detail"]


async def test_upstream_reset_mid_body_aborts_only_that_client(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream)
    resp = await _exchange(p, f"GET {upstream.url}/reset HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert resp.startswith(b"HTTP/1.1 200")
    assert len(resp.split(b"\r\n\r\n", 1)[1]) < 1000  # cut short, never padded
    ok = await _exchange(p, f"GET {upstream.url}/after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    assert _status(ok) == 200


async def test_client_vanishing_mid_body_leaves_proxy_serving(make_proxy, upstream) -> None:
    p = await _proxy(make_proxy, upstream)
    _reader, writer = await _open(p)
    writer.write(f"POST {upstream.url}/u HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n".encode() + b"x" * 500)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    ok = await _exchange(p, f"GET {upstream.url}/after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    assert _status(ok) == 200


async def test_connection_limit_gives_503(make_proxy, upstream) -> None:
    # Every client here is 127.0.0.1: the per-client limit (half of max_connections unless set) is lifted.
    p = await _proxy(make_proxy, upstream, "limits: {max_connections: 2, max_connections_per_client: 2}")
    held = [await _open(p) for _ in range(2)]
    for _, w in held:
        w.write(f"GET {upstream.url}/h HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    await asyncio.sleep(0.2)
    resp = await _exchange(p, f"GET {upstream.url}/x HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert _status(resp) == 503
    assert _json(resp)["error"] == "unavailable"
    for _, w in held:
        w.close()


async def test_a_client_that_never_closes_is_let_go_after_the_linger(make_proxy, upstream) -> None:
    """After its last answer the proxy half-closes and reads what the client still sends, but only
    for a while: a client that keeps talking and never closes is cut off (the proxy's close turns its
    next bytes into a reset), rather than holding the connection for ever."""
    p = await _proxy(make_proxy, upstream)
    reader, writer = await _open(p)
    writer.write(f"GET {upstream.url}/x HTTP/1.1\r\nHost: {upstream.authority}\r\nConnection: close\r\n\r\n".encode())
    got = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 10):  # the half-close ends the answer
        got += chunk
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    cut = False
    try:
        for _ in range(400):  # ~40 s at most: far past the linger, so a bug fails rather than hangs
            writer.write(b"still here\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
    except (ConnectionResetError, BrokenPipeError):
        cut = True
    finally:
        writer.close()
    assert cut, "the proxy still held the connection of a client that never closed"
