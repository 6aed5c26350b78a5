"""The parent proxy (``upstream_proxy``) against a real squid with Basic authentication.

The upstreams sit behind counting listeners on 127.0.0.2 under names only
squid can resolve (its ``hosts_file``): the proxy under test cannot reach
them but through squid, and every connection a listener accepts is recorded
by its peer address; squid's leave from 127.0.0.3 (``tcp_outgoing_address``),
so "zero direct connections" is "no peer but 127.0.0.3". squid's access.log
shows each kind of traffic: CONNECT for intercepted HTTPS, blind tunnels and
WebSockets, absolute-form GET for plain HTTP, POST for the token endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import pytest
import trustme
from aiohttp import web

from authproxy import config
from authproxy.net import control
from authproxy.net.parent import Parent
from authproxy.secrecy.secrets import Secret, Value
from tests.conftest import Proxy, Upstream, _upstream_app, assert_no_secrets
from tests.support.bws_server import bws_server
from tests.support.oauth_server import OAuthServer
from tests.support.squid import OUTGOING, Squid, free_port
from tests.test_mtls import mtls_upstream
from tests.test_refresh_login import _browser, _login

USER, PASSWORD = "alice", "parent-pa55-Zq81&x"
CLIENT_SECRET = "cc-s3cret-parent-77"
BEARER = "plain-bearer-token-4412"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
__all__ = ["bws_server", "mtls_upstream"]  # fixtures, imported so pytest finds them

NAMES = {"api.corp.test": "127.0.0.2", "plain.corp.test": "127.0.0.2", "tunnel.corp.test": "127.0.0.2"}


@pytest.fixture(scope="module")
def squid() -> Iterator[Squid]:
    sq = Squid.start({USER: PASSWORD}, NAMES)
    yield sq
    sq.stop()


@dataclass
class Front:
    """A listener on 127.0.0.2 that records each accepted connection's peer, then relays it to ``backend``."""

    port: int = 0
    peers: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self, backend: int) -> Front:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.peers.append(writer.get_extra_info("peername")[0])
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", backend)
            except OSError:
                writer.close()
                return

            async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                try:
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                except OSError:
                    pass
                finally:
                    w.close()

            await asyncio.gather(pump(reader, up_w), pump(up_r, writer))

        self.server = await asyncio.start_server(relay, "127.0.0.2", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@dataclass
class Net:
    """The upstreams behind their fronts: TLS (api.corp.test), plain (plain.corp.test), the token endpoint."""

    tls: Upstream
    plain: Upstream
    tls_front: Front
    plain_front: Front
    oauth_front: Front
    ca_path: Path
    oauth: OAuthServer

    def peers(self) -> list[str]:
        return self.tls_front.peers + self.plain_front.peers + self.oauth_front.peers


async def _site(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, int(runner.addresses[0][1])


@pytest.fixture
async def net(tmp_path: Path, oauth_server: OAuthServer) -> AsyncIterator[Net]:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.corp.test").configure_cert(ctx)
    ca_path = tmp_path / "corp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    tls, plain = Upstream(url="", port=0), Upstream(url="", port=0)
    tls_runner, tls_port = await _site(_upstream_app(tls), ctx)
    plain_runner, plain_port = await _site(_upstream_app(plain))
    oauth_port = int(oauth_server.token_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    fronts = [await Front().start(tls_port), await Front().start(plain_port), await Front().start(oauth_port)]
    tls.port, plain.port = fronts[0].port, fronts[1].port
    n = Net(tls, plain, fronts[0], fronts[1], fronts[2], ca_path, oauth_server)
    yield n
    for f in fronts:
        await f.close()
    await tls_runner.cleanup()
    await plain_runner.cleanup()


def _guard(n: Net) -> None:
    n.tls.check_auth = lambda h: h is not None and h.startswith("Bearer ") and n.oauth.is_valid(h[7:])
    n.plain.check_auth = lambda h: h == f"Bearer {BEARER}"


async def _proxy(make_proxy, n: Net, secret_env, parent: str, extra: str = "", top: str = "") -> Proxy:
    secret_env("PARENT_USER", USER)
    secret_env("PARENT_PASSWORD", PASSWORD)
    secret_env("CC_SECRET", CLIENT_SECRET)
    secret_env("PLAIN_TOKEN", BEARER)
    n.oauth.add_client("svc", CLIENT_SECRET)
    _guard(n)
    token_url = f"http://127.0.0.2:{n.oauth_front.port}/oauth/token"
    p = await make_proxy(
        f"""
        upstream_proxy: {parent}
        {top}
        routes:
          - name: secure
            match: api.corp.test:{n.tls_front.port}
            ca_file: {n.ca_path}
            auth: {{type: client_credentials, token_url: "{token_url}", client_id: svc,
                    client_secret: "${{CC_SECRET}}"}}
          - name: plain
            match: plain.corp.test:{n.plain_front.port}
            upstream: http://plain.corp.test:{n.plain_front.port}
            auth: {{type: bearer, token: "${{PLAIN_TOKEN}}"}}
        {extra}
        """
    )
    p.secrets.update({PASSWORD, BASIC, BASIC.split(" ", 1)[1], CLIENT_SECRET, BEARER})
    return p


def _client_ctx(p: Proxy) -> ssl.SSLContext:
    assert p.runtime.ca is not None
    return ssl.create_default_context(cafile=str(p.runtime.ca.files.cert))


async def _blind(p: Proxy, authority: str, request: bytes) -> tuple[bytes, bytes]:
    """CONNECT ``authority`` through the proxy under test, then ``request`` inside: (its answer to CONNECT, the rest)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    try:
        writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        if not head.startswith(b"HTTP/1.1 200"):
            head += await asyncio.wait_for(reader.read(), 20)
            return head, b""
        writer.write(request)
        return head, await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()


def _error(r: httpx.Response, p: Proxy) -> dict[str, object]:
    p.bodies.append(r.text)
    body = json.loads(r.text)
    assert r.headers["x-authproxy-error"] == body["error"]
    return body


async def test_everything_goes_through_the_parent(make_proxy, net: Net, squid: Squid, secret_env) -> None:
    p = await _proxy(make_proxy, net, secret_env, f"http://${{PARENT_USER}}:${{PARENT_PASSWORD}}@{squid.authority}")
    tls_at, plain_at = f"api.corp.test:{net.tls_front.port}", f"plain.corp.test:{net.plain_front.port}"

    # Intercepted HTTPS: CONNECT to the parent, TLS end to end, the credential from the token endpoint.
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        r = await client.get(f"https://{tls_at}/intercepted")
        assert r.status_code == 200, r.text
        # Plain HTTP: an absolute-form request to the parent, the route's bearer token injected.
        r = await client.get(f"http://{plain_at}/plain")
        assert r.status_code == 200, r.text
    assert net.tls.seen[-1]["path"] == "/intercepted"
    assert net.plain.seen[-1]["path"] == "/plain"
    assert [v for k, v in net.plain.seen[-1]["headers"] if k == "Authorization"] == [f"Bearer {BEARER}"]
    assert not [k for k, _ in net.plain.seen[-1]["headers"] if k.lower() == "proxy-authorization"]

    # A WebSocket through the intercepted route: its own tunnel through the parent.
    async with aiohttp.ClientSession() as s, s.ws_connect(f"wss://{tls_at}/ws", proxy=p.url, ssl=_client_ctx(p)) as ws:
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=10) == "echo:hello"
    assert net.tls.seen[-1]["method"] == "WS"
    # A plain ws:// one: a tunnel through the parent too (RFC 6455 §4.1), not an absolute-form upgrade.
    async with aiohttp.ClientSession() as s, s.ws_connect(f"ws://{plain_at}/ws", proxy=p.url) as ws:
        await ws.send_str("plain")
        assert await ws.receive_str(timeout=10) == "echo:plain"
    assert net.plain.seen[-1]["method"] == "WS"
    assert [v for k, v in net.plain.seen[-1]["headers"] if k == "Authorization"] == [f"Bearer {BEARER}"]

    # A blind tunnel (no route matches tunnel.corp.test): CONNECT to the parent, bytes relayed.
    blind_at = f"tunnel.corp.test:{net.plain_front.port}"
    head, rest = await _blind(
        p, blind_at, f"GET /blind HTTP/1.1\r\nHost: {blind_at}\r\nConnection: close\r\n\r\n".encode()
    )
    assert head.startswith(b"HTTP/1.1 200") and rest.startswith(b"HTTP/1.1 401")  # no credential in a blind tunnel
    assert net.plain.seen[-1]["path"] == "/blind"

    token_url = f"http://127.0.0.2:{net.oauth_front.port}/oauth/token"
    lines = [
        squid.wait_for_line("CONNECT", tls_at, USER),
        squid.wait_for_line("GET", f"http://{plain_at}/plain", USER),
        squid.wait_for_line("POST", token_url, USER),
        squid.wait_for_line("CONNECT", blind_at, USER),
        squid.wait_for_line("CONNECT", plain_at, USER),
    ]
    assert all("/200 " in line for line in lines), lines
    assert net.oauth.token_requests() == 1
    # Every connection the upstreams and the token endpoint accepted came from squid.
    assert net.tls_front.peers and net.plain_front.peers and net.oauth_front.peers
    assert set(net.peers()) == {OUTGOING}, net.peers()
    p.secrets.update(net.oauth.issued())


async def test_connections_through_the_parent_are_pooled(make_proxy, net: Net, squid: Squid, secret_env) -> None:
    """Five absolute-form requests on one pooled connection to the parent, five intercepted ones on one
    tunnel (connections to squid counted by a front before it), and the token endpoint's on a third."""
    to_squid = await Front().start(squid.port)
    try:
        p = await _proxy(
            make_proxy, net, secret_env, f"http://${{PARENT_USER}}:${{PARENT_PASSWORD}}@127.0.0.2:{to_squid.port}"
        )
        async with httpx.AsyncClient(proxy=p.url) as client:
            for i in range(5):
                r = await client.get(f"http://plain.corp.test:{net.plain_front.port}/again/{i}")
                assert r.status_code == 200
        squid.wait_for_line("/again/4", USER)
        assert to_squid.peers == ["127.0.0.1"]
        async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
            for i in range(5):
                r = await client.get(f"https://api.corp.test:{net.tls_front.port}/tls/{i}")
                assert r.status_code == 200
        assert [s["path"] for s in net.tls.seen] == [f"/tls/{i}" for i in range(5)]
        assert to_squid.peers == ["127.0.0.1"] * 3  # plain, the token endpoint, one tunnel
        assert len(net.tls_front.peers) == 1
        assert set(net.peers()) == {OUTGOING}
        p.secrets.update(net.oauth.issued())
    finally:
        await to_squid.close()


async def test_wrong_parent_credentials_are_upstream_proxy_auth_failed(
    make_proxy, net: Net, squid: Squid, secret_env
) -> None:
    secret_env("WRONG_PASSWORD", "not-the-" + PASSWORD)
    p = await _proxy(make_proxy, net, secret_env, f"http://${{PARENT_USER}}:${{WRONG_PASSWORD}}@{squid.authority}")
    p.secrets.add("not-the-" + PASSWORD)
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        for url in (
            f"https://api.corp.test:{net.tls_front.port}/x",  # the token fetch meets the 407 first
            f"http://plain.corp.test:{net.plain_front.port}/x",  # absolute-form: a 407 answer, never relayed
        ):
            r = await client.get(url)
            body = _error(r, p)
            assert r.status_code == 502 and body["error"] == "upstream_proxy_auth_failed", body
            assert squid.authority in str(body["detail"])
    head, _ = await _blind(p, f"tunnel.corp.test:{net.plain_front.port}", b"")
    assert head.startswith(b"HTTP/1.1 502") and b"upstream_proxy_auth_failed" in head
    p.bodies.append(head.decode("latin-1"))
    assert net.peers() == []


async def test_intercepted_connect_refused_by_407(make_proxy, net: Net, squid: Squid, secret_env) -> None:
    """A CONNECT the parent answers 407 (the token is cached from a plain route, so the tunnel is what fails)."""
    secret_env("WRONG_PASSWORD", "not-the-" + PASSWORD)
    p = await _proxy(
        make_proxy,
        net,
        secret_env,
        f"http://${{PARENT_USER}}:${{WRONG_PASSWORD}}@{squid.authority}",
        extra=f"""
          - name: static
            match: api.corp.test:{net.tls_front.port}/static
            ca_file: {net.ca_path}
            auth: {{type: bearer, token: "${{PLAIN_TOKEN}}"}}
        """,
    )
    p.secrets.add("not-the-" + PASSWORD)
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        r = await client.get(f"https://api.corp.test:{net.tls_front.port}/static/x")
    body = _error(r, p)
    assert r.status_code == 502 and body["error"] == "upstream_proxy_auth_failed"
    assert body["detail"] == f"the parent proxy {squid.authority} refused authproxy's credentials (407)."
    squid.wait_for_line("TCP_DENIED/407", "CONNECT", f"api.corp.test:{net.tls_front.port}")
    assert net.peers() == []


async def test_parent_down_is_upstream_proxy_error_naming_it(make_proxy, net: Net, secret_env) -> None:
    dead = f"127.0.0.1:{free_port()}"
    p = await _proxy(make_proxy, net, secret_env, f"http://${{PARENT_USER}}:${{PARENT_PASSWORD}}@{dead}")
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        for url in (
            f"https://api.corp.test:{net.tls_front.port}/x",
            f"http://plain.corp.test:{net.plain_front.port}/x",
        ):
            r = await client.get(url)
            body = _error(r, p)
            assert r.status_code == 502 and body["error"] == "upstream_proxy_error", body
            assert str(body["detail"]).startswith(f"cannot connect to the parent proxy {dead}:"), body
    head, _ = await _blind(p, f"tunnel.corp.test:{net.plain_front.port}", b"")
    assert head.startswith(b"HTTP/1.1 502") and dead.encode() in head
    p.bodies.append(head.decode("latin-1"))
    assert net.peers() == []  # no direct fallback


async def test_no_upstream_proxy_and_a_route_direct_go_direct(
    make_proxy, net: Net, squid: Squid, upstream: Upstream, secret_env
) -> None:
    """127.0.0.1 is listed in no_upstream_proxy; a route says `upstream_proxy: direct`; both skip squid."""
    up2 = Upstream(url="", port=0)
    runner, port2 = await _site(_upstream_app(up2))
    try:
        p = await _proxy(
            make_proxy,
            net,
            secret_env,
            f"http://${{PARENT_USER}}:${{PARENT_PASSWORD}}@{squid.authority}",
            top=f"no_upstream_proxy: ['127.0.0.1:{upstream.port}']",
            extra=f"""
          - name: local-direct
            match: localhost:{port2}
            upstream: http://localhost:{port2}
            upstream_proxy: direct
            auth: {{type: bearer, token: "${{PLAIN_TOKEN}}"}}
        """,
        )
        async with httpx.AsyncClient(proxy=p.url) as client:
            r = await client.get(f"{upstream.url}/listed")  # unmatched, listed: direct
            assert r.status_code == 200 and upstream.seen[-1]["path"] == "/listed"
            r = await client.get(f"http://localhost:{port2}/route-direct")
            assert r.status_code == 200 and up2.seen[-1]["path"] == "/route-direct"
            assert [v for k, v in up2.seen[-1]["headers"] if k == "Authorization"] == [f"Bearer {BEARER}"]
            # ...while a plain request to another host still goes through squid.
            r = await client.get(f"http://plain.corp.test:{net.plain_front.port}/via-parent")
            assert r.status_code == 200
        squid.wait_for_line("/via-parent", USER)
        assert not [line for line in squid.access_lines() if "/listed" in line or "/route-direct" in line]
    finally:
        await runner.cleanup()


async def test_a_parent_that_is_the_proxy_itself_is_a_loop(make_proxy, net: Net, secret_env) -> None:
    """Spelled differently from `listen` (which `check` refuses), it is refused by address when dialled."""
    port = free_port()
    p = await _proxy(make_proxy, net, secret_env, f"http://127.9.9.9:{port}", top=f"listen: 127.0.0.1:{port}")
    # make_proxy listens on a port of its own; tell the loop check about the configured one too.
    p.runtime.egress.listening("127.0.0.1", port)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"http://plain.corp.test:{net.plain_front.port}/x")
    body = _error(r, p)
    assert r.status_code == 400 and body["error"] == "proxy_loop", body
    assert net.peers() == []


async def test_bitwarden_goes_through_the_parent(
    make_proxy, upstream: Upstream, squid: Squid, bws_server, secret_env
) -> None:
    """`${bws:...}` values fetched while the file loads, and the `bws` grant's login, both through squid."""
    api_key = "sk-from-bitwarden-via-parent-99"
    sid = bws_server.add_secret(api_key)
    secret_env("BWS_ACCESS_TOKEN", bws_server.access_token)
    secret_env("PARENT_USER", USER)
    secret_env("PARENT_PASSWORD", PASSWORD)
    p = await make_proxy(
        f"""
        upstream_proxy: http://${{PARENT_USER}}:${{PARENT_PASSWORD}}@{squid.authority}
        no_upstream_proxy: ["127.0.0.1:{upstream.port}"]
        bws: {{access_token: "${{BWS_ACCESS_TOKEN}}", identity_url: "{bws_server.identity_url}",
               api_url: "{bws_server.api_url}"}}
        routes:
          - name: key
            match: {upstream.authority}/key
            auth: {{type: api_key, header: X-API-Key, value: "${{bws:{sid}}}"}}
          - name: machine
            match: {upstream.authority}/machine
            auth: {{type: bws, access_token: "${{BWS_ACCESS_TOKEN}}", identity_url: "{bws_server.identity_url}",
                    api_url: "{bws_server.api_url}"}}
        """
    )
    p.secrets.update({PASSWORD, BASIC, api_key, *bws_server.secret_forms()})
    squid.wait_for_line("POST", f"{bws_server.identity_url}/connect/token", USER)
    squid.wait_for_line("GET", f"{bws_server.api_url}/secrets/{sid}", USER)
    before = len([line for line in squid.access_lines() if "/connect/token" in line])
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/key/x")
        assert r.status_code == 200
        assert dict((k.lower(), v) for k, v in upstream.seen[-1]["headers"])["x-api-key"] == api_key
        r = await client.get(f"{upstream.url}/machine/x")
        assert r.status_code == 200
    tokens = [line for line in squid.access_lines() if "/connect/token" in line]
    assert len(tokens) == before + 1 and USER in tokens[-1]
    p.secrets.update(bws_server.issued())


async def test_bitwarden_with_the_parent_down_names_it(make_proxy, upstream: Upstream, bws_server, secret_env) -> None:
    sid = bws_server.add_secret("sk-never-fetched-1234")
    secret_env("BWS_ACCESS_TOKEN", bws_server.access_token)
    dead = f"127.0.0.1:{free_port()}"
    p = await make_proxy(
        f"""
        upstream_proxy: http://{dead}
        bws: {{access_token: "${{BWS_ACCESS_TOKEN}}", identity_url: "{bws_server.identity_url}",
               api_url: "{bws_server.api_url}"}}
        routes:
          - {{name: key, match: {upstream.authority}, auth: {{type: api_key, header: X-API-Key, value: "${{bws:{sid}}}"}}}}
        """
    )
    p.secrets.update(bws_server.secret_forms())
    assert bws_server.issued() == []  # nothing reached it directly
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    body = _error(r, p)
    assert r.status_code == 502 and body["error"] == "credential_unavailable"
    assert f"cannot connect to the parent proxy {dead}" in str(body["detail"])


async def test_https_proxy_in_the_environment_is_not_used(
    make_proxy, upstream: Upstream, oauth_server: OAuthServer, secret_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """authproxy's own HTTP(S)_PROXY usually points at authproxy itself: neither data nor control plane reads it."""
    trap = Front()
    await trap.start(free_port())  # relays nowhere: it only counts
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.2:{trap.port}")
    monkeypatch.setenv("NO_PROXY", "")
    secret_env("CC_SECRET", CLIENT_SECRET)
    oauth_server.add_client("svc", CLIENT_SECRET)
    try:
        p = await make_proxy(
            f"""
            routes:
              - name: cc
                match: {upstream.authority}
                auth: {{type: client_credentials, token_url: "{oauth_server.token_url}", client_id: svc,
                        client_secret: "${{CC_SECRET}}"}}
            """
        )
        p.secrets.add(CLIENT_SECRET)
        async with httpx.AsyncClient(proxy=p.url, trust_env=False) as client:
            r = await client.get(f"{upstream.url}/x")
        assert r.status_code == 200
        assert oauth_server.token_requests() == 1
        assert trap.peers == []
        p.secrets.update(oauth_server.issued())
    finally:
        await trap.close()


async def test_clear_text_allowed_on_this_host_is_refused_through_a_parent_off_it(
    make_proxy, upstream: Upstream, oauth_server: OAuthServer, secret_env
) -> None:
    """A credential may go in clear text to a loopback destination only: never through a parent on another host."""
    secret_env("PLAIN_TOKEN", BEARER)
    secret_env("CC_SECRET", CLIENT_SECRET)
    oauth_server.add_client("svc", CLIENT_SECRET)
    far = f"10.255.255.1:{free_port()}"  # never dialled: refused before
    p = await make_proxy(
        f"""
        upstream_proxy: http://{far}
        routes:
          - {{name: local, match: "{upstream.authority}/local", auth: {{type: bearer, token: "${{PLAIN_TOKEN}}"}}}}
          - name: cc
            match: "{upstream.authority}/cc"
            upstream: http://{upstream.authority}
            auth: {{type: client_credentials, token_url: "{oauth_server.token_url}", client_id: svc,
                    client_secret: "${{CC_SECRET}}"}}
        """
    )
    p.secrets.update({BEARER, CLIENT_SECRET})
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/local/x")
        body = _error(r, p)
        assert r.status_code == 403 and body["error"] == "denied" and body["route"] == "local"
        assert f"route local's credential would travel in clear text through the parent proxy {far}" in str(
            body["detail"]
        )
        r = await client.get(f"{upstream.url}/cc/x")  # its http:// token endpoint, through the same parent
        body = _error(r, p)
        assert r.status_code == 403 and body["error"] == "denied" and body["route"] == "cc", body
    assert upstream.seen == [] and oauth_server.token_requests() == 0


async def test_login_discovery_and_code_exchange_go_through_the_parent(
    tmp_path: Path, upstream: Upstream, oauth_server: OAuthServer, squid: Squid
) -> None:
    """`authproxy login`: discovery and the code exchange through squid; the browser and the redirect never."""
    oauth_server.add_client(
        "app",
        None,
        auth_method="none",
        grant_types=("authorization_code", "refresh_token"),
        redirect_uris=("http://127.0.0.1/callback",),
    )
    oauth_server.add_user("erin", "erin-password-42")
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        f"""
state_dir: {tmp_path / "state"}
upstream_proxy: http://${{PARENT_USER}}:${{PARENT_PASSWORD}}@{squid.authority}
routes:
  - name: app
    match: {upstream.authority}
    auth: {{type: authorization_code, issuer: "{oauth_server.issuer}", client_id: app, scope: read}}
"""
    )
    proc, url = await _login(cfg, {"PARENT_USER": USER, "PARENT_PASSWORD": PASSWORD})
    resp = await asyncio.to_thread(_browser, url, "erin", "erin-password-42")
    assert resp.status_code == 200, resp.text
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    squid.wait_for_line("GET", f"{oauth_server.base_url}/.well-known/oauth-authorization-server", USER)
    squid.wait_for_line("POST", oauth_server.token_url, USER)
    assert not [line for line in squid.access_lines() if "/oauth/authorize" in line or "/callback" in line]
    assert_no_secrets([out, err], [PASSWORD, BASIC, *oauth_server.issued()])


@dataclass
class FakeParent:
    """A parent that answers CONNECT with ``answer`` (bytes as they are), or never, and records what it got."""

    answer: bytes | None
    got: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0

    async def start(self) -> FakeParent:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                self.got.append(await reader.readuntil(b"\r\n\r\n"))
                if self.answer is None:
                    await reader.read()  # never answers; waits for the proxy to give up
                elif self.answer:
                    writer.write(self.answer)
                    await writer.drain()
                    await reader.read()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


@pytest.mark.parametrize(
    ("answer", "status", "code", "detail"),
    [
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
            502,
            "upstream_proxy_error",
            "answered 403 Forbidden to CONNECT tunnel.test:8443.",
        ),
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate\r\nProxy-Authenticate: NTLM\r\n\r\n",
            502,
            "upstream_proxy_auth_failed",
            "asks for Negotiate, NTLM authentication; authproxy speaks Basic only (407).",
        ),
        (
            b"SSH-2.0-not-http\r\n\r\n",
            502,
            "upstream_proxy_error",
            "answered CONNECT with something that is not HTTP/1.1.",
        ),
        (b"", 502, "upstream_proxy_error", "closed the connection without answering."),
        (None, 504, "upstream_proxy_error", "did not answer within 0.5 s."),
    ],
)
async def test_the_parents_refusals(make_proxy, answer: bytes | None, status: int, code: str, detail: str) -> None:
    parent = await FakeParent(answer).start()
    p = await make_proxy(
        f"""
        upstream_proxy: http://127.0.0.1:{parent.port}
        timeouts: {{connect: 0.5}}
        routes:
          - {{name: a, match: a.test, auth: {{type: bearer, token: t0ken-value-1}}}}
        """
    )
    head, _ = await _blind(p, "tunnel.test:8443", b"")
    text = head.decode("latin-1")
    p.bodies.append(text)
    assert text.startswith(f"HTTP/1.1 {status} "), text
    body = json.loads(text.split("\r\n\r\n", 1)[1])
    assert body["error"] == code and body["detail"].endswith(detail), body
    assert f"127.0.0.1:{parent.port}" in body["detail"]
    assert parent.got and parent.got[0].startswith(b"CONNECT tunnel.test:8443 HTTP/1.1\r\nHost: tunnel.test:8443\r\n")
    assert b"Proxy-Authorization" not in parent.got[0]  # none configured, none sent


