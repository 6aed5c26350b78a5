"""Where the proxy may connect: never to itself, and unmatched traffic only where ``destinations`` allows.

Attacked as a client would: raw sockets with every spelling of the proxy's own
address (``127.1``, ``2130706433``, ``[::ffff:7f00:1]``, the host's LAN address
when bound to ``0.0.0.0``), a hundred nested CONNECTs on one connection, a Via
learned from an upstream and sent back, and unmatched traffic to cloud
metadata, loopback and private addresses, in-process and against real
``authproxy run`` processes (one bound to ``0.0.0.0``, one with ``--workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from authproxy.config import load
from authproxy.errors import Denied, ProxyLoop
from authproxy.net.destinations import Destinations, Policy, named
from authproxy.net.egress import Egress, Guard, Via
from authproxy.net.localaddrs import canonical
from authproxy.runtime import Runtime
from authproxy.schema.problems import ConfigError
from authproxy.server.listener import ProxyServer
from tests.support.proc import ProxyProcess, start_proxy

from .conftest import Proxy, Upstream, assert_no_secrets

KEY = "egress-key-7c1f9a2e5b"
ENV = {"EGRESS_KEY": KEY}

# Every one reaches a socket bound to 127.0.0.1 or 0.0.0.0 on this host.
LOOP_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "127.0.0.2",
    "127.255.255.254",
    "0.0.0.0",
    "0",
    "2130706433",
    "0x7f000001",
    "017700000001",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::1]",
    "[::]",
    "localhost",
    "LOCALHOST.",
]


# -- raw-socket helpers ------------------------------------------------------


async def _exchange(port: int, data: bytes, wait: float = 10.0, to_close: bool = False) -> tuple[bytes, bool]:
    """Send ``data``; the proxy's answer (up to its close, with ``to_close``), and whether it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = b""
    closed = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    try:
        while (left := deadline - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
            if not to_close and _complete(out):
                break
    finally:
        writer.transport.abort()
    return out, closed


def _complete(resp: bytes) -> bool:
    """A whole response: its body, when it says how long; its head, when not (101, a CONNECT's 200)."""
    head, sep, body = resp.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return bool(sep) and (m is None or len(body) >= int(m.group(1)))


def _status(resp: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", resp)
    assert m, resp[:200]
    return int(m.group(1))


def _json(resp: bytes) -> dict[str, Any]:
    return json.loads(resp.partition(b"\r\n\r\n")[2])  # type: ignore[no-any-return]


def _get(authority: str, path: str = "/", headers: str = "") -> bytes:
    return f"GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n{headers}\r\n".encode()


def _connect(authority: str) -> bytes:
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()


def _refused(resp: bytes, status: int, code: str) -> dict[str, Any]:
    assert _status(resp) == status, resp[:300]
    assert re.search(rb"(?im)^x-authproxy-error: " + code.encode() + rb"\r$", resp), resp[:300]
    body = _json(resp)
    assert body["error"] == code
    return body


def _config(upstream: Upstream, extra: str = "") -> str:
    """A route for ``/keyed`` on the upstream; everything else there is unmatched (tunnelled)."""
    return (
        textwrap.dedent(extra)
        + f"""
routes:
  - name: keyed
    match: {upstream.authority}/keyed
    scrub: false  # the test reads the injected value back from the echo
    auth: {{type: api_key, header: X-Key, value: "${{EGRESS_KEY}}"}}
"""
    )


async def _proxy(make_proxy: Callable[[str], Any], upstream: Upstream, secret_env: Any, extra: str = "") -> Proxy:
    secret_env("EGRESS_KEY", KEY)
    p: Proxy = await make_proxy(_config(upstream, extra))
    p.secrets.add(KEY)
    return p


# -- the loop check, in-process (bound to 127.0.0.1) --------------------------


@pytest.mark.parametrize("spelling", LOOP_SPELLINGS)
async def test_absolute_form_to_the_proxys_own_port_is_a_loop(make_proxy, upstream, secret_env, spelling) -> None:
    p = await _proxy(make_proxy, upstream, secret_env)
    before = len(p.access_lines())
    resp, closed = await _exchange(p.port, _get(f"{spelling}:{p.port}", "/x"), to_close=True)
    body = _refused(resp, 400, "proxy_loop")
    assert "loop" in body["detail"]
    assert closed
    # One request, one line: the proxy never served a second hop of its own.
    assert len(p.access_lines()) == before + 1


@pytest.mark.parametrize("spelling", LOOP_SPELLINGS)
async def test_connect_to_the_proxys_own_port_is_a_loop(make_proxy, upstream, secret_env, spelling) -> None:
    p = await _proxy(make_proxy, upstream, secret_env)
    # Bytes sent ahead of the 200 would have gone into the tunnel: here a request for the upstream.
    early = _get(upstream.authority, "/smuggled")
    resp, closed = await _exchange(p.port, _connect(f"{spelling}:{p.port}") + early, to_close=True)
    _refused(resp, 400, "proxy_loop")
    assert closed and resp.count(b"HTTP/1.1 ") == 1
    assert upstream.seen == []


async def test_a_gateway_reached_through_the_proxy_itself_is_a_loop(make_proxy, upstream, secret_env) -> None:
    """The gateway would answer through a second hop, with its credential."""
    secret_env("EGRESS_KEY", KEY)
    p = await make_proxy(
        f"""
        routes:
          - name: gw
            gateway: /gw
            upstream: http://{upstream.authority}
            auth: {{type: api_key, header: X-Key, value: "${{EGRESS_KEY}}"}}
        """
    )
    p.secrets.add(KEY)
    for spelling in ("127.1", "2130706433", "[::ffff:7f00:1]"):
        resp, _ = await _exchange(p.port, _get(f"{spelling}:{p.port}", "/gw/x"))
        _refused(resp, 400, "proxy_loop")
    assert upstream.seen == []


async def test_a_route_whose_upstream_is_the_proxy_is_a_loop(make_proxy, upstream, secret_env, tmp_path) -> None:
    """Matched routes are configured on purpose, but never to the proxy itself (checked where dialled)."""
    secret_env("EGRESS_KEY", KEY)
    port = _free_port()
    text = f"""
        routes:
          - name: back
            gateway: /back
            upstream: http://0x7f000001:{port}
            auth: {{type: api_key, header: X-Key, value: "${{EGRESS_KEY}}"}}
        """
    path = tmp_path / "self.yaml"
    path.write_text(textwrap.dedent(text) + f"state_dir: {tmp_path / 'st'}\n")
    rt = Runtime(load(path))
    server = ProxyServer(rt)
    await server.start("127.0.0.1", port)
    try:
        resp, _ = await _exchange(port, b"GET /back/x HTTP/1.1\r\nHost: a\r\n\r\n")
        body = _refused(resp, 400, "proxy_loop")
        assert body["route"] == "back"
    finally:
        await server.drain(1.0)
        await rt.close()


async def test_an_intercepted_connect_to_the_proxy_is_a_loop_inside(make_proxy, upstream, secret_env) -> None:
    secret_env("EGRESS_KEY", KEY)
    p = await make_proxy(
        """
        routes:
          - name: any-local
            match: "127.0.0.1:*"
            auth: {type: api_key, header: X-Key, value: "${EGRESS_KEY}"}
        """
    )
    p.secrets.add(KEY)
    assert p.runtime.ca is not None
    ctx = ssl.create_default_context(cafile=str(p.runtime.ca.files.cert))
    async with httpx.AsyncClient(proxy=p.url, verify=ctx) as client:
        r = await client.get(f"https://127.0.0.1:{p.port}/x")
    assert r.status_code == 400 and r.json()["error"] == "proxy_loop"
    assert r.json()["route"] == "any-local"


async def test_a_hundred_nested_connects_cannot_fill_the_connection_limit(make_proxy, upstream, secret_env) -> None:
    # Every client here is 127.0.0.1: the per-client limit is lifted to the global one, which is what is tested.
    p = await _proxy(make_proxy, upstream, secret_env, "limits: {max_connections: 20, max_connections_per_client: 20}\n")
    nested = _connect(f"127.0.0.1:{p.port}") * 100

    async def flood() -> bytes:
        resp, closed = await _exchange(p.port, nested, to_close=True)
        assert closed
        return resp

    answers = await asyncio.gather(*(flood() for _ in range(10)))
    for resp in answers:
        _refused(resp, 400, "proxy_loop")
        assert resp.count(b"HTTP/1.1 ") == 1  # the rest never became requests, let alone connections
    # One line per flooding connection: no CONNECT was ever served on a connection of the proxy's own.
    assert len(p.access_lines()) == 10
    assert len(p.server.connections) <= 10
    async with httpx.AsyncClient(proxy=p.url) as client:
        rs = await asyncio.gather(*(client.get(f"{upstream.url}/after/{i}") for i in range(15)))
    assert [r.status_code for r in rs] == [200] * 15


async def test_allow_cannot_open_a_loop(make_proxy, upstream, secret_env) -> None:
    p = await _proxy(make_proxy, upstream, secret_env, "destinations: {deny: [], allow: [127.0.0.0/8, 0.0.0.0/0]}\n")
    resp, _ = await _exchange(p.port, _get(f"127.0.0.3:{p.port}"))
    _refused(resp, 400, "proxy_loop")


# -- Via ----------------------------------------------------------------------


def _vias(info: dict[str, Any]) -> list[str]:
    return [v for k, v in info["headers"] if k.lower() == "via"]


async def test_via_names_this_proxy_after_the_clients_own(make_proxy, upstream, secret_env) -> None:
    p = await _proxy(make_proxy, upstream, secret_env)
    async with httpx.AsyncClient(proxy=p.url) as client:
        plain = (await client.get(f"{upstream.url}/open", headers={"Via": "1.0 first, 1.1 second"})).json()
        keyed = (await client.get(f"{upstream.url}/keyed")).json()
    assert _vias(plain)[0] == "1.0 first, 1.1 second"
    ours = _vias(plain)[-1]
    assert re.fullmatch(r"1\.1 authproxy-[0-9a-f]{16}", ours)
    assert _vias(keyed) == [ours]  # one pseudonym per proxy, matched or not


async def test_a_request_carrying_our_via_is_a_loop(make_proxy, upstream, secret_env) -> None:
    """An attacker learns the pseudonym from an upstream they run, and sends it back."""
    p = await _proxy(make_proxy, upstream, secret_env)
    async with httpx.AsyncClient(proxy=p.url) as client:
        ours = _vias((await client.get(f"{upstream.url}/learn")).json())[-1]
    pseudonym = ours.split()[1]
    seen = len(upstream.seen)
    for via in (ours, f"1.0 a, {ours}", f"HTTP/1.1 {pseudonym.upper()}:8080 (comment)", f"1.1 {pseudonym}"):
        for headers in (f"Via: {via}\r\n", f"Via: 1.0 x\r\nVia: {via}\r\n", f"Connection: via\r\nVia: {via}\r\n"):
            resp, closed = await _exchange(p.port, _get(upstream.authority, "/keyed", headers), to_close=True)
            body = _refused(resp, 400, "proxy_loop")
            assert "Via" in body["detail"] and closed
    assert len(upstream.seen) == seen
    # Another proxy's pseudonym passes.
    resp, _ = await _exchange(p.port, _get(upstream.authority, "/keyed", "Via: 1.1 authproxy-0000000000000000\r\n"))
    assert _status(resp) == 200


async def test_websocket_upgrade_carries_our_via(make_proxy, upstream, secret_env) -> None:
    p = await _proxy(make_proxy, upstream, secret_env)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    head = f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    resp, _ = await _exchange(p.port, _get(upstream.authority, "/ws", head), wait=3.0)
    assert _status(resp) == 101
    ws = [s for s in upstream.seen if s["method"] == "WS"][-1]
    assert [v for k, v in ws["headers"] if k.lower() == "via"] == [f"1.1 {p.runtime.via.pseudonym}"]


def test_via_pseudonym_is_random_per_proxy_and_kept_when_passed_down() -> None:
    a, b = Via(), Via()
    assert a.pseudonym != b.pseudonym
    assert Via(a.pseudonym).pseudonym == a.pseudonym
    assert Via("not a pseudonym\r\nX: y").pseudonym.startswith("authproxy-")  # never a header injection
    with pytest.raises(ProxyLoop):
        a.check(b"1.1 " + a.pseudonym.upper().encode())
    b.check(b"1.1 " + a.pseudonym.encode())


# -- the destination policy, in-process (listening on loopback) -------------------

METADATA = [
    "169.254.169.254",
    "[fd00:ec2::254]",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[64:ff9b::a9fe:a9fe]",  # NAT64
    "[2002:a9fe:a9fe::1]",  # 6to4
    "2852039166",  # 169.254.169.254 as one number
    "0xa9fea9fe",
    "169.254.0.1:8080",
    "[fe80::1]",
    "100.100.100.200",
]


@pytest.mark.parametrize("target", METADATA)
async def test_metadata_is_refused_to_plain_requests_without_connecting(make_proxy, upstream, secret_env, target):
    p = await _proxy(make_proxy, upstream, secret_env)
    resp, _ = await _exchange(p.port, _get(target, "/latest/meta-data/iam/security-credentials/"))
    # 403 at once: a connection attempt would have ended in 502 or 504 (nothing answers there).
    body = _refused(resp, 403, "destination_denied")
    assert "link_local" in body["detail"] and body["route"] is None


@pytest.mark.parametrize("target", ["169.254.169.254:80", "[fd00:ec2::254]:443", "2852039166:443"])
async def test_metadata_is_refused_to_blind_tunnels(make_proxy, upstream, secret_env, target) -> None:
    p = await _proxy(make_proxy, upstream, secret_env)
    resp, closed = await _exchange(p.port, _connect(target) + _get("169.254.169.254"), to_close=True)
    _refused(resp, 403, "destination_denied")
    assert closed and resp.count(b"HTTP/1.1 ") == 1


async def test_loopback_is_reachable_by_default_when_listening_on_loopback(make_proxy, upstream, secret_env) -> None:
    p = await _proxy(make_proxy, upstream, secret_env)
    resp, _ = await _exchange(p.port, _get(f"localhost:{upstream.port}", "/open"))
    assert _status(resp) == 200
    resp, _ = await _exchange(p.port, _connect(upstream.authority))
    assert _status(resp) == 200


async def test_deny_loopback_refuses_unmatched_traffic_only(make_proxy, upstream, secret_env) -> None:
    p = await _proxy(make_proxy, upstream, secret_env, "destinations: {deny: [loopback]}\n")
    for target in (upstream.authority, f"localhost:{upstream.port}", f"127.1:{upstream.port}"):
        resp, _ = await _exchange(p.port, _get(target, "/open"))
        body = _refused(resp, 403, "destination_denied")
        assert target.partition(":")[0].lower() in body["detail"] and "loopback" in body["detail"]
        if target != upstream.authority:  # a CONNECT there is intercepted: the route matches the host
            resp, _ = await _exchange(p.port, _connect(target))
            _refused(resp, 403, "destination_denied")
    ws = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    resp, _ = await _exchange(p.port, _get(upstream.authority, "/ws", ws + "Sec-WebSocket-Version: 13\r\n"))
    _refused(resp, 403, "destination_denied")
    assert upstream.seen == []
    # A route is configured on purpose: its requests go, and the connection they open in the
    # pool is never lent to unmatched traffic to the same host and port.
    async with httpx.AsyncClient(proxy=p.url, limits=httpx.Limits(max_connections=1)) as client:
        keyed = await client.get(f"{upstream.url}/keyed")
        other = await client.get(f"{upstream.url}/other")
        again = await client.get(f"{upstream.url}/keyed/2")
    assert keyed.status_code == 200 and ["X-Key", KEY] in keyed.json()["headers"]
    assert other.status_code == 403 and other.json()["error"] == "destination_denied"
    assert again.status_code == 200
    assert [s["path"] for s in upstream.seen] == ["/keyed", "/keyed/2"]


async def test_unmatched_paths_inside_an_intercepted_host_are_unmatched_traffic(
    make_proxy, tls_upstream, secret_env
) -> None:
    up, ca_path = tls_upstream
    secret_env("EGRESS_KEY", KEY)
    p = await make_proxy(
        f"""
        destinations: {{deny: [loopback]}}
        routes:
          - name: v1
            match: {up.authority}/v1
            ca_file: {ca_path}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: api_key, header: X-Key, value: "${{EGRESS_KEY}}"}}
        """
    )
    p.secrets.add(KEY)
    assert p.runtime.ca is not None
    ctx = ssl.create_default_context(cafile=str(p.runtime.ca.files.cert))
    async with httpx.AsyncClient(proxy=p.url, verify=ctx) as client:
        matched = await client.get(f"{up.url}/v1/x")
        other = await client.get(f"{up.url}/v2/x")
    assert matched.status_code == 200 and ["X-Key", KEY] in matched.json()["headers"]
    assert other.status_code == 403 and other.json()["error"] == "destination_denied"
    assert [s["path"] for s in up.seen] == ["/v1/x"]


async def test_allow_wins_over_deny(make_proxy, upstream, secret_env) -> None:
    p = await _proxy(make_proxy, upstream, secret_env, "destinations: {deny: [loopback], allow: [127.0.0.1/32]}\n")
    resp, _ = await _exchange(p.port, _get(upstream.authority, "/open"))
    assert _status(resp) == 200
    resp, _ = await _exchange(p.port, _get(f"127.0.0.2:{upstream.port}", "/open"))
    _refused(resp, 403, "destination_denied")


async def test_a_cidr_deny(make_proxy, upstream, secret_env) -> None:
    p = await _proxy(make_proxy, upstream, secret_env, "destinations: {deny: [127.0.0.0/30]}\n")
    resp, _ = await _exchange(p.port, _get(f"localhost:{upstream.port}", "/open"))
    body = _refused(resp, 403, "destination_denied")
    assert "127.0.0.0/30" in body["detail"]
    # link_local stays denied when a deny list is written; allow opens it, and only it.
    resp, _ = await _exchange(p.port, _get("169.254.169.254"))
    _refused(resp, 403, "destination_denied")


async def test_a_reload_changes_the_policy(make_proxy, upstream, secret_env, tmp_path) -> None:
    p = await _proxy(make_proxy, upstream, secret_env)
    resp, _ = await _exchange(p.port, _get(upstream.authority, "/open"))
    assert _status(resp) == 200
    path = tmp_path / "reloaded.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n" + _config(upstream, "destinations: {deny: [loopback]}\n"))
    p.runtime.apply(load(path))
    resp, _ = await _exchange(p.port, _get(upstream.authority, "/open"))
    _refused(resp, 403, "destination_denied")


async def test_a_localhost_route_in_clear_text_goes_by_the_address_connected_to(
    make_proxy, upstream, secret_env
) -> None:
    secret_env("EGRESS_KEY", KEY)
    p = await make_proxy(
        f"""
        routes:
          - name: local
            match: localhost:{upstream.port}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: api_key, header: X-Key, value: "${{EGRESS_KEY}}"}}
        """
    )
    p.secrets.add(KEY)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"http://localhost:{upstream.port}/x")
    assert r.status_code == 200 and ["X-Key", KEY] in r.json()["headers"]


