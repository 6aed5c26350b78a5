"""Placeholders: swapped for the secret on their route, refused elsewhere and where required.

Real clients (httpx, raw sockets) through the proxy to real aiohttp upstreams;
the upstream records what it saw, so each test says what reached it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from authproxy.config import ConfigError, load
from authproxy.disk.placeholders import PREFIX, generated
from authproxy.placeholders.index import resolve

from .conftest import Upstream, assert_no_secrets

KEY = "sk-live-REALkey-4f9a8b7c6d5e4f3a2b1c"
PH = "authproxy-ph-test-0123456789abcdef"
OTHER_PH = "authproxy-ph-other-fedcba9876543210"


def _headers(seen: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in seen["headers"]}


def _metric(p: Any, route: str, mode: str) -> float:
    value = p.runtime.metrics.registry.get_sample_value(
        "authproxy_placeholder_misdirected_total", {"route": route, "mode": mode}
    )
    return value or 0.0


async def _proxy(make_proxy: Any, upstream: Upstream, secret_env: Any, auth_extra: str = "", more: str = "") -> Any:
    secret_env("REAL_KEY", KEY)
    p = await make_proxy(
        f"""
        routes:
          - name: api
            match: {upstream.authority}
            upstream: http://{upstream.authority}
            auth:
              type: api_key
              header: X-API-Key
              value: ${{REAL_KEY}}
              placeholder: {PH}
              {auth_extra}
          - name: other
            match: other.test
            upstream: http://{upstream.authority}
            auth: {{type: api_key, header: X-Other, value: other-real-value-123456, placeholder: {OTHER_PH}}}
          - name: gw
            gateway: /gw
            upstream: http://{upstream.authority}
            auth: {{type: bearer, token: gw-real-token-abcdef123456}}
        {more}
        """
    )
    p.secrets.update({KEY, "other-real-value-123456", "gw-real-token-abcdef123456"})
    return p


async def test_swapped_in_headers_query_and_basic(make_proxy, upstream, secret_env) -> None:
    p = await _proxy(make_proxy, upstream, secret_env)
    basic = base64.b64encode(f"{PH}:".encode()).decode()
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(
            f"{upstream.url}/v1/things?key={PH}&x=1",
            headers={"Authorization": f"Bearer {PH}", "X-Custom": f"pre {PH} post", "X-Basic": "none"},
        )
        assert r.status_code == 200, r.text
        r2 = await client.get(f"{upstream.url}/v1/b", headers={"Authorization": f"Basic {basic}"})
        assert r2.status_code == 200
    first, second = upstream.seen
    h = _headers(first)
    assert h["x-api-key"] == KEY  # the injected header still goes in
    assert h["authorization"] == f"Bearer {KEY}"
    assert h["x-custom"] == f"pre {KEY} post"
    assert first["path"] == f"/v1/things?key={KEY}&x=1"
    assert _headers(second)["authorization"] == "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    # The path is swapped only when the route opts in.
    async with httpx.AsyncClient(proxy=p.url) as client:
        await client.get(f"{upstream.url}/v1/{PH}/x")
    assert upstream.seen[-1]["path"] == f"/v1/{PH}/x"


async def test_swapped_in_the_path_when_opted_in(make_proxy, upstream, secret_env) -> None:
    p = await _proxy(make_proxy, upstream, secret_env, "placeholder_in_path: true")
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/bot{PH}/getMe")
    assert r.status_code == 200
    assert upstream.seen[-1]["path"] == f"/bot{KEY}/getMe"


async def test_require_refuses_a_request_without_the_placeholder(make_proxy, upstream, secret_env) -> None:
    p = await _proxy(make_proxy, upstream, secret_env, "require: placeholder")
    async with httpx.AsyncClient(proxy=p.url) as client:
        # A real-looking key of the workload's own instead of the placeholder.
        r = await client.get(f"{upstream.url}/v1/x", headers={"Authorization": "Bearer sk-live-stolen-9f8e7d6c5b4a"})
        assert r.status_code == 403
        assert r.json()["error"] == "placeholder_required" and r.headers["x-authproxy-error"] == "placeholder_required"
        assert upstream.seen == []
        r = await client.get(f"{upstream.url}/v1/x")
        assert r.status_code == 403
        # With it: the client's own Authorization and the injected header's name are not forwarded.
        r = await client.get(
            f"{upstream.url}/v1/x?k={PH}", headers={"Authorization": "Bearer sk-live-stolen-9f8e7d6c5b4a"}
        )
        assert r.status_code == 200
    h = _headers(upstream.seen[-1])
    assert "authorization" not in h and h["x-api-key"] == KEY


@pytest.mark.parametrize("where", ["header", "query", "basic", "percent"])
async def test_placeholder_to_an_unmatched_host_is_refused_and_counted(
    make_proxy, upstream, secret_env, where: str
) -> None:
    p = await _proxy(make_proxy, upstream, secret_env)
    # The route's upstream is on another port of this host: a plain request to a host no route matches.
    other = f"http://localhost:{upstream.port}/exfil"
    headers: dict[str, str] = {}
    url = other
    if where == "header":
        headers["X-Note"] = f"key={PH}"
    elif where == "query":
        url = f"{other}?q={PH}"
    elif where == "basic":
        headers["Authorization"] = "Basic " + base64.b64encode(f"me:{PH}".encode()).decode()
    else:
        url = f"{other}?q=" + "".join(f"%{b:02X}" for b in PH.encode())
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(url, headers=headers)
    assert r.status_code == 403
    assert r.json()["error"] == "placeholder_misdirected"
    assert upstream.seen == []
    assert _metric(p, "api", "plain") == 1
    assert any("placeholder of route api" in line for line in p.lines())
    assert not any(PH in line for line in p.lines())  # the route's name is logged, never the value


async def test_placeholder_of_one_route_on_another_intercepted_and_gateway(
    make_proxy, tls_upstream, upstream, secret_env, tmp_path: Path
) -> None:
    tls, ca = tls_upstream
    secret_env("REAL_KEY", KEY)
    p = await make_proxy(
        f"""
        routes:
          - name: api
            match: api.test
            upstream: https://{tls.authority}
            ca_file: {ca}
            auth: {{type: api_key, header: X-API-Key, value: "${{REAL_KEY}}", placeholder: {PH}}}
          - name: b
            match: b.test
            upstream: https://{tls.authority}
            ca_file: {ca}
            auth: {{type: bearer, token: b-real-token-0123456789}}
          - name: gw
            gateway: /gw
            upstream: http://{upstream.authority}
            auth: {{type: bearer, token: gw-real-token-abcdef123456}}
        """
    )
    p.secrets.update({KEY, "b-real-token-0123456789", "gw-real-token-abcdef123456"})
    assert p.runtime.ca is not None
    ca_files = p.runtime.ca.files
    async with httpx.AsyncClient(proxy=p.url, verify=ssl.create_default_context(cafile=str(ca_files.cert))) as client:
        r = await client.get("https://b.test/v1", headers={"X-Leak": PH})
        assert r.status_code == 403 and r.json()["error"] == "placeholder_misdirected"
        ok = await client.get("https://api.test/v1", headers={"Authorization": f"Bearer {PH}"})
        assert ok.status_code == 200
    assert _metric(p, "api", "intercept") == 1
    assert [s["path"] for s in tls.seen] == ["/v1"]
    assert _headers(tls.seen[0])["authorization"] == f"Bearer {KEY}"
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{p.url}/gw/x?token={PH}")
    assert r.status_code == 403 and r.json()["error"] == "placeholder_misdirected"
    assert _metric(p, "api", "gateway") == 1
    assert upstream.seen == []


async def _raw_upstream() -> tuple[asyncio.Server, list[bytes], asyncio.Event, asyncio.Event]:
    """A TCP server that records what arrives, and says when the first bytes and the close came."""
    got: list[bytes] = []
    first, closed = asyncio.Event(), asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                got.append(data)
                first.set()
        except ConnectionError:
            pass
        closed.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, got, first, closed


async def test_blind_tunnel_closed_on_a_placeholder_split_across_segments(make_proxy, upstream, secret_env) -> None:
    p = await _proxy(make_proxy, upstream, secret_env)
    server, got, first, closed = await _raw_upstream()
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200")
    cut = len(PH) // 2
    writer.write(b"GET /leak?k=" + PH[:cut].encode())
    await writer.drain()
    await asyncio.wait_for(first.wait(), 10)  # the first segment went through on its own
    writer.write(PH[cut:].encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing answered
    await asyncio.wait_for(closed.wait(), 10)
    assert b"".join(got) == b"GET /leak?k=" + PH[:cut].encode()  # the rest never reached the upstream
    assert _metric(p, "api", "tunnel") == 1
    writer.close()
    server.close()
    # Without a placeholder the tunnel carries bytes as always.
    server2, got2, first2, _ = await _raw_upstream()
    port2 = server2.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(f"CONNECT 127.0.0.1:{port2} HTTP/1.1\r\nHost: 127.0.0.1:{port2}\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
    writer.write(b"hello " + PH[:-1].encode())
    await asyncio.wait_for(first2.wait(), 10)
    writer.close()
    server2.close()
    assert b"".join(got2).startswith(b"hello ")


async def test_blind_tunnel_placeholder_in_the_bytes_sent_with_the_connect(make_proxy, upstream, secret_env) -> None:
    p = await _proxy(make_proxy, upstream, secret_env)
    server, got, _, closed = await _raw_upstream()
    port = server.sockets[0].getsockname()[1]
    sock = socket.create_connection(("127.0.0.1", p.port))
    sock.sendall(
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\nGET /?k={PH} HTTP/1.1\r\n\r\n".encode()
    )
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    data = await asyncio.wait_for(reader.read(), 10)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n")
    await asyncio.wait_for(closed.wait(), 10)
    assert got == []
    assert _metric(p, "api", "tunnel") == 1
    writer.close()
    server.close()


def test_config_checks(tmp_path: Path) -> None:
    def load_text(auth: str) -> Any:
        f = tmp_path / "r.yaml"
        f.write_text(
            f"state_dir: {tmp_path / 'st'}\nroutes:\n  - name: a\n    match: a.test\n"
            f"    auth: {{type: api_key, value: k-123456789, {auth}}}\n"
        )
        return load(f)

    cfg = load_text("placeholder: short")
    assert any("shorter than 16" in w.message for w in cfg.warnings)
    for bad, says in [
        ("require: placeholder", "needs `placeholder`"),
        ("placeholder: 'has space in it 1234'", "visible ASCII"),
        ("placeholder: generate, require: other", "must be one of"),
        ("placeholder: generate, placeholder_env: 1BAD", "environment variable"),
        ("placeholder: generate, stub_token_endpoint: true", "token_url"),
        ("placeholder: generate, scrub_bogus: 1", "unknown key"),
        ("placeholder: k-123456789", "the secret itself"),
    ]:
        with pytest.raises(ConfigError) as info:
            load_text(bad)
        assert says in str(info.value), (bad, str(info.value))


def test_generated_placeholder_is_kept_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    a = generated(state, "openai")
    assert a.startswith(PREFIX + "openai-") and len(a) == len(PREFIX + "openai-") + 32
    assert generated(state, "openai") == a
    path = state / "placeholders" / "openai"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert generated(state, "anthropic") != a
    f = tmp_path / "r.yaml"
    f.write_text(
        f"state_dir: {state}\nroutes:\n  - name: openai\n    match: a.test\n"
        "    auth: {type: api_key, value: k-123456789, placeholder: generate}\n"
    )
    ph = resolve(load(f))
    assert ph is not None and ph.values == {"openai": a}


async def test_generated_placeholder_same_across_worker_processes(tmp_path: Path) -> None:
    """Processes that start at once agree on one value: the first link wins."""
    import sys

    code = "import sys; from pathlib import Path; from authproxy.disk.placeholders import generated;"
    code += "print(generated(Path(sys.argv[1]), 'r'))"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, str(tmp_path / "s"), stdout=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    outs = {(await proc.communicate())[0].strip() for proc in procs}
    assert len(outs) == 1


async def test_env_prints_placeholders(make_proxy, upstream, secret_env, tmp_path: Path) -> None:
    import sys

    p = await _proxy(make_proxy, upstream, secret_env, "placeholder_env: API_KEY")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authproxy", "env", "-c", str(p.config_path), "--placeholders",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    text = out.decode()
    assert f"export API_KEY='{PH}'" in text
    assert f"export AUTHPROXY_PLACEHOLDER_OTHER='{OTHER_PH}'" in text
    assert KEY not in text + err.decode()
    p.bodies.append(text)


async def test_no_placeholder_routes_cost_nothing(make_proxy, upstream) -> None:
    p = await make_proxy(
        f"""
        routes:
          - name: plain
            match: {upstream.authority}
            auth: {{type: api_key, header: X-K, value: plain-value-0123456789}}
        """
    )
    assert p.runtime.snapshot.placeholders is None
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x", headers={"X-Anything": "authproxy-ph-x"})
    assert r.status_code == 200
    assert json.loads(r.text)["path"] == "/x"


async def test_connect_to_a_host_named_with_a_placeholder_is_refused_before_any_lookup(
    make_proxy, upstream, secret_env
) -> None:
    p = await _proxy(make_proxy, upstream, secret_env)
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    host = f"{PH}.attacker.invalid:443"
    writer.write(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 403") and b"placeholder_misdirected" in head
    assert _metric(p, "api", "tunnel") == 1
    writer.close()


async def test_every_request_of_an_intercepted_connection_is_scanned(make_proxy, tls_upstream, secret_env) -> None:
    """One keep-alive tunnel: the route's path takes the placeholder, a path the route does not cover refuses it."""
    tls, ca = tls_upstream
    secret_env("REAL_KEY", KEY)
    p = await make_proxy(
        f"""
        routes:
          - name: api
            match: api.test/v1
            upstream: https://{tls.authority}
            ca_file: {ca}
            auth: {{type: api_key, header: X-API-Key, value: "${{REAL_KEY}}", placeholder: {PH}}}
        """
    )
    p.secrets.add(KEY)
    assert p.runtime.ca is not None
    ctx = ssl.create_default_context(cafile=str(p.runtime.ca.files.cert))
    async with httpx.AsyncClient(proxy=p.url, verify=ctx) as client:
        statuses = []
        for path in ("/v1/a", "/other", "/v1/b", "/elsewhere"):
            r = await client.get(f"https://api.test{path}", headers={"Authorization": f"Bearer {PH}"})
            statuses.append(r.status_code)
    assert statuses == [200, 403, 200, 403]
    assert [s["path"] for s in tls.seen] == ["/v1/a", "/v1/b"]
    assert _metric(p, "api", "intercept") == 2
    # The refusals came on tunnels that had carried an allowed request first (a refusal closes its connection).
    tunnels = [x for x in p.access_lines() if x.split()[1] == "CONNECT"]
    assert len(tunnels) == 2


async def test_workers_swap_the_same_generated_placeholder(upstream, tmp_path: Path) -> None:
    """`run --workers 2`: both processes start at once and agree on one generated placeholder."""
    from tests.support.proc import start_proxy

    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        f"state_dir: {tmp_path / 'state'}\nroutes:\n  - name: api\n    match: {upstream.authority}\n"
        f"    upstream: http://{upstream.authority}\n"
        "    auth: {type: api_key, header: X-API-Key, value: ${REAL_KEY}, placeholder: generate, require: placeholder}\n"
    )
    p = start_proxy(cfg, "--workers", "2", env={"REAL_KEY": KEY})
    try:
        ph = (tmp_path / "state" / "placeholders" / "api").read_text().strip()
        for _ in range(6):  # a new connection each time, spread over the workers by the kernel
            async with httpx.AsyncClient(proxy=p.url, trust_env=False) as client:
                r = await client.get(f"{upstream.url}/v1", headers={"Authorization": f"Bearer {ph}"})
                assert r.status_code == 200
    finally:
        assert p.stop() == 0
    assert all(_headers(s)["x-api-key"] == KEY for s in upstream.seen) and len(upstream.seen) == 6
    assert_no_secrets([p.stderr_text()], [KEY])
