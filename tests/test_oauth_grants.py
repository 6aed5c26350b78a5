"""client_credentials and password against a real Authlib authorization server.

The upstream accepts only tokens the authorization server says are valid, so
every 200 proves a real token was fetched and injected; token requests are
counted at the authorization server.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt
from aiohttp import web

from tests.support.oauth_server import OAuthServer

from .conftest import Upstream

CLIENT_SECRET = "cc-s3cret-Zq81&x"  # has a character that must be URL-encoded in Basic
USER_PASSWORD = "pw-h0rse-staple-9"


def _guard(upstream: Upstream, server: OAuthServer, scheme: str = "Bearer") -> None:
    def check(h: str | None) -> bool:
        if h is None or not h.startswith(scheme + " "):
            return False
        return server.is_valid(h[len(scheme) + 1 :])

    upstream.check_auth = check


async def _cc_proxy(make_proxy, upstream, oauth_server, secret_env, client_auth="client_secret_basic", extra=""):
    secret_env("CC_SECRET", CLIENT_SECRET)
    oauth_server.add_client("svc", CLIENT_SECRET, auth_method=client_auth)
    _guard(upstream, oauth_server)
    p = await make_proxy(
        f"""
        routes:
          - name: billing
            match: {upstream.authority}
            auth:
              type: client_credentials
              token_url: {oauth_server.token_url}
              client_id: svc
              client_secret: ${{CC_SECRET}}
              client_auth: {client_auth}
              scope: read
              {extra}
        """
    )
    p.secrets.add(CLIENT_SECRET)
    return p


async def test_client_credentials_basic(make_proxy, upstream, oauth_server, secret_env) -> None:
    p = await _cc_proxy(make_proxy, upstream, oauth_server, secret_env)
    async with httpx.AsyncClient(proxy=p.url) as client:
        for _ in range(3):
            r = await client.get(f"{upstream.url}/invoices")
            assert r.status_code == 200
    assert oauth_server.token_requests() == 1  # cached after the first
    last = oauth_server.last_request()
    assert last["auth_method"] == "client_secret_basic" and last["grant_type"] == "client_credentials"
    assert last["params"].get("scope") == "read"
    lines = p.access_lines()
    assert "token=fetched" in lines[0] and "token=cached" in lines[-1]
    p.secrets.update(oauth_server.issued())


async def test_client_credentials_post_with_audience_and_extra(make_proxy, upstream, oauth_server, secret_env) -> None:
    p = await _cc_proxy(
        make_proxy,
        upstream,
        oauth_server,
        secret_env,
        client_auth="client_secret_post",
        extra="audience: https://api.example\n              extra: {resource: urn:billing}",
    )
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    assert r.status_code == 200
    last = oauth_server.last_request()
    assert last["auth_method"] == "client_secret_post"
    assert last["params"]["audience"] == "https://api.example"
    assert last["params"]["resource"] == "urn:billing"
    p.secrets.update(oauth_server.issued())


async def test_wrong_client_auth_method_is_an_oauth_error_502(make_proxy, upstream, oauth_server, secret_env) -> None:
    secret_env("CC_SECRET", CLIENT_SECRET)
    oauth_server.add_client("svc", CLIENT_SECRET, auth_method="client_secret_post")
    p = await make_proxy(
        f"""
        routes:
          - name: billing
            match: {upstream.authority}
            auth: {{type: client_credentials, token_url: {oauth_server.token_url},
                    client_id: svc, client_secret: "${{CC_SECRET}}"}}
        """
    )
    p.secrets.add(CLIENT_SECRET)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    p.bodies.append(r.text)
    assert r.status_code == 502
    body = r.json()
    assert body["error"] == "token_endpoint_error" and body["route"] == "billing"
    assert "invalid_client" in body["detail"]
    assert r.headers["x-authproxy-error"] == "token_endpoint_error"
    assert upstream.seen == []


async def test_single_flight_50_concurrent_first_requests(make_proxy, upstream, oauth_server, secret_env) -> None:
    p = await _cc_proxy(make_proxy, upstream, oauth_server, secret_env)
    async with httpx.AsyncClient(proxy=p.url, limits=httpx.Limits(max_connections=50)) as client:
        rs = await asyncio.gather(*(client.get(f"{upstream.url}/c{i}") for i in range(50)))
    assert [r.status_code for r in rs] == [200] * 50
    assert oauth_server.token_requests() == 1
    p.secrets.update(oauth_server.issued())


async def test_revoked_token_one_refresh_one_retry(make_proxy, upstream, oauth_server, secret_env) -> None:
    p = await _cc_proxy(make_proxy, upstream, oauth_server, secret_env)
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/a")).status_code == 200
        oauth_server.revoke_all()
        r = await client.post(f"{upstream.url}/b", content=b"replay me")
        assert r.status_code == 200
    assert oauth_server.token_requests() == 2  # exactly one extra fetch
    assert upstream.seen[-1]["body_size"] == len(b"replay me")
    assert "token=retried" in p.access_lines()[-1] and "retry=done" in p.access_lines()[-1]
    p.secrets.update(oauth_server.issued())


async def test_burst_of_401s_causes_one_refresh(make_proxy, upstream, oauth_server, secret_env) -> None:
    p = await _cc_proxy(make_proxy, upstream, oauth_server, secret_env)
    async with httpx.AsyncClient(proxy=p.url, limits=httpx.Limits(max_connections=30)) as client:
        assert (await client.get(f"{upstream.url}/warm")).status_code == 200
        oauth_server.revoke_all()
        rs = await asyncio.gather(*(client.get(f"{upstream.url}/burst{i}") for i in range(30)))
    assert [r.status_code for r in rs] == [200] * 30
    assert oauth_server.token_requests() == 2
    p.secrets.update(oauth_server.issued())


async def test_large_body_401_goes_back_as_it_came(make_proxy, upstream, oauth_server, secret_env) -> None:
    p = await _cc_proxy(make_proxy, upstream, oauth_server, secret_env)
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/warm")).status_code == 200
        oauth_server.revoke_all()
        big = b"z" * (2 * 1024 * 1024)  # over the 1 MiB replay_body default
        r = await client.post(f"{upstream.url}/upload", content=big)
        assert r.status_code == 401
        assert "retry=skipped" in p.access_lines()[-1]
        # The token was marked stale: the next request fetches a new one.
        r = await client.get(f"{upstream.url}/after")
        assert r.status_code == 200
    assert oauth_server.token_requests() == 2
    p.secrets.update(oauth_server.issued())


async def test_password_grant_form_public_client_lowercase_bearer(
    make_proxy, upstream, oauth_server, secret_env
) -> None:
    secret_env("USER_PW", USER_PASSWORD)
    oauth_server.add_client("cli", None, auth_method="none", grant_types=("password",))
    oauth_server.add_user("alice", USER_PASSWORD)
    oauth_server.token_type = "bearer"
    _guard(upstream, oauth_server)
    p = await make_proxy(
        f"""
        routes:
          - name: pw
            match: {upstream.authority}
            auth:
              type: password
              token_url: {oauth_server.token_url}
              client_id: cli
              username: alice
              password: ${{USER_PW}}
        """
    )
    p.secrets.add(USER_PASSWORD)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/me")
    assert r.status_code == 200
    last = oauth_server.last_request()
    assert last["grant_type"] == "password" and last["auth_method"] == "none"
    p.secrets.update(oauth_server.issued())


async def test_password_grant_json_body_with_secret(make_proxy, upstream, oauth_server, secret_env) -> None:
    secret_env("USER_PW", USER_PASSWORD)
    secret_env("CC_SECRET", CLIENT_SECRET)
    oauth_server.add_client("app", CLIENT_SECRET, auth_method="client_secret_post", grant_types=("password",))
    oauth_server.add_user("bob", USER_PASSWORD)
    _guard(upstream, oauth_server)
    p = await make_proxy(
        f"""
        routes:
          - name: pwjson
            match: {upstream.authority}
            auth:
              type: password
              token_url: {oauth_server.json_token_url}
              body: json
              client_auth: client_secret_post
              client_id: app
              client_secret: ${{CC_SECRET}}
              username: bob
              password: ${{USER_PW}}
        """
    )
    p.secrets.update({USER_PASSWORD, CLIENT_SECRET})
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/me")
    assert r.status_code == 200
    assert oauth_server.last_request()["content_type"] == "application/json"
    p.secrets.update(oauth_server.issued())


async def test_unusual_token_type_passes_through(make_proxy, upstream, oauth_server, secret_env) -> None:
    oauth_server.token_type = "MAC"
    p = await _cc_proxy(make_proxy, upstream, oauth_server, secret_env)
    _guard(upstream, oauth_server, scheme="MAC")
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/m")
    assert r.status_code == 200
    p.secrets.update(oauth_server.issued())


async def test_expiry_from_jwt_exp(make_proxy, upstream, oauth_server, secret_env) -> None:
    oauth_server.jwt_tokens = True
    oauth_server.expires_in = 120
    p = await _cc_proxy(make_proxy, upstream, oauth_server, secret_env)
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/j")).status_code == 200
    route = p.runtime.snapshot.table.get("billing")
    cred, _ = await p.runtime.tokens.get(route)
    token = oauth_server.issued()[-1]
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert cred.expires_at == exp
    p.secrets.update(oauth_server.issued())


async def test_refresh_ahead_of_expiry(make_proxy, upstream, oauth_server, secret_env) -> None:
    oauth_server.expires_in = 3
    p = await _cc_proxy(make_proxy, upstream, oauth_server, secret_env, extra="refresh_skew: 2")
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/1")).status_code == 200
        oauth_server.expires_in = 3600  # the next token lives long
        await asyncio.sleep(1.3)  # now within refresh_skew of expiry
        assert (await client.get(f"{upstream.url}/2")).status_code == 200
        for _ in range(50):
            if oauth_server.token_requests() == 2:
                break
            await asyncio.sleep(0.05)
        assert oauth_server.token_requests() == 2
        await asyncio.sleep(2.0)  # the first token has expired; the new one serves
        assert (await client.get(f"{upstream.url}/3")).status_code == 200
    assert oauth_server.token_requests() == 2
    p.secrets.update(oauth_server.issued())


# --- a token endpoint that fails on demand (real servers won't) -------------


class FlakyTokenEndpoint:
    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], float]] = []
        self.hits: list[float] = []
        self.expires_in = 3600
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(time.monotonic())
        status, headers, delay = self.script.pop(0) if self.script else (200, {}, 0.0)
        if delay:
            await asyncio.sleep(delay)
        if status == 200:
            return web.json_response(
                {
                    "access_token": f"flaky-token-{len(self.hits)}",
                    "token_type": "Bearer",
                    "expires_in": self.expires_in,
                }
            )
        return web.Response(status=status, text="try later", headers=headers)


async def _flaky(upstream: Upstream):
    ep = FlakyTokenEndpoint()
    app = web.Application()
    app.router.add_post("/token", ep.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ep.url = f"http://127.0.0.1:{port}/token"
    upstream.check_auth = lambda h: bool(h and h.startswith("Bearer flaky-token-"))
    return ep, runner


async def _flaky_proxy(make_proxy, upstream, ep, secret_env, timeouts=""):
    secret_env("CC_SECRET", CLIENT_SECRET)
    p = await make_proxy(
        f"""
        {timeouts}
        routes:
          - name: flaky
            match: {upstream.authority}
            auth: {{type: client_credentials, token_url: {ep.url}, client_id: svc,
                    client_secret: "${{CC_SECRET}}"}}
        """
    )
    p.secrets.add(CLIENT_SECRET)
    return p


async def test_5xx_then_429_retry_after_then_success(make_proxy, upstream, secret_env) -> None:
    ep, runner = await _flaky(upstream)
    try:
        ep.script = [(500, {}, 0.0), (429, {"Retry-After": "1"}, 0.0)]
        p = await _flaky_proxy(make_proxy, upstream, ep, secret_env)
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            r = await client.get(f"{upstream.url}/x")
        assert r.status_code == 200
        assert len(ep.hits) == 3
        assert ep.hits[2] - ep.hits[1] >= 0.9  # Retry-After honoured
    finally:
        await runner.cleanup()


async def test_token_endpoint_timeout_is_504(make_proxy, upstream, secret_env) -> None:
    ep, runner = await _flaky(upstream)
    try:
        ep.script = [(200, {}, 5.0)]
        p = await _flaky_proxy(make_proxy, upstream, ep, secret_env, "timeouts: {token_fetch: 0.5}")
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            r = await client.get(f"{upstream.url}/x")
        assert r.status_code == 504
        assert r.json()["error"] == "token_endpoint_timeout" and r.json()["route"] == "flaky"
    finally:
        await runner.cleanup()


async def test_endpoint_down_cached_token_keeps_serving_expired_never_used(make_proxy, upstream, secret_env) -> None:
    ep, runner = await _flaky(upstream)
    try:
        ep.expires_in = 2
        p = await _flaky_proxy(make_proxy, upstream, ep, secret_env, "timeouts: {token_fetch: 1}")
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            assert (await client.get(f"{upstream.url}/1")).status_code == 200
            ep.script = [(503, {}, 0.0)] * 100
            # Within the skew (60 s > 2 s): refresh fails, cached token still valid.
            assert (await client.get(f"{upstream.url}/2")).status_code == 200
            await asyncio.sleep(2.1)
            r = await client.get(f"{upstream.url}/3")
            assert r.status_code == 502
            assert r.json()["error"] == "token_endpoint_error"
            hits = len(ep.hits)
            # No storm: while backing off, 20 requests cost no token request.
            rs = await asyncio.gather(*(client.get(f"{upstream.url}/s{i}") for i in range(20)))
            assert {x.status_code for x in rs} == {502}
            assert len(ep.hits) == hits
        assert [s["headers"] for s in upstream.seen if s["path"].startswith(("/3", "/s"))] == []
    finally:
        await runner.cleanup()