# -- the pieces, directly ------------------------------------------------------


def _lan_address() -> str | None:
    """This host's first non-loopback IPv4 address (the one it would send from)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent
        addr = str(s.getsockname()[0])
        if not canonical(addr).is_loopback:
            return addr
    return None


async def test_loopback_only_guard_judges_the_address_not_the_name() -> None:
    e = Egress()
    assert await e.judged("localhost", 80, Guard.LOOPBACK) == [canonical("127.0.0.1")]
    assert await e.judged("::ffff:127.0.0.9", 80, Guard.LOOPBACK) == [canonical("127.0.0.9")]
    lan = _lan_address()
    assert lan is not None, "this host needs a non-loopback address for this test"
    with pytest.raises(Denied) as info:
        await e.judged(lan, 80, Guard.LOOPBACK)
    assert "clear text" in info.value.detail


async def test_own_sockets_bound_to_every_address_cover_every_local_address() -> None:
    e = Egress()
    e.listening("0.0.0.0", 8123)
    lan = _lan_address()
    assert lan is not None
    for host in (lan, f"::ffff:{lan}", "127.0.0.5", "::1", "0.0.0.0", "localhost"):
        with pytest.raises(ProxyLoop):
            await e.judged(host, 8123, Guard.ROUTE)
    assert await e.judged(lan, 8124, Guard.ROUTE) == [canonical(lan)]  # another port
    assert await e.judged("192.0.2.254", 8123, Guard.ROUTE) == [canonical("192.0.2.254")]  # not ours


def test_policy_defaults_and_what_a_written_deny_means() -> None:
    ip = canonical
    on_loopback = Policy.build(None, beyond_loopback=False)
    assert on_loopback.denies(ip("169.254.169.254")) == "link_local"
    assert on_loopback.denies(ip("127.0.0.1")) is None and on_loopback.denies(ip("10.1.2.3")) is None
    beyond = Policy.build(None, beyond_loopback=True)
    for addr, label in [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.9.8.7", "private"),
        ("172.31.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("100.64.0.1", "cgnat"),
        ("0.0.0.0", "unspecified"),
        ("fe80::1", "link_local"),
        ("64:ff9b::a00:1", "private"),  # NAT64 to 10.0.0.1
    ]:
        assert beyond.denies(ip(addr)) == label, addr
    assert beyond.denies(ip("93.184.215.14")) is None and beyond.denies(ip("2606:4700::1")) is None
    # A written deny replaces the defaults that depend on where the proxy listens, never link_local.
    written = Policy.build(Destinations(deny=(named("private"),)), beyond_loopback=True)
    assert written.denies(ip("127.0.0.1")) is None and written.denies(ip("10.0.0.1")) == "private"
    assert written.denies(ip("169.254.169.254")) == "link_local"
    opened = Policy.build(Destinations(deny=(), allow=(named("link_local"),)), beyond_loopback=True)
    assert opened.denies(ip("169.254.169.254")) is None


def test_config_errors_name_the_entry_and_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "destinations:\n"
        "  deny:\n"
        "    - private\n"
        "    - intranet\n"
        "    - 10.1.2.3/8\n"
        "    - 300.1.0.0/16\n"
        "    - {a: b}\n"
        "  allow: 10.0.0.0/8\n"
        "  except: [loopback]\n"
        "routes: []\n"
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    got = {(p.path, p.line) for p in info.value.problems if p.severity == "error"}
    assert got == {
        ("destinations.deny[1]", 4),
        ("destinations.deny[2]", 5),
        ("destinations.deny[3]", 6),
        ("destinations.deny[4]", 7),
        ("destinations.allow", 8),
        ("destinations.except", 9),
    }
    text = "\n".join(str(p) for p in info.value.problems)
    assert "`intranet` is neither a name" in text and "the network is 10.0.0.0/8" in text


def test_check_prints_the_policy_on_stderr(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "listen: 0.0.0.0:8080\n"
        "destinations: {allow: [10.20.0.0/16]}\n"
        "routes:\n"
        "  - {name: a, match: a.example, auth: {type: api_key, value: '${A_KEY}'}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "authproxy", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "A_KEY": "x"},
    )
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 2  # the header and one route
    policy = "deny link_local, loopback, private, cgnat, unspecified, this_host; allow 10.20.0.0/16"
    assert f"destinations for unmatched traffic: {policy} (" in out.stderr
    assert "beyond loopback" in out.stderr


# -- real processes -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n" + textwrap.dedent(text))
    return path


@contextlib.asynccontextmanager
async def _running(p: ProxyProcess) -> AsyncIterator[ProxyProcess]:
    try:
        yield p
    finally:
        p.stop()
        assert_no_secrets(p.err_lines, [KEY])


def _admin_port(p: ProxyProcess) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(r"admin listener on 127\.0\.0\.1:(\d+)", p.stderr_text())
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError(p.stderr_text())


async def test_bound_to_every_address_the_hosts_own_address_is_a_loop(tmp_path: Path, upstream: Upstream) -> None:
    lan = _lan_address()
    assert lan is not None, "this host needs a non-loopback address for this test"
    config = _write(
        tmp_path,
        f"""
        routes:
          - name: keyed
            match: {upstream.authority}/keyed
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: api_key, header: X-Key, value: "${{EGRESS_KEY}}"}}
        """,
    )
    async with _running(start_proxy(config, "--allow-open", env=ENV, listen="0.0.0.0:0")) as p:
        for target in (f"{lan}:{p.port}", f"[::ffff:{lan}]:{p.port}", f"127.0.0.2:{p.port}", f"0:{p.port}"):
            resp, _ = await _exchange(p.port, _get(target))
            _refused(resp, 400, "proxy_loop")
            resp, _ = await _exchange(p.port, _connect(target))
            _refused(resp, 400, "proxy_loop")
        # Beyond loopback, unmatched traffic reaches neither this host's services nor its networks.
        for target, label in [
            (upstream.authority, "loopback"),
            (f"localhost:{upstream.port}", "loopback"),
            (f"{lan}:{upstream.port}", "this_host"),  # a service bound to 0.0.0.0 would answer here
            ("10.0.0.1", "private"),
            ("100.64.0.1", "cgnat"),
            ("169.254.169.254", "link_local"),
        ]:
            resp, _ = await _exchange(p.port, _get(target, "/open"))
            body = _refused(resp, 403, "destination_denied")
            assert label in body["detail"]
            if target != upstream.authority:  # a CONNECT there is intercepted: the route matches the host
                resp, _ = await _exchange(p.port, _connect(target if ":" in target else target + ":443"))
                _refused(resp, 403, "destination_denied")
        # A route is configured on purpose: it reaches the loopback upstream with its key.
        async with httpx.AsyncClient(proxy=p.url) as client:
            r = await client.get(f"{upstream.url}/keyed")
        assert r.status_code == 200 and ["X-Key", KEY] in r.json()["headers"]
    assert [s["path"] for s in upstream.seen] == ["/keyed"]


async def test_the_admin_listener_is_not_a_destination(tmp_path: Path, upstream: Upstream) -> None:
    config = _write(tmp_path, "admin: 127.0.0.1:0\nroutes: []\n")
    async with _running(start_proxy(config, env=ENV)) as p:
        admin = _admin_port(p)
        for target in (f"127.0.0.1:{admin}", f"localhost:{admin}", f"127.1:{admin}"):
            resp, _ = await _exchange(p.port, _get(target, "/status.json"))
            _refused(resp, 400, "proxy_loop")
            resp, _ = await _exchange(p.port, _connect(target))
            _refused(resp, 400, "proxy_loop")


async def test_workers_share_the_loop_check_and_the_via_pseudonym(tmp_path: Path, upstream: Upstream) -> None:
    config = _write(tmp_path, "admin: 127.0.0.1:0\nroutes: []\n")
    async with _running(start_proxy(config, "--workers", "2", env=ENV)) as p:
        admin = _admin_port(p)
        async with httpx.AsyncClient(proxy=p.url) as client:
            ours = _vias((await client.get(f"{upstream.url}/learn")).json())[-1]
        seen = len(upstream.seen)

        async def one(data: bytes) -> bytes:
            return (await _exchange(p.port, data))[0]

        # Sixteen connections each: the kernel spreads them over both workers (all on one: a 2^-15 chance).
        for data in (
            _get(f"127.1:{admin}", "/status.json"),
            _connect(f"[::ffff:7f00:1]:{admin}"),
            _get(f"2130706433:{p.port}"),
            _get(upstream.authority, "/again", f"Via: {ours}\r\n"),
        ):
            for resp in await asyncio.gather(*(one(data) for _ in range(16))):
                _refused(resp, 400, "proxy_loop")
        assert len(upstream.seen) == seen
