"""Every path that can print, at DEBUG, grepped for every secret in every spelling.

One proxy process runs with `--log-level debug` through successes, OAuth
errors, upstream 401s, retries, malformed requests and missing variables;
its whole stderr, every response body and the CLI's output are searched for
the secrets in raw, base64 (alone and as Basic's `user:password`),
URL-encoded and JSON-escaped forms.
"""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import httpx

from tests.support.oauth_server import OAuthServer
from tests.support.proc import start_proxy

from .conftest import Upstream, assert_no_secrets
from .test_cli import cli

SECRETS = {
    "LEAK_CC_SECRET": "leak-cc-s3cr3t/+=&%",
    "LEAK_BAD_SECRET": 'leak-wrong-s3cr3t"q',
    "LEAK_API_KEY": "leak-api-key <x>",
    "LEAK_BASIC_PW": "leak-basic-pw:é",
    "LEAK_USER_PW": "leak-user-password!",
}


async def test_no_secret_anywhere_at_debug(tmp_path: Path, upstream: Upstream, oauth_server: OAuthServer) -> None:
    oauth_server.add_client("good", SECRETS["LEAK_CC_SECRET"])
    oauth_server.add_client("pwc", None, auth_method="none", grant_types=("password",))
    oauth_server.add_user("carol", SECRETS["LEAK_USER_PW"])
    # The upstream refuses everything but a valid OAuth token: static grants get 401s.
    upstream.check_auth = lambda h: bool(h and h.startswith("Bearer ") and oauth_server.is_valid(h[7:]))
    up = upstream.authority
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            routes:
              - name: good
                match: {up}/good
                auth: {{type: client_credentials, token_url: {oauth_server.token_url}, client_id: good,
                        client_secret: "${{LEAK_CC_SECRET}}"}}
              - name: bad
                match: {up}/bad
                auth: {{type: client_credentials, token_url: {oauth_server.token_url}, client_id: good,
                        client_secret: "${{LEAK_BAD_SECRET}}", client_auth: client_secret_post}}
              - name: pw
                match: {up}/pw
                auth: {{type: password, token_url: {oauth_server.token_url}, client_id: pwc,
                        username: carol, password: "${{LEAK_USER_PW}}"}}
              - name: key
                match: {up}/key
                auth: {{type: api_key, query: key, value: "${{LEAK_API_KEY}}"}}
              - name: basic
                match: {up}/basic
                auth: {{type: basic, username: dave, password: "${{LEAK_BASIC_PW}}"}}
              - name: unset
                match: {up}/unset
                auth: {{type: api_key, value: "${{LEAK_NOT_SET_AT_ALL}}"}}
            """
        )
    )
    p = start_proxy(cfg, "--log-level", "debug", env=SECRETS)
    bodies: list[str] = []
    try:
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            for path in ("/good/a", "/bad/a", "/pw/a", "/key/a?x=1", "/basic/a", "/unset/a"):
                r = await client.post(f"{upstream.url}{path}", content=b"body")
                if "x-authproxy-error" in r.headers:  # the upstream's echo holds the token by design
                    bodies.append(r.text + str(r.headers))
            oauth_server.revoke_all()
            r = await client.get(f"{upstream.url}/good/after-revoke")
            assert r.status_code == 200
            r = await client.get("http://[bad/x")
            bodies.append(r.text)
    finally:
        assert p.stop() == 0
    assert len(bodies) == 3  # bad, unset, malformed
    checks = [cli("check", "-c", str(cfg), env=SECRETS), cli("token", "bad", "-c", str(cfg), env=SECRETS)]
    for route in ("good", "key", "basic", "pw"):
        checks.append(cli("token", route, "-c", str(cfg), env=SECRETS))
    texts = [p.stderr_text(), *bodies] + [c.stdout + c.stderr for c in checks]
    basic_pair = base64.b64encode(f"dave:{SECRETS['LEAK_BASIC_PW']}".encode()).decode()
    assert_no_secrets(texts, [*SECRETS.values(), basic_pair, *oauth_server.issued()])
    # And the run did exercise what it claims to.
    log = p.stderr_text()
    assert "route=bad status=502" in log and "error=token_endpoint_error" in log
    assert "route=unset status=502" in log
    assert "route=basic status=401" in log
    assert "token=retried" in log
