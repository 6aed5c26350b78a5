"""refresh_token with rotation and restarts, and the whole `authproxy login` flow, against Authlib."""

from __future__ import annotations

import asyncio
import html
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import requests

from tests.support.oauth_server import OAuthServer
from tests.support.proc import start_proxy

from .conftest import Upstream, assert_no_secrets

CLIENT_SECRET = "rt-client-secret-5150"


def _guard(upstream: Upstream, server: OAuthServer) -> None:
    upstream.check_auth = lambda h: bool(h and h.startswith("Bearer ") and server.is_valid(h[7:]))


def _config(tmp_path: Path, upstream: Upstream, server: OAuthServer, seed_var: str = "RT_SEED") -> Path:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            state_dir: {tmp_path / "state"}
            routes:
              - name: crm
                match: {upstream.authority}
                auth:
                  type: refresh_token
                  token_url: {server.token_url}
                  client_id: crm
                  client_secret: ${{RT_CLIENT_SECRET}}
                  refresh_token: ${{{seed_var}}}
            """
        )
    )
    return cfg


async def test_rotation_persisted_and_restart_never_replays(tmp_path: Path, upstream: Upstream, oauth_server) -> None:
    oauth_server.add_client("crm", CLIENT_SECRET, grant_types=("refresh_token",))
    seed = oauth_server.issue_refresh_token("crm", scope="read write")
    oauth_server.expires_in = 3600
    _guard(upstream, oauth_server)
    cfg = _config(tmp_path, upstream, oauth_server)
    env = {"RT_SEED": seed, "RT_CLIENT_SECRET": CLIENT_SECRET}
    logs: list[str] = []
    for restart in range(3):
        p = start_proxy(cfg, env=env)
        try:
            async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
                for _ in range(3):
                    r = await client.get(f"{upstream.url}/deals")
                    assert r.status_code == 200, r.text
                if restart == 1:
                    # Force a refresh mid-life: the upstream refuses the token.
                    oauth_server.revoke(oauth_server.issued()[-1])
                    assert (await client.get(f"{upstream.url}/after-revoke")).status_code == 200
        finally:
            assert p.stop() == 0
        logs.append(p.stderr_text())
    # One refresh in run 0; run 1 reuses the stored access token, then refreshes
    # once after the revocation; run 2 reuses the stored access token again.
    assert oauth_server.token_requests("refresh_token") == 2
    assert oauth_server.reuse_detected() == 0  # no spent refresh token was ever presented
    stored = json.loads((tmp_path / "state" / "tokens" / "crm.json").read_text())["data"]
    assert stored["refresh_token"] in oauth_server.refresh_tokens_valid()
    assert stored["refresh_token"] != seed  # rotated, and the rotation was kept
    assert (tmp_path / "state" / "tokens" / "crm.json").stat().st_mode & 0o777 == 0o600
    assert_no_secrets(logs, [seed, CLIENT_SECRET, *oauth_server.issued(), stored["refresh_token"]])


async def test_new_seed_in_config_replaces_the_stored_one(tmp_path: Path, upstream: Upstream, oauth_server) -> None:
    oauth_server.add_client("crm", CLIENT_SECRET, grant_types=("refresh_token",))
    first = oauth_server.issue_refresh_token("crm")
    _guard(upstream, oauth_server)
    cfg = _config(tmp_path, upstream, oauth_server)
    env = {"RT_SEED": first, "RT_CLIENT_SECRET": CLIENT_SECRET}
    p = start_proxy(cfg, env=env)
    try:
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            assert (await client.get(f"{upstream.url}/a")).status_code == 200
    finally:
        p.stop()
    oauth_server.revoke_all()  # the whole grant is gone; the user pastes a new token
    second = oauth_server.issue_refresh_token("crm")
    p = start_proxy(cfg, env={**env, "RT_SEED": second})
    try:
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            assert (await client.get(f"{upstream.url}/b")).status_code == 200
    finally:
        p.stop()
    assert oauth_server.reuse_detected() == 0


async def test_invalid_grant_says_login_needed_and_does_not_hammer(
    make_proxy, upstream: Upstream, oauth_server, secret_env
) -> None:
    oauth_server.add_client("crm", CLIENT_SECRET, grant_types=("refresh_token",))
    seed = oauth_server.issue_refresh_token("crm")
    oauth_server.revoke_refresh_token(seed)
    secret_env("RT_SEED", seed)
    secret_env("RT_CLIENT_SECRET", CLIENT_SECRET)
    p = await make_proxy(
        f"""
        routes:
          - name: crm
            match: {upstream.authority}
            auth: {{type: refresh_token, token_url: {oauth_server.token_url}, client_id: crm,
                    client_secret: "${{RT_CLIENT_SECRET}}", refresh_token: "${{RT_SEED}}"}}
        """
    )
    p.secrets.update({seed, CLIENT_SECRET})
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
        p.bodies.append(r.text)
        assert r.status_code == 502
        body = r.json()
        assert body["error"] == "token_endpoint_error" and "invalid_grant" in body["detail"]
        assert "new refresh token or login" in body["detail"]
        rs = await asyncio.gather(*(client.get(f"{upstream.url}/y{i}") for i in range(10)))
    assert {x.status_code for x in rs} == {502}
    assert oauth_server.token_requests("refresh_token") == 1
    assert upstream.seen == []


async def test_token_command_shares_the_store_with_a_running_proxy(
    tmp_path: Path, upstream: Upstream, oauth_server
) -> None:
    oauth_server.add_client("crm", CLIENT_SECRET, grant_types=("refresh_token",))
    seed = oauth_server.issue_refresh_token("crm")
    _guard(upstream, oauth_server)
    cfg = _config(tmp_path, upstream, oauth_server)
    env = {"RT_SEED": seed, "RT_CLIENT_SECRET": CLIENT_SECRET}
    p = start_proxy(cfg, env=env)
    try:
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            assert (await client.get(f"{upstream.url}/a")).status_code == 200
        out = subprocess.run(
            [sys.executable, "-m", "authproxy", "token", "crm", "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "PATH": "/usr/bin:/bin"},
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == "Authorization: Bearer ****\n"
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            assert (await client.get(f"{upstream.url}/b")).status_code == 200
    finally:
        p.stop()
    # `token` used the access token the proxy stored instead of spending the refresh token.
    assert oauth_server.token_requests("refresh_token") == 1
    assert oauth_server.reuse_detected() == 0


def _login_config(tmp_path: Path, upstream: Upstream, server: OAuthServer, how: str) -> Path:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            state_dir: {tmp_path / "state"}
            routes:
              - name: app
                match: {upstream.authority}
                auth:
                  type: authorization_code
                  {how}
                  client_id: app
                  scope: read
            """
        )
    )
    return cfg