async def test_bytes_the_upstream_sends_first_survive_the_parents_answer(make_proxy) -> None:
    """A server that speaks first (SSH, SMTP): its banner may come in one segment with the parent's 200."""
    parent = await FakeParent(b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-banner\r\n").start()
    p = await make_proxy(
        f"""
        upstream_proxy: http://u:{PASSWORD}@127.0.0.1:{parent.port}
        routes:
          - {{name: a, match: a.test, auth: {{type: bearer, token: t0ken-value-1}}}}
        """
    )
    p.secrets.update({PASSWORD, BASIC})
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    try:
        writer.write(b"CONNECT ssh.test:22 HTTP/1.1\r\nHost: ssh.test:22\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n"), 20) == b"SSH-2.0-banner\r\n"
    finally:
        writer.close()
    token = base64.b64encode(f"u:{PASSWORD}".encode()).decode()
    assert f"Proxy-Authorization: Basic {token}\r\n".encode() in parent.got[0]


async def test_the_destination_policy_still_judges_what_resolves_here(make_proxy) -> None:
    """Unmatched traffic to cloud metadata (an IP literal, or a name resolving to it here) never reaches the parent."""
    parent = await FakeParent(b"HTTP/1.1 200 Connection established\r\n\r\n").start()
    p = await make_proxy(
        f"""
        upstream_proxy: http://127.0.0.1:{parent.port}
        routes: []
        """
    )
    head, _ = await _blind(p, "169.254.169.254:80", b"")
    assert head.startswith(b"HTTP/1.1 403") and b"destination_denied" in head
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get("http://169.254.169.254/latest/meta-data/")
    assert r.status_code == 403 and _error(r, p)["error"] == "destination_denied"
    assert parent.got == []


