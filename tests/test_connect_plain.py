"""Plain HTTP inside an intercepted CONNECT: the client's first byte says TLS or HTTP, and either is served.

undici tunnels every URL (``http://`` too), and so do https-proxy-agent,
Python websockets and Java for ``ws://``: inside the tunnel they speak plain
HTTP/1.1, which gets the route's credential under the rules of an
absolute-form request (clear text, allow lists, 421, the loop check). A
CONNECT to port 80 matches a route without a port, whatever it carries.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from pathlib import Path

from websockets.asyncio.client import connect as ws_connect

from authproxy.config import load
from authproxy.routes import RouteTable, connect_default

from .conftest import Proxy, Upstream, assert_no_secrets, tool_env
from .test_tools import NODE_DIR, _ensure_undici, _run

KEY = "plain-tunnel-key-27182818"


async def _proxy(make_proxy, secret_env, routes: str, extra: str = "") -> Proxy:
    secret_env("PT_KEY", KEY)
    p = await make_proxy(f"{extra}\nroutes:\n{routes}")
    p.secrets.add(KEY)
    return p


def _route(name: str, match: str, more: str = "") -> str:
    lines = [f"  - name: {name}", f"    match: {match}"]
    lines += [f"    {x}" for x in more.splitlines() if x.strip()]
    lines.append("    scrub: false  # the tests read the injected value back from the echo")
    lines.append('    auth: {type: api_key, header: X-Key, value: "${PT_KEY}"}')
    return "\n".join(lines) + "\n"


async def _tunnel(p: Proxy, authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head
    return reader, writer


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return status, headers, body


def _keys(info: dict) -> list[str]:
    return [v for k, v in info["headers"] if k.lower() == "x-key"]


async def _lines(p: Proxy, *parts: str) -> list[str]:
    """The access lines holding every part, once some are written (a CONNECT's when its tunnel closes)."""
    for _ in range(100):
        found = [x for x in p.access_lines() if all(s in x for s in parts)]
        if found:
            return found
        await asyncio.sleep(0.05)
    return []


def _proxy_ctx(p: Proxy) -> ssl.SSLContext:
    ca = p.runtime.ca
    assert ca is not None
    return ssl.create_default_context(cafile=str(ca.files.cert))


# --------------------------------------------------------------------------- matching


def test_a_portless_match_means_80_for_a_connect_to_80(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        f"state_dir: {tmp_path}\nroutes:\n" + _route("bare", "api.test") + _route("ported", "other.test:8080")
    )
    t = RouteTable(load(path).routes)
    assert [r.name for r in t.candidates("api.test", 80, connect_default(80))] == ["bare"]
    assert [r.name for r in t.candidates("api.test", 443, connect_default(443))] == ["bare"]
    assert t.candidates("api.test", 8080, connect_default(8080)) == ()
    assert [r.name for r in t.candidates("other.test", 8080, connect_default(8080))] == ["ported"]
    assert t.candidates("other.test", 80, connect_default(80)) == ()


# --------------------------------------------------------------------------- plain inside


async def test_connect_80_to_a_portless_route_serves_plain_http_with_the_credential(
    make_proxy, upstream: Upstream, secret_env
) -> None:
    p = await _proxy(make_proxy, secret_env, _route("api", "api.test", f"upstream: http://{upstream.authority}"))
    reader, writer = await _tunnel(p, "api.test:80")
    for i in range(3):  # keep-alive inside the tunnel
        writer.write(f"GET /v1/items?n={i} HTTP/1.1\r\nHost: api.test\r\n\r\n".encode())
        status, _, body = await _response(reader)
        assert status == 200
        info = json.loads(body)
        assert info["path"] == f"/v1/items?n={i}" and _keys(info) == [KEY]
        assert info["host"] == upstream.authority
    writer.close()
    assert len(await _lines(p, "GET plain api.test:80 /v1/items route=api status=200")) == 3
    connect = await _lines(p, "CONNECT intercept api.test:80")
    assert len(connect) == 1 and "status=200" in connect[0] and "note=plain" in connect[0]


async def test_a_route_with_a_port_serves_plain_http_inside_its_connect(
    make_proxy, upstream: Upstream, secret_env
) -> None:
    p = await _proxy(make_proxy, secret_env, _route("local", upstream.authority))
    reader, writer = await _tunnel(p, upstream.authority)
    body = b"x" * 5000
    writer.write(
        f"POST /upload HTTP/1.1\r\nHost: {upstream.authority}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    status, _, out = await _response(reader)
    writer.close()
    info = json.loads(out)
    assert status == 200 and info["method"] == "POST" and info["body_size"] == 5000
    assert _keys(info) == [KEY]


async def test_plain_inside_a_tunnel_goes_on_over_tls_when_the_upstream_is_https(
    make_proxy, tls_upstream, secret_env
) -> None:
    up, ca_path = tls_upstream
    p = await _proxy(make_proxy, secret_env, _route("api", "api.test", f"upstream: {up.url}\nca_file: {ca_path}"))
    reader, writer = await _tunnel(p, "api.test:80")
    writer.write(b"GET /over-tls HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
    status, _, out = await _response(reader)
    writer.close()
    assert status == 200 and _keys(json.loads(out)) == [KEY]
    assert up.seen[-1]["path"] == "/over-tls"


async def test_tls_on_port_80_is_intercepted_too(make_proxy, tls_upstream, secret_env) -> None:
    up, ca_path = tls_upstream
    p = await _proxy(make_proxy, secret_env, _route("api", "api.test", f"upstream: {up.url}\nca_file: {ca_path}"))
    ctx = _proxy_ctx(p)

    def exchange() -> bytes:
        raw = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        raw.sendall(b"CONNECT api.test:80 HTTP/1.1\r\nHost: api.test:80\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += raw.recv(1)
        assert head.startswith(b"HTTP/1.1 200"), head
        with ctx.wrap_socket(raw, server_hostname="api.test") as tls:
            tls.sendall(b"GET /tls80 HTTP/1.1\r\nHost: api.test:80\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := tls.recv(65536):
                out += chunk
            return out

    resp = await asyncio.to_thread(exchange)
    assert resp.startswith(b"HTTP/1.1 200"), resp[:200]
    assert _keys(json.loads(resp.partition(b"\r\n\r\n")[2])) == [KEY]
    assert await _lines(p, "GET intercept api.test:80 /tls80 route=api status=200")
    connect = await _lines(p, "CONNECT intercept api.test:80")
    assert connect and "note=plain" not in connect[0]


async def test_an_unmatched_path_inside_a_plain_tunnel_goes_without_the_credential(
    make_proxy, upstream: Upstream, secret_env
) -> None:
    p = await _proxy(make_proxy, secret_env, _route("v2", f"{upstream.authority}/v2/"))
    reader, writer = await _tunnel(p, upstream.authority)
    writer.write(f"GET /v2/a HTTP/1.1\r\nHost: {upstream.authority}\r\n\r\n".encode())
    _, _, first = await _response(reader)
    writer.write(f"GET /other HTTP/1.1\r\nHost: {upstream.authority}\r\n\r\n".encode())
    _, _, second = await _response(reader)
    writer.close()
    assert _keys(json.loads(first)) == [KEY]
    assert _keys(json.loads(second)) == []
    assert await _lines(p, f"GET plain {upstream.authority} /other route=- status=200")


async def test_the_connects_proxy_user_serves_the_requests_inside(make_proxy, upstream: Upstream, secret_env) -> None:
    import base64

    import bcrypt

    pw = "plain-tunnel-user-pw-42"
    hashed = bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()
    p = await _proxy(
        make_proxy,
        secret_env,
        _route("local", upstream.authority),
        f'proxy_auth:\n  users:\n    alice: "{hashed}"',
    )
    p.secrets.add(pw)
    basic = base64.b64encode(f"alice:{pw}".encode()).decode()
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(f"CONNECT {upstream.authority} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, _, _ = await _response(reader)
    assert status == 407
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    a = upstream.authority
    writer.write(f"CONNECT {a} HTTP/1.1\r\nHost: {a}\r\nProxy-Authorization: Basic {basic}\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
    writer.write(f"GET /inside HTTP/1.1\r\nHost: {a}\r\n\r\n".encode())
    status, _, out = await _response(reader)
    assert status == 200 and _keys(json.loads(out)) == [KEY]
    # A client that repeats its proxy credentials inside: they stop here.
    writer.write(f"GET /again HTTP/1.1\r\nHost: {a}\r\nProxy-Authorization: Basic {basic}\r\n\r\n".encode())
    status, _, out = await _response(reader)
    writer.close()
    assert status == 200 and _keys(json.loads(out)) == [KEY]
    assert "proxy-authorization" not in [k.lower() for k, _ in json.loads(out)["headers"]]


# --------------------------------------------------------------------------- the rules inside


async def test_clear_text_to_a_remote_host_is_refused_inside_a_tunnel(make_proxy, secret_env) -> None:
    p = await _proxy(make_proxy, secret_env, _route("remote", "api.example.com"))
    reader, writer = await _tunnel(p, "api.example.com:80")
    writer.write(b"GET /x HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
    status, headers, body = await _response(reader)
    assert status == 403 and headers["x-authproxy-error"] == "denied"
    detail = json.loads(body)["detail"]
    assert "clear text" in detail and "upstream: https://" in detail
    writer.close()
    assert await _lines(p, "GET plain api.example.com:80 /x route=remote status=403 ", "error=denied")


async def test_allow_list_inside_a_plain_tunnel(make_proxy, upstream: Upstream, secret_env) -> None:
    allow = "allow: [{methods: [GET], paths: [/read/]}]"
    p = await _proxy(make_proxy, secret_env, _route("ro", upstream.authority, allow))
    a = upstream.authority
    got = []
    for method, path in (("GET", "/read/1"), ("DELETE", "/read/1"), ("GET", "/read/../write"), ("GET", "/write")):
        reader, writer = await _tunnel(p, a)
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: {a}\r\n\r\n".encode())
        status, headers, _ = await _response(reader)
        writer.close()
        got.append((status, headers.get("x-authproxy-error")))
    assert got == [(200, None), (403, "denied"), (403, "denied"), (403, "denied")]
    assert [(x["method"], x["path"]) for x in upstream.seen] == [("GET", "/read/1")]


async def test_another_host_inside_a_plain_tunnel_is_421(make_proxy, upstream: Upstream, secret_env) -> None:
    p = await _proxy(make_proxy, secret_env, _route("local", upstream.authority))
    a = upstream.authority
    for request in (
        b"GET /x HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n",
        f"GET http://elsewhere.example/x HTTP/1.1\r\nHost: {a}\r\n\r\n".encode(),
        b"GET http://elsewhere.example/x HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n",
    ):
        reader, writer = await _tunnel(p, a)
        writer.write(request)
        status, headers, _ = await _response(reader)
        writer.close()
        assert status == 421 and headers["x-authproxy-error"] == "misdirected_request"
    # The tunnel's own host in absolute form is served.
    reader, writer = await _tunnel(p, a)
    writer.write(f"GET http://{a}/abs HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n".encode())
    status, _, out = await _response(reader)
    writer.close()
    assert status == 200 and json.loads(out)["path"] == "/abs"
    assert [x["path"] for x in upstream.seen] == ["/abs"]


async def test_a_plain_tunnel_to_the_proxy_itself_is_a_loop(make_proxy, secret_env) -> None:
    p = await _proxy(make_proxy, secret_env, _route("any-local", '"127.0.0.1:*"'))
    reader, writer = await _tunnel(p, f"127.0.0.1:{p.port}")
    writer.write(f"GET /x HTTP/1.1\r\nHost: 127.0.0.1:{p.port}\r\n\r\n".encode())
    status, headers, body = await _response(reader)
    writer.close()
    assert status == 400 and headers["x-authproxy-error"] == "proxy_loop"
    assert json.loads(body)["route"] == "any-local"


async def test_unmatched_paths_inside_a_plain_tunnel_meet_the_destinations_policy(
    make_proxy, upstream: Upstream, secret_env
) -> None:
    p = await _proxy(
        make_proxy, secret_env, _route("v1", f"{upstream.authority}/v1"), "destinations: {deny: [loopback]}"
    )
    reader, writer = await _tunnel(p, upstream.authority)
    a = upstream.authority
    writer.write(f"GET /v1/x HTTP/1.1\r\nHost: {a}\r\n\r\n".encode())
    status, _, out = await _response(reader)
    assert status == 200 and _keys(json.loads(out)) == [KEY]
    writer.write(f"GET /v2/x HTTP/1.1\r\nHost: {a}\r\n\r\n".encode())
    status, headers, _ = await _response(reader)
    writer.close()
    assert status == 403 and headers["x-authproxy-error"] == "destination_denied"
    assert [x["path"] for x in upstream.seen] == ["/v1/x"]


# --------------------------------------------------------------------------- clients and bytes


async def test_websockets_ws_through_connect_gets_the_credential(make_proxy, upstream: Upstream, secret_env) -> None:
    upstream.check_auth = lambda h: h == f"Bearer {KEY}"
    secret_env("PT_KEY", KEY)
    p = await make_proxy(
        f"""
        routes:
          - name: ws
            match: {upstream.authority}
            auth: {{type: bearer, token: "${{PT_KEY}}"}}
        """
    )
    p.secrets.add(KEY)
    async with ws_connect(f"ws://{upstream.authority}/ws", proxy=p.url, open_timeout=10) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 10) == "echo:hello"
        await ws.send(b"\x00\x01" * 40000)
        assert await asyncio.wait_for(ws.recv(), 10) == b"\x00\x01" * 40000
    assert [v for k, v in upstream.seen[-1]["headers"] if k == "Authorization"] == [f"Bearer {KEY}"]
    assert await _lines(p, f"GET plain {upstream.authority} /ws route=ws status=101")
    assert await _lines(p, f"CONNECT intercept {upstream.authority}", "note=plain")


async def test_node_undici_fetch_http_through_its_tunnel(make_proxy, upstream: Upstream, secret_env) -> None:
    await _ensure_undici()
    p = await _proxy(make_proxy, secret_env, _route("node", upstream.authority))
    env = tool_env(p)
    assert env["HTTP_PROXY"] == p.url
    rc, out, err = await _run("node", str(NODE_DIR / "fetch_via_proxy.mjs"), f"{upstream.url}/node?q=1", env=env)
    assert_no_secrets([err], p.secrets)  # the upstream echoes what it got: the key is in `out`
    assert rc == 0, err
    status, _, body = out.partition("\n")
    assert status == "200", out
    assert json.loads(body)["path"] == "/node?q=1" and _keys(json.loads(body)) == [KEY]
    # undici tunnels http:// URLs (proxyTunnel): the request came inside a CONNECT.
    assert await _lines(p, f"CONNECT intercept {upstream.authority}", "note=plain")
    assert await _lines(p, f"GET plain {upstream.authority} /node route=node status=200")


async def test_a_silent_client_after_connect_is_closed_by_client_header(make_proxy, upstream: Upstream) -> None:
    p = await make_proxy(
        f"""
        timeouts: {{client_header: 0.5}}
        routes:
          - name: local
            match: {upstream.authority}
            auth: {{type: api_key, header: X-Key, value: "silent-key-0001"}}
        """
    )
    reader, writer = await _tunnel(p, upstream.authority)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert await _lines(p, f"CONNECT intercept {upstream.authority}", "error=client_timeout")
    assert upstream.seen == []


async def test_a_slow_head_inside_a_plain_tunnel_is_408(make_proxy, upstream: Upstream) -> None:
    p = await make_proxy(
        f"""
        timeouts: {{client_header: 0.5}}
        routes:
          - name: local
            match: {upstream.authority}
            auth: {{type: api_key, header: X-Key, value: "slow-key-0001"}}
        """
    )
    reader, writer = await _tunnel(p, upstream.authority)
    writer.write(b"GET /slow HTTP/1.1\r\n")  # and never the rest
    resp = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert resp.startswith(b"HTTP/1.1 408")


async def test_neither_tls_nor_http_inside_is_400_and_close(make_proxy, upstream: Upstream, secret_env) -> None:
    p = await _proxy(make_proxy, secret_env, _route("local", upstream.authority))
    reader, writer = await _tunnel(p, upstream.authority)
    writer.write(b"\x00\x01\x02\xffnot a protocol")
    resp = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert resp.startswith(b"HTTP/1.1 400")
    assert b'"bad_request"' in resp and b"neither TLS nor an HTTP/1.1 request" in resp
    assert b"connection: close" in resp.lower()
    assert await _lines(p, f"- plain {upstream.authority} - route=- status=400", "error=bad_request")
    # The proxy goes on serving.
    reader, writer = await _tunnel(p, upstream.authority)
    writer.write(f"GET /after HTTP/1.1\r\nHost: {upstream.authority}\r\n\r\n".encode())
    assert (await _response(reader))[0] == 200
    writer.close()


async def test_http_that_does_not_parse_inside_a_plain_tunnel_is_400(
    make_proxy, upstream: Upstream, secret_env
) -> None:
    p = await _proxy(make_proxy, secret_env, _route("local", upstream.authority))
    reader, writer = await _tunnel(p, upstream.authority)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nbad header line\r\n\r\n")
    resp = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert resp.startswith(b"HTTP/1.1 400")


async def test_a_client_closing_after_the_200_is_logged_and_forgotten(make_proxy, upstream: Upstream) -> None:
    p = await make_proxy(
        f"""
        routes:
          - name: local
            match: {upstream.authority}
            auth: {{type: api_key, header: X-Key, value: "gone-key-0001"}}
        """
    )
    _, writer = await _tunnel(p, upstream.authority)
    writer.close()
    assert await _lines(p, f"CONNECT intercept {upstream.authority}", "error=client_gone")
    for _ in range(100):
        if not p.server.connections:
            break
        await asyncio.sleep(0.05)
    assert not p.server.connections


async def test_an_unmatched_connect_stays_a_blind_tunnel(make_proxy, upstream: Upstream, secret_env) -> None:
    p = await _proxy(make_proxy, secret_env, _route("other", "api.example.com"))
    reader, writer = await _tunnel(p, upstream.authority)
    writer.write(f"GET /blind HTTP/1.1\r\nHost: {upstream.authority}\r\nConnection: close\r\n\r\n".encode())
    status, _, out = await _response(reader)
    writer.close()
    assert status == 200 and _keys(json.loads(out)) == []
    assert await _lines(p, f"CONNECT tunnel {upstream.authority}")