def _browser(url: str, user: str, password: str) -> requests.Response:
    """A scripted browser: follows redirects with cookies, fills the login form."""
    s = requests.Session()
    r = s.get(url, timeout=30)
    assert r.status_code == 200 and "form" in r.text.lower(), r.text
    action = re.search(r'action="([^"]+)"', r.text)
    target = requests.compat.urljoin(r.url, action.group(1) if action else "/login")
    hidden = {k: html.unescape(v) for k, v in re.findall(r'name="([^"]+)" value="([^"]*)"', r.text)}
    return s.post(target, data={**hidden, "username": user, "password": password}, timeout=30)


async def _login(cfg: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "authproxy", "login", "app", "-c", str(cfg), "--no-browser", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "AUTHPROXY_DEBUG": "1", **(extra_env or {})},
    )
    assert proc.stdout is not None
    url = ""
    while not url:
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line, proc.stderr.read() if proc.stderr else ""
        if line.strip().startswith("http"):
            url = line.strip()
    return proc, url


async def test_login_flow_with_discovery_pkce_and_iss(tmp_path: Path, upstream: Upstream, oauth_server) -> None:
    oauth_server.add_client(
        "app",
        None,
        auth_method="none",
        grant_types=("authorization_code", "refresh_token"),
        redirect_uris=("http://127.0.0.1/callback",),
    )
    oauth_server.add_user("erin", "erin-password-42")
    _guard(upstream, oauth_server)
    cfg = _login_config(tmp_path, upstream, oauth_server, f"issuer: {oauth_server.issuer}")
    proc, url = await _login(cfg)
    assert "code_challenge_method=S256" in url and "state=" in url
    resp = await asyncio.to_thread(_browser, url, "erin", "erin-password-42")
    assert resp.status_code == 200 and "logged in" in resp.text, (resp.url, resp.text)
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    assert "Logged in" in out
    assert oauth_server.last_authorize_params()["code_challenge_method"] == "S256"
    # Now the route works, and keeps working after the access token is refused.
    p = start_proxy(cfg)
    try:
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            assert (await client.get(f"{upstream.url}/me")).status_code == 200
            oauth_server.revoke(oauth_server.issued()[-1])
            assert (await client.get(f"{upstream.url}/me2")).status_code == 200
    finally:
        p.stop()
    stored = json.loads((tmp_path / "state" / "tokens" / "app.json").read_text())["data"]
    assert_no_secrets([out, err, p.stderr_text()], [stored["refresh_token"], *oauth_server.issued()])