async def test_a_reload_changes_the_parent_for_new_connections(make_proxy) -> None:
    first = await FakeParent(b"HTTP/1.1 403 First\r\n\r\n").start()
    second = await FakeParent(b"HTTP/1.1 403 Second\r\n\r\n").start()
    text = "upstream_proxy: http://127.0.0.1:{}\nroutes: []\n"
    p = await make_proxy(text.format(first.port))
    head, _ = await _blind(p, "tunnel.test:8443", b"")
    assert b"403 First" in head
    p.config_path.write_text(f"state_dir: {p.runtime.snapshot.config.state_dir}\n" + text.format(second.port))
    p.runtime.apply(config.load(p.config_path))
    head, _ = await _blind(p, "tunnel.test:8443", b"")
    assert b"403 Second" in head and len(first.got) == 1 and len(second.got) == 1


async def test_a_client_certificate_is_presented_through_the_parent(
    make_proxy, squid: Squid, mtls_upstream, tmp_path: Path, secret_env
) -> None:
    """TLS is end to end inside the parent's tunnel: the route's client certificate reaches the upstream."""
    pair = mtls_upstream.client_ca.issue(tmp_path, "client", common_name="through-the-parent")
    secret_env("PARENT_USER", USER)
    secret_env("PARENT_PASSWORD", PASSWORD)
    p = await make_proxy(
        f"""
        upstream_proxy: http://${{PARENT_USER}}:${{PARENT_PASSWORD}}@{squid.authority}
        routes:
          - name: icpt
            match: {mtls_upstream.authority}
            ca_file: {mtls_upstream.server_ca}
            client_cert: {pair.cert}
            client_key: {pair.key}
            auth: {{type: bearer, token: "${{PARENT_USER}}-bearer-token"}}
        """
    )
    p.secrets.update({PASSWORD, BASIC})
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        r = await client.get(f"{mtls_upstream.url}/through")
    assert r.status_code == 200, r.text
    assert r.json()["subject"] == pair.subject
    await p.runtime.upstreams.pool.close()  # squid logs a tunnel when it closes
    squid.wait_for_line("CONNECT", mtls_upstream.authority, USER)


