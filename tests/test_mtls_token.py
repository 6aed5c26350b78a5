"""Token endpoints over mutual TLS (RFC 8705) and a corporate inspection CA trusted by every outbound connection."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from tests.support.bws_server import BwsServer
from tests.support.mtls_token_server import MTLSTokenServer, application, tls_front
from tests.support.mtls_upstream import MTLSUpstream, app, jwt_claims, server_context, thumbprint
from tests.support.pki import Pair, TestCA

from .conftest import Proxy, Upstream, assert_no_secrets

PASSWORD = "token-key-password-5772156"


@pytest.fixture
def inspection_ca(tmp_path: Path) -> TestCA:
    """A CA no system store holds: what a TLS-inspecting corporate proxy signs its certificates with."""
    return TestCA("Corp TLS Inspection CA")


@pytest.fixture
async def mtls_upstream(tmp_path: Path) -> AsyncIterator[MTLSUpstream]:
    up = MTLSUpstream(require_binding=True)
    runner = web.AppRunner(app(up), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(tmp_path, up))
    await site.start()
    up.port = runner.addresses[0][1]
    yield up
    await runner.cleanup()


@pytest.fixture
async def token_server(
    tmp_path: Path, inspection_ca: TestCA, mtls_upstream: MTLSUpstream
) -> AsyncIterator[MTLSTokenServer]:
    """The token endpoint, its certificate signed by the inspection CA, its clients by the upstream's client CA."""
    server = MTLSTokenServer()
    leaf = inspection_ca.issue(tmp_path, "token-endpoint", common_name="127.0.0.1", server=True)
    ctx = tls_front(str(leaf.cert), str(leaf.key), mtls_upstream.client_ca.pem())
    runner = web.AppRunner(application(server), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    server.port = runner.addresses[0][1]
    yield server
    await runner.cleanup()


def _client_ctx(p: Proxy):  # type: ignore[no-untyped-def]
    import ssl

    assert p.runtime.ca is not None
    return ssl.create_default_context(cafile=str(p.runtime.ca.files.cert))


def _route(up: MTLSUpstream, ts: MTLSTokenServer, pair: Pair, extra_ca: Path | None) -> str:
    top = f"extra_ca_file: {extra_ca}\n        " if extra_ca is not None else ""
    return f"""
        {top}routes:
          - name: bound
            match: {up.authority}
            ca_file: {up.server_ca}
            auth:
              type: client_credentials
              token_url: {ts.token_url}
              client_id: agent-7
              client_auth: tls_client_auth
              client_cert: {pair.cert}
              client_key: {pair.key}
              client_key_password: "${{TOKEN_KEY_PASSWORD}}"
        """


def _secret_lines(pair: Pair) -> set[str]:
    return {line for line in pair.key.read_text().splitlines() if not line.startswith("-----")}


async def test_tls_client_auth_gets_a_certificate_bound_token_used_as_issued(
    make_proxy, secret_env, tmp_path: Path, inspection_ca: TestCA, mtls_upstream: MTLSUpstream, token_server
) -> None:
    pair = mtls_upstream.client_ca.issue(tmp_path, "agent", common_name="agent-7", password=PASSWORD)
    token_server.clients["agent-7"] = pair.subject
    secret_env("TOKEN_KEY_PASSWORD", PASSWORD)
    p = await make_proxy(_route(mtls_upstream, token_server, pair, inspection_ca.write(tmp_path / "corp-ca.pem")))
    p.secrets.update({PASSWORD, *_secret_lines(pair)})
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        for i in range(3):
            r = await client.get(f"{mtls_upstream.url}/bound/{i}")
            p.bodies.append(r.text)
            assert r.status_code == 200, r.text
            assert r.json()["subject"] == pair.subject
    # RFC 8705 §2.1.1: the client_id in the body, no secret anywhere; one fetch for three requests.
    assert token_server.forms == [{"grant_type": "client_credentials", "client_id": "agent-7"}]
    assert token_server.auth_headers == [None]
    # §3: bound to the certificate the proxy presented, which the upstream saw too (it checked the binding).
    assert jwt_claims(token_server.issued[0])["cnf"]["x5t#S256"] == thumbprint(pair.der)
    p.secrets.update(token_server.issued)


async def test_without_the_inspection_ca_the_token_fetch_is_a_tls_verification_error(
    make_proxy, secret_env, tmp_path: Path, mtls_upstream: MTLSUpstream, token_server
) -> None:
    pair = mtls_upstream.client_ca.issue(tmp_path, "agent", common_name="agent-7", password=PASSWORD)
    token_server.clients["agent-7"] = pair.subject
    secret_env("TOKEN_KEY_PASSWORD", PASSWORD)
    p = await make_proxy(_route(mtls_upstream, token_server, pair, None))
    p.secrets.update({PASSWORD, *_secret_lines(pair)})
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        r = await client.get(f"{mtls_upstream.url}/x")
    p.bodies.append(r.text)
    assert r.status_code == 502 and r.headers["X-Authproxy-Error"] == "token_endpoint_error"
    assert "failed TLS verification" in r.json()["detail"] and "certificate" in r.json()["detail"]
    assert token_server.forms == []


@pytest.fixture
def tls_bws_server(tmp_path: Path, inspection_ca: TestCA) -> BwsServer:
    import ssl

    leaf = inspection_ca.issue(tmp_path, "bws", common_name="127.0.0.1", server=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(leaf.cert, leaf.key)
    server = BwsServer(tls=ctx).start()
    yield server  # type: ignore[misc]
    server.stop()


@pytest.mark.parametrize("trusted", [True, False])
async def test_a_bws_endpoint_behind_inspection_is_trusted_through_extra_ca_file(
    make_proxy,
    secret_env,
    tmp_path: Path,
    inspection_ca: TestCA,
    upstream: Upstream,
    tls_bws_server: BwsServer,
    trusted,
) -> None:
    server = tls_bws_server
    secret_env("BWS_ACCESS_TOKEN", server.access_token)
    upstream.check_auth = lambda h: bool(h and h.startswith("Bearer ") and server.is_valid(h[7:]))
    top = f"extra_ca_file: {inspection_ca.write(tmp_path / 'corp-ca.pem')}" if trusted else ""
    p = await make_proxy(
        f"""
        {top}
        routes:
          - name: sm
            match: {upstream.authority}
            auth: {{type: bws, access_token: "${{BWS_ACCESS_TOKEN}}", identity_url: {server.identity_url},
                    api_url: {server.api_url}}}
        """
    )
    p.secrets.update({server.access_token, server.client_secret})
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/s")
    if trusted:  # the upstream echoes the headers it got: the token, on purpose
        assert r.status_code == 200, r.text
        assert server.requests["token"] == 1
    else:
        p.bodies.append(r.text)
        assert r.status_code == 502 and r.headers["X-Authproxy-Error"] == "token_endpoint_error"
        assert "failed TLS verification" in r.json()["detail"]
        assert server.requests["token"] == 0
    p.secrets.update(server.issued())


def test_authproxy_env_bundle_holds_the_extra_roots(tmp_path: Path, inspection_ca: TestCA) -> None:
    corp = inspection_ca.write(tmp_path / "corp-ca.pem")
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        f"state_dir: {tmp_path / 'state'}\nextra_ca_file: {corp}\n"
        "routes:\n  - {name: a, match: a.example, auth: {type: api_key, value: '${NOPE}'}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "authproxy", "env", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    env = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if line.startswith("export "))
    bundle = Path(env["SSL_CERT_FILE"].strip("'")).read_text()
    assert inspection_ca.pem().decode().strip() in bundle
    # The proxy's own CA is in it too, after the roots.
    assert (tmp_path / "state" / "ca.pem").read_text().strip() in bundle


def test_check_names_each_routes_trust_and_client_certificate(
    tmp_path: Path, inspection_ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_ca = TestCA("clients")
    pair = client_ca.issue(tmp_path, "c", common_name="agent-check", password=PASSWORD)
    corp = inspection_ca.write(tmp_path / "corp-ca.pem")
    pinned = client_ca.write(tmp_path / "pinned.pem")
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        f"""
extra_ca_file: {corp}
routes:
  - name: certified
    match: a.example
    client_cert: {pair.cert.name}
    client_key: {pair.key.name}
    client_key_password: "${{CHECK_KEY_PASSWORD}}"
    auth: {{type: api_key, value: "${{NOPE}}"}}
  - name: pinned
    match: b.example
    ca_file: {pinned.name}
    auth: {{type: api_key, value: "${{NOPE}}"}}
  - name: loose
    match: c.example
    verify: false
    auth: {{type: api_key, value: "${{NOPE}}"}}
"""
    )
    env = {"PATH": "/usr/bin:/bin", "CHECK_KEY_PASSWORD": PASSWORD}
    r = subprocess.run(
        [sys.executable, "-m", "authproxy", "check", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert any(
        x.startswith(f"tls certified: trusts system+extra {corp}; presents CN=agent-check,O=authproxy tests until ")
        for x in lines
    ), lines
    assert f"tls pinned: trusts route ca_file {pinned}." in lines
    assert "tls loose: trusts verify off." in lines
    assert "client_key_password=${CHECK_KEY_PASSWORD}" not in r.stdout  # a route key, not the grant's
    assert_no_secrets([r.stdout, r.stderr], [PASSWORD, *_secret_lines(pair)])


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            "client_cert: a.crt\n    client_key: c.key",
            "routes[0].client_key: the key {c_key} does not match the certificate {a_crt}",
        ),
        (
            "client_cert: b.crt\n    client_key: b.key",
            "routes[0].client_key: the key {b_key} is encrypted; set `client_key_password`",
        ),
        (
            'client_cert: b.crt\n    client_key: b.key\n    client_key_password: "${WRONG_PASSWORD}"',
            "routes[0].client_key: the key {b_key} cannot be decrypted with `client_key_password`",
        ),
        ("client_cert: a.crt\n    client_key: nope.key", "routes[0].client_key: {nope_key} is not a readable file"),
        ("client_cert: a.crt", "routes[0].client_key: give both `client_cert` and `client_key`"),
        ("client_cert: a.key\n    client_key: a.key", "routes[0].client_key: {a_key} is not a PEM certificate"),
    ],
)
def test_a_bad_client_certificate_is_one_sentence_at_load(tmp_path: Path, keys: str, message: str) -> None:
    from authproxy.config import load
    from authproxy.schema.problems import ConfigError

    ca = TestCA("clients")
    ca.issue(tmp_path, "a", common_name="a")
    ca.issue(tmp_path, "b", common_name="b", password=PASSWORD)
    ca.issue(tmp_path, "c", common_name="c")
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(f"routes:\n  - name: r\n    match: a.example\n    {keys}\n    auth: {{type: api_key, value: x}}\n")
    import os

    os.environ["WRONG_PASSWORD"] = "not-the-password-123"
    try:
        with pytest.raises(ConfigError) as info:
            load(cfg)
    finally:
        del os.environ["WRONG_PASSWORD"]
    paths = {k: str(tmp_path / k.replace("_", ".")) for k in ("a_crt", "a_key", "b_key", "c_key", "nope_key")}
    text = str(info.value)
    assert message.format(**paths) in text, text
    assert PASSWORD not in text and "not-the-password-123" not in text


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ("client_auth: tls_client_auth", "auth.client_auth: `tls_client_auth` needs `client_cert` and `client_key`"),
        (
            "client_auth: tls_client_auth\n      client_secret: s3cret-value-long-enough\n"
            "      client_cert: a.crt\n      client_key: a.key",
            "auth.client_secret: `tls_client_auth` authenticates with the certificate; remove `client_secret`",
        ),
    ],
)
def test_tls_client_auth_needs_a_certificate_and_no_secret(tmp_path: Path, auth: str, message: str) -> None:
    from authproxy.config import load
    from authproxy.schema.problems import ConfigError

    TestCA("clients").issue(tmp_path, "a", common_name="a")
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        "routes:\n  - name: r\n    match: a.example\n    auth:\n      type: client_credentials\n"
        f"      token_url: https://id.example/token\n      client_id: c\n      {auth}\n"
    )
    with pytest.raises(ConfigError) as info:
        load(cfg)
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize("trusted", [True, False])
async def test_login_discovers_and_exchanges_behind_inspection_with_tls_client_auth(
    tmp_path: Path, inspection_ca: TestCA, upstream: Upstream, trusted: bool
) -> None:
    """`authproxy login`'s discovery and code exchange trust extra_ca_file, and present the client certificate."""
    import asyncio
    import json
    import ssl
    from urllib.parse import parse_qs, urlsplit

    from authproxy.config import load
    from authproxy.disk.store import StateStore
    from authproxy.tokens.login import LoginError, login
    from tests.support.mtls_upstream import peer_der, subject_of

    client_ca = TestCA("clients")
    pair = client_ca.issue(tmp_path, "app", common_name="login-app")
    exchanges: list[tuple[dict[str, str], str | None]] = []

    async def metadata(request: web.Request) -> web.Response:
        base = f"https://{request.host}"
        return web.json_response(
            {
                "issuer": base,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/token",
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def token(request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        exchanges.append((form, subject_of(peer_der(request))))
        return web.json_response({"access_token": "at-login-1", "refresh_token": "rt-login-2", "expires_in": 60})

    leaf = inspection_ca.issue(tmp_path, "idp", common_name="127.0.0.1", server=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(leaf.cert, leaf.key)
    ctx.verify_mode = ssl.CERT_OPTIONAL  # discovery comes without a certificate, the exchange with one
    ctx.load_verify_locations(cadata=client_ca.pem().decode())
    app_ = web.Application()
    app_.router.add_get("/.well-known/oauth-authorization-server", metadata)
    app_.router.add_post("/token", token)
    runner = web.AppRunner(app_, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    port = runner.addresses[0][1]
    top = f"extra_ca_file: {inspection_ca.write(tmp_path / 'corp-ca.pem')}\n" if trusted else ""
    path = tmp_path / "routes.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n{top}routes:\n  - name: app\n    match: {upstream.authority}\n"
        f"    auth: {{type: authorization_code, issuer: 'https://127.0.0.1:{port}', client_id: app,\n"
        f"            client_auth: tls_client_auth, client_cert: {pair.cert}, client_key: {pair.key}}}\n"
    )
    cfg = load(path)
    said: list[str] = []

    async def browser() -> None:
        import re

        found: list[str] = []
        while not found:
            found = re.findall(r"https://\S+/authorize\S*", "\n".join(said))
            await asyncio.sleep(0.02)
        q = parse_qs(urlsplit(found[0]).query)
        async with httpx.AsyncClient() as client:
            await client.get(q["redirect_uri"][0], params={"code": "code-1", "state": q["state"][0]})

    try:
        run = login(
            cfg.routes[0],
            StateStore(cfg.state_dir),
            10,
            wait=30,
            open_browser=False,
            say=said.append,
            extra_ca=cfg.extra_ca_file,
        )
        if trusted:
            helper = asyncio.create_task(browser())
            where = await asyncio.wait_for(run, 60)
            await helper
            assert json.loads(Path(where).read_text())["data"]["refresh_token"] == "rt-login-2"
            ((form, subject),) = exchanges
            assert subject == pair.subject and form["client_id"] == "app" and "client_secret" not in form
            assert form["grant_type"] == "authorization_code" and form["code"] == "code-1"
        else:
            with pytest.raises(LoginError, match="certificate failed TLS verification"):
                await asyncio.wait_for(run, 60)
            assert exchanges == []
    finally:
        await runner.cleanup()
