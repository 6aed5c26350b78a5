"""Token-endpoint stubbing: an SDK that does its own client_credentials gets a placeholder token.

The client is Authlib's OAuth2Session (requests), through the proxy; the
token endpoint is the real Authlib server of tests/support/oauth_server.py.
The SDK's token request is answered by the proxy and never reaches the
server; the proxy's own fetch, with the real client secret, does.
"""

from __future__ import annotations

import asyncio
from typing import Any

from authlib.integrations.requests_client import OAuth2Session

from tests.support.oauth_server import OAuthServer

from .conftest import Upstream

CLIENT_SECRET = "cc-real-s3cret-Kq71&z"
SDK_SECRET = "whatever-the-sdk-holds-0000"


async def test_sdk_client_credentials_gets_a_placeholder(
    make_proxy, upstream: Upstream, oauth_server: OAuthServer, secret_env
) -> None:
    secret_env("CC_SECRET", CLIENT_SECRET)
    oauth_server.add_client("svc", CLIENT_SECRET)
    upstream.check_auth = lambda h: h is not None and h.startswith("Bearer ") and oauth_server.is_valid(h[7:])
    p = await make_proxy(
        f"""
        routes:
          - name: billing
            match: api.billing.test
            upstream: http://{upstream.authority}
            auth:
              type: client_credentials
              token_url: {oauth_server.token_url}
              client_id: svc
              client_secret: ${{CC_SECRET}}
              placeholder: generate
              stub_token_endpoint: true
        """
    )
    p.secrets.add(CLIENT_SECRET)
    ph = p.runtime.snapshot.placeholders
    assert ph is not None
    placeholder = ph.values["billing"]

    def sdk() -> tuple[dict[str, Any], int, str]:
        session = OAuth2Session("svc", SDK_SECRET, token_endpoint=oauth_server.token_url)
        session.proxies = {"http": p.url, "https": p.url}
        session.trust_env = False
        token = session.fetch_token(oauth_server.token_url, grant_type="client_credentials")
        r = session.get("http://api.billing.test/v1/invoices")
        return dict(token), r.status_code, r.text

    token, status, body = await asyncio.to_thread(sdk)
    assert token["access_token"] == placeholder and token["token_type"].lower() == "bearer"
    assert token["expires_in"] > 0
    assert status == 200, body
    # The SDK's token request was answered by the proxy: the server saw one request, the proxy's own.
    assert oauth_server.token_requests() == 1
    last = oauth_server.last_request()
    assert SDK_SECRET not in str(last) and last["client_id"] == "svc"
    seen = {k.lower(): v for k, v in upstream.seen[-1]["headers"]}
    assert seen["authorization"] != f"Bearer {placeholder}" and oauth_server.is_valid(seen["authorization"][7:])
    assert any("note=token-stub" in line and "status=200" in line for line in p.access_lines())
    p.secrets.update(oauth_server.issued())
    p.bodies.append(str(token))


async def test_stub_on_an_https_token_host_no_route_matches(make_proxy, secret_env) -> None:
    """The token host is intercepted for the stub alone; nothing is forwarded, and other methods get 405."""
    import ssl

    import httpx

    secret_env("CC_SECRET", CLIENT_SECRET)
    p = await make_proxy(
        """
        unmatched: deny
        routes:
          - name: billing
            match: api.billing.test
            auth:
              type: client_credentials
              token_url: https://id.billing.test/connect/token
              client_id: svc
              client_secret: ${CC_SECRET}
              placeholder: generate
              stub_token_endpoint: true
        """
    )
    p.secrets.add(CLIENT_SECRET)
    assert p.runtime.ca is not None
    ctx = ssl.create_default_context(cafile=str(p.runtime.ca.files.cert))
    async with httpx.AsyncClient(proxy=p.url, verify=ctx) as client:
        r = await client.post(
            "https://id.billing.test/connect/token",
            data={"grant_type": "client_credentials", "client_id": "svc", "client_secret": SDK_SECRET},
        )
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        assert r.json()["access_token"].startswith("authproxy-ph-billing-")
        r = await client.get("https://id.billing.test/connect/token")
        assert r.status_code == 405
        r = await client.get("https://id.billing.test/other")
        assert r.status_code == 403  # unmatched: deny, inside the interception as anywhere