def _parent_at(squid: Squid, password: str) -> Parent:
    basic = "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()
    return Parent("127.0.0.1", squid.port, Value(USER, USER), Secret(password, "${P}"), Secret(basic, "****"))


async def test_aiohttp_requests_to_https_urls_tunnel_through_the_parent(squid: Squid, tls_upstream) -> None:
    """The control plane's https:// requests (token endpoints, Bitwarden, discovery): CONNECT with the
    parent's credentials, TLS verified end to end; a 407 to that CONNECT names the parent."""
    up, ca_path = tls_upstream
    ctx = ssl.create_default_context(cafile=str(ca_path))
    status, _ = await asyncio.to_thread(
        control.request, "GET", f"{up.url}/via-connect", timeout=20, sslctx=ctx, parent=_parent_at(squid, PASSWORD)
    )
    assert status == 200 and up.seen[-1]["path"] == "/via-connect"
    squid.wait_for_line("CONNECT", up.authority, USER, "/200 ")
    with pytest.raises(control.ParentFailed) as info:
        await asyncio.to_thread(
            control.request, "GET", f"{up.url}/x", timeout=20, sslctx=ctx, parent=_parent_at(squid, "wrong-" + PASSWORD)
        )
    assert str(info.value) == f"the parent proxy {squid.authority} refused authproxy's credentials (407)."
    assert len(up.seen) == 1