async def test_login_with_explicit_endpoints_and_state_checked(
    tmp_path: Path, upstream: Upstream, oauth_server
) -> None:
    oauth_server.add_client(
        "app",
        None,
        auth_method="none",
        grant_types=("authorization_code", "refresh_token"),
        redirect_uris=("http://127.0.0.1/callback",),
    )
    oauth_server.send_iss = False
    how = (
        f"authorization_url: {oauth_server.base_url}/oauth/authorize\n"
        f"                  token_url: {oauth_server.token_url}"
    )
    cfg = _login_config(tmp_path, upstream, oauth_server, how)
    proc, url = await _login(cfg)
    redirect = re.search(r"redirect_uri=([^&]+)", url)
    assert redirect is not None
    callback = requests.utils.unquote(redirect.group(1))
    # A forged callback with the wrong state is refused, and the login keeps waiting.
    forged = await asyncio.to_thread(requests.get, f"{callback}?code=x&state=wrong", timeout=10)
    assert forged.status_code == 400
    oauth_server.add_user("erin", "erin-password-42")
    resp = await asyncio.to_thread(_browser, url, "erin", "erin-password-42")
    assert resp.status_code == 200
    _out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err


async def test_route_without_login_says_so(make_proxy, upstream: Upstream, oauth_server) -> None:
    p = await make_proxy(
        f"""
        routes:
          - name: app
            match: {upstream.authority}
            auth: {{type: authorization_code, issuer: {oauth_server.issuer}, client_id: app}}
        """
    )
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    assert r.status_code == 502
    assert r.json()["error"] == "credential_unavailable"
    assert "authproxy login app" in r.json()["detail"]


async def test_login_times_out_clearly(tmp_path: Path, upstream: Upstream, oauth_server) -> None:
    oauth_server.add_client(
        "app",
        None,
        auth_method="none",
        grant_types=("authorization_code", "refresh_token"),
        redirect_uris=("http://127.0.0.1/callback",),
    )
    cfg = _login_config(tmp_path, upstream, oauth_server, f"issuer: {oauth_server.issuer}")
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "authproxy", "login", "app", "-c", str(cfg), "--no-browser", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "nobody completed the login within 1 s" in out.stderr


# A discovery document that points elsewhere over http:// is what a real server will not
# produce on demand: a small aiohttp app serves it.
CLEAR_ENDPOINTS = [
    ("token endpoint", {"token_endpoint": "http://id.example/token"}),
    ("authorization endpoint", {"authorization_endpoint": "http://id.example/authorize"}),
    ("token endpoint", {"token_endpoint": "http://auth.localhost/token"}),
]


@pytest.mark.parametrize(("what", "override"), CLEAR_ENDPOINTS)
async def test_login_refuses_discovered_clear_text_endpoints(
    tmp_path: Path, upstream: Upstream, what: str, override: dict[str, str]
) -> None:
    from aiohttp import web

    from authproxy.config import load
    from authproxy.disk.store import StateStore
    from authproxy.tokens.login import LoginError, login

    async def metadata(request: web.Request) -> web.Response:
        base = f"http://{request.host}"
        doc = {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "code_challenge_methods_supported": ["S256"],
            **override,
        }
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/.well-known/oauth-authorization-server", metadata)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    said: list[str] = []
    try:
        path = tmp_path / "routes.yaml"
        path.write_text(
            f"state_dir: {tmp_path / 'state'}\nroutes:\n  - name: app\n    match: {upstream.authority}\n"
            f"    auth: {{type: authorization_code, issuer: 'http://127.0.0.1:{port}', client_id: app}}\n"
        )
        cfg = load(path)
        with pytest.raises(LoginError) as info:
            await login(cfg.routes[0], StateStore(cfg.state_dir), 10, wait=5, open_browser=False, say=said.append)
    finally:
        await runner.cleanup()
    message = str(info.value)
    assert what in message and "clear text" in message, message
    assert said == [], "the login went on to ask for a browser"


async def test_a_stored_clear_text_token_endpoint_is_not_used(make_proxy, upstream: Upstream) -> None:
    """A token endpoint stored by an older login is checked before the refresh token goes to it."""
    from authproxy.disk.store import StateStore

    p = await make_proxy(
        f"""
        routes:
          - name: app
            match: {upstream.authority}
            auth: {{type: authorization_code, issuer: https://id.example, client_id: app}}
        """
    )
    StateStore(p.runtime.snapshot.config.state_dir).write(
        "app", {"refresh_token": "stored-rt-0af3e9", "token_url": "http://id.example/token"}
    )
    p.secrets.add("stored-rt-0af3e9")
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    assert r.status_code == 502 and r.json()["error"] == "credential_unavailable"
    assert "clear text" in r.json()["detail"]
    assert upstream.seen == []
