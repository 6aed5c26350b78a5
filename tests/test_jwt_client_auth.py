"""private_key_jwt and client_secret_jwt (RFC 7523 §2.2) against Authlib's own server side.

The authorization server (``tests/support/oauth_server.py`` with
``jwt_assertions.py``) verifies every assertion with Authlib's
``JWTBearerClientAssertion``: the signature with the client's registered
public key (RSA, EC P-256, Ed25519 keys made here with cryptography), the
claims with Authlib's ``verify_claims`` (iss = sub, exactly one ``aud`` it
accepts, ``exp``, a ``jti`` never seen before). The upstream accepts only
tokens that server issued, so a 200 proves the whole chain.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authproxy.config import ConfigError, load
from tests.support.oauth_server import OAuthServer
from tests.support.proc import start_proxy

from .conftest import Upstream, assert_no_secrets
from .test_refresh_login import _browser, _login

HMAC_SECRET = "csj-client-secret-0123456789abcdef-XYZ"  # 38 bytes: long enough for HS256
CC_SECRET = "pkj-unused-secret-4242"


def make_key(kind: str) -> Any:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def write_pem(path: Path, key: Any, password: bytes | None = None) -> str:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc).decode()
    path.write_text(pem)
    return pem


def guard(upstream: Upstream, server: OAuthServer) -> None:
    upstream.check_auth = lambda h: bool(h and h.startswith("Bearer ") and server.is_valid(h[7:]))


def sent_assertions(server: OAuthServer) -> list[str]:
    """The assertions as they arrived at the token endpoint: secrets like any token."""
    return [r["params"]["client_assertion"] for r in server.all_requests() if "client_assertion" in r["params"]]


def pkj_route(upstream: Upstream, server: OAuthServer, key_path: Path, extra: str = "", grant: str = "") -> str:
    return f"""
        routes:
          - name: svc
            match: {upstream.authority}
            auth:
              type: client_credentials
              token_url: {server.token_url}
              client_id: svc-client
              client_auth: private_key_jwt
              signing_key: {key_path}
              scope: read
              {extra}
        """


ALG = {"rsa": "RS256", "ec": "ES256", "ed25519": "EdDSA"}


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
async def test_private_key_jwt_by_key_type(kind: str, make_proxy, upstream, oauth_server, tmp_path) -> None:
    key = make_key(kind)
    pem = write_pem(tmp_path / "client.pem", key)
    oauth_server.add_client("svc-client", None, auth_method="private_key_jwt", public_key=key.public_key())
    guard(upstream, oauth_server)
    p = await make_proxy(pkj_route(upstream, oauth_server, tmp_path / "client.pem", "kid: key-2026"))
    p.secrets.add(pem)
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/a")).status_code == 200
        oauth_server.revoke_all()  # the next request gets a 401, a new token, a new assertion
        assert (await client.get(f"{upstream.url}/b")).status_code == 200
    got = oauth_server.assertions()
    assert [a["use"] for a in got] == ["private_key_jwt", "private_key_jwt"]
    for a in got:
        assert a["header"]["alg"] == ALG[kind] and a["header"]["kid"] == "key-2026"
        claims = a["claims"]
        assert claims["iss"] == claims["sub"] == "svc-client"
        assert claims["aud"] == oauth_server.token_url
        assert claims["exp"] - claims["iat"] == 60
    assert got[0]["claims"]["jti"] != got[1]["claims"]["jti"]
    last = oauth_server.last_request()
    assert last["params"]["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in last["params"] and "authorization" not in last["headers"]
    p.secrets.update(oauth_server.issued(), sent_assertions(oauth_server))


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
async def test_assertion_audience_is_the_one_aud_the_server_accepts(
    kind: str, make_proxy, upstream, oauth_server, tmp_path
) -> None:
    key = make_key(kind)
    pem = write_pem(tmp_path / "client.pem", key)
    oauth_server.add_client("svc-client", None, auth_method="private_key_jwt", public_key=key.public_key())
    oauth_server.assertion_audience = oauth_server.issuer  # this server wants its issuer identifier
    guard(upstream, oauth_server)
    wrong = await make_proxy(pkj_route(upstream, oauth_server, tmp_path / "client.pem"))
    right = await make_proxy(
        pkj_route(upstream, oauth_server, tmp_path / "client.pem", f"assertion_audience: {oauth_server.issuer}")
    )
    async with httpx.AsyncClient(proxy=wrong.url) as client:
        refused = await client.get(f"{upstream.url}/a")
    async with httpx.AsyncClient(proxy=right.url) as client:
        accepted = await client.get(f"{upstream.url}/a")
    assert refused.status_code == 502 and refused.json()["error"] == "token_endpoint_error"
    assert "invalid_client" in refused.json()["detail"]
    assert accepted.status_code == 200
    assert [a["claims"]["aud"] for a in oauth_server.assertions()] == [oauth_server.issuer]
    for p in (wrong, right):
        p.bodies.append(refused.text)
        p.secrets.update([pem], oauth_server.issued(), sent_assertions(oauth_server))


async def test_wrong_key_is_invalid_client_502(make_proxy, upstream, oauth_server, tmp_path) -> None:
    registered, used = make_key("ec"), make_key("ec")
    pem = write_pem(tmp_path / "client.pem", used)
    oauth_server.add_client("svc-client", None, auth_method="private_key_jwt", public_key=registered.public_key())
    p = await make_proxy(pkj_route(upstream, oauth_server, tmp_path / "client.pem"))
    p.secrets.add(pem)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/a")
    p.bodies.append(r.text)
    assert r.status_code == 502 and r.headers["x-authproxy-error"] == "token_endpoint_error"
    body = r.json()
    assert body["error"] == "token_endpoint_error" and body["route"] == "svc"
    assert "invalid_client" in body["detail"]
    assert upstream.seen == [] and oauth_server.assertions() == []
    p.secrets.update(sent_assertions(oauth_server))


async def test_client_secret_jwt_never_sends_the_secret(make_proxy, upstream, oauth_server, secret_env) -> None:
    secret_env("CSJ_SECRET", HMAC_SECRET)
    oauth_server.add_client("csj-client", HMAC_SECRET, auth_method="client_secret_jwt")
    oauth_server.assertion_audience = oauth_server.json_token_url  # aud is the URL posted to
    guard(upstream, oauth_server)
    p = await make_proxy(
        f"""
        routes:
          - name: csj
            match: {upstream.authority}
            auth: {{type: client_credentials, token_url: {oauth_server.json_token_url}, client_id: csj-client,
                    client_secret: "${{CSJ_SECRET}}", client_auth: client_secret_jwt, body: json}}
        """
    )
    p.secrets.add(HMAC_SECRET)
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/a")).status_code == 200
    (only,) = oauth_server.assertions()
    assert only["use"] == "client_secret_jwt" and only["header"]["alg"] == "HS256"
    assert only["claims"]["aud"] == oauth_server.json_token_url
    last = oauth_server.last_request()
    assert_no_secrets([json.dumps(last)], [HMAC_SECRET])  # neither the body nor a header carries it
    p.secrets.update(oauth_server.issued(), sent_assertions(oauth_server))


async def test_password_and_refresh_token_grants_sign_too(make_proxy, upstream, oauth_server, tmp_path) -> None:
    key = make_key("ec")
    pem = write_pem(tmp_path / "client.pem", key)
    oauth_server.add_client(
        "svc-client",
        None,
        auth_method="private_key_jwt",
        public_key=key.public_key(),
        grant_types=("password", "refresh_token"),
    )
    oauth_server.add_user("ann", "ann-password-77")
    seed = oauth_server.issue_refresh_token("svc-client")
    guard(upstream, oauth_server)
    common = (
        f"token_url: {oauth_server.token_url}, client_id: svc-client, client_auth: private_key_jwt, "
        f"signing_key: {tmp_path / 'client.pem'}, signing_alg: ES256"
    )
    p = await make_proxy(
        f"""
        routes:
          - name: pw
            match: {upstream.authority}/pw
            auth: {{type: password, {common}, username: ann, password: ann-password-77}}
          - name: rt
            match: {upstream.authority}/rt
            auth: {{type: refresh_token, {common}, refresh_token: {seed}}}
        """
    )
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/pw/x")).status_code == 200
        assert (await client.get(f"{upstream.url}/rt/x")).status_code == 200
    assert oauth_server.token_requests("password") == 1 and oauth_server.token_requests("refresh_token") == 1
    assert [a["use"] for a in oauth_server.assertions()] == ["private_key_jwt", "private_key_jwt"]
    stored = json.loads((Path(p.runtime.store.dir) / "rt.json").read_text())["data"]
    p.secrets.update(
        [pem, seed, stored["refresh_token"], "ann-password-77"], oauth_server.issued(), sent_assertions(oauth_server)
    )


async def test_encrypted_key_with_a_password(make_proxy, upstream, oauth_server, tmp_path, secret_env) -> None:
    key = make_key("rsa")
    pem = write_pem(tmp_path / "client.pem", key, b"pem-pass-phrase-31")
    secret_env("KEY_PASSWORD", "pem-pass-phrase-31")
    oauth_server.add_client("svc-client", None, auth_method="private_key_jwt", public_key=key.public_key())
    guard(upstream, oauth_server)
    p = await make_proxy(
        pkj_route(upstream, oauth_server, tmp_path / "client.pem", 'signing_key_password: "${KEY_PASSWORD}"')
    )
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/a")).status_code == 200
    p.secrets.update([pem, "pem-pass-phrase-31"], oauth_server.issued(), sent_assertions(oauth_server))


async def test_key_from_an_unset_variable_is_a_502_naming_it(make_proxy, upstream, oauth_server, monkeypatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_PEM", raising=False)
    p = await make_proxy(
        f"""
        routes:
          - name: svc
            match: {upstream.authority}
            auth: {{type: client_credentials, token_url: {oauth_server.token_url}, client_id: c,
                    client_auth: private_key_jwt, signing_key: "${{NO_SUCH_KEY_PEM}}"}}
        """
    )
    assert any("NO_SUCH_KEY_PEM" in w.message for w in p.runtime.snapshot.config.warnings)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/a")
    assert r.status_code == 502 and r.json()["error"] == "credential_unavailable"
    assert "NO_SUCH_KEY_PEM" in r.json()["detail"] and oauth_server.token_requests() == 0


async def test_key_as_pem_text_from_a_variable(make_proxy, upstream, oauth_server, tmp_path, secret_env) -> None:
    key = make_key("ec")
    pem = secret_env("CLIENT_KEY_PEM", write_pem(tmp_path / "unused.pem", key))
    oauth_server.add_client("svc-client", None, auth_method="private_key_jwt", public_key=key.public_key())
    guard(upstream, oauth_server)
    p = await make_proxy(pkj_route(upstream, oauth_server, Path('"${CLIENT_KEY_PEM}"')))
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/a")).status_code == 200
    p.secrets.update([pem], oauth_server.issued(), sent_assertions(oauth_server))


async def test_login_code_exchange_signs_with_the_key(tmp_path: Path, upstream: Upstream, oauth_server) -> None:
    key = make_key("ed25519")
    pem = write_pem(tmp_path / "client.pem", key)
    oauth_server.add_client(
        "app",
        None,
        auth_method="private_key_jwt",
        public_key=key.public_key(),
        grant_types=("authorization_code", "refresh_token"),
        redirect_uris=("http://127.0.0.1/callback",),
    )
    oauth_server.add_user("erin", "erin-password-42")
    guard(upstream, oauth_server)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        f"""
state_dir: {tmp_path / "state"}
routes:
  - name: app
    match: {upstream.authority}
    auth:
      type: authorization_code
      issuer: {oauth_server.issuer}
      client_id: app
      client_auth: private_key_jwt
      signing_key: client.pem
      scope: read
"""
    )
    proc, url = await _login(cfg)
    resp = await asyncio.to_thread(_browser, url, "erin", "erin-password-42")
    assert resp.status_code == 200 and "logged in" in resp.text
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    p = start_proxy(cfg)
    try:
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            assert (await client.get(f"{upstream.url}/me")).status_code == 200  # the token the login stored
            oauth_server.revoke_all()
            assert (await client.get(f"{upstream.url}/me")).status_code == 200  # refreshed, signed again
    finally:
        p.stop()
    uses = [(r["grant_type"], r["auth_method"], r["status"]) for r in oauth_server.all_requests()]
    assert uses == [("authorization_code", "client_assertion", 200), ("refresh_token", "client_assertion", 200)]
    assert {a["header"]["alg"] for a in oauth_server.assertions()} == {"EdDSA"}
    stored = json.loads((tmp_path / "state" / "tokens" / "app.json").read_text())["data"]
    leaks = [pem, stored["refresh_token"], *oauth_server.issued(), *sent_assertions(oauth_server)]
    assert_no_secrets([out, err, p.stderr_text()], leaks)


# -- what `check` says ---------------------------------------------------------------------------


def _problems(tmp_path: Path, auth: str) -> str:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(f"routes:\n  - name: r\n    match: r.test\n    auth: {auth}\n")
    with pytest.raises(ConfigError) as info:
        load(cfg)
    return str(info.value)


@pytest.mark.parametrize(
    ("auth", "said"),
    [
        (
            "{type: client_credentials, token_url: https://id.test/t, client_id: c, client_auth: private_key_jwt}",
            "`signing_key` is required",
        ),
        (
            "{type: client_credentials, token_url: https://id.test/t, client_id: c, client_auth: private_key_jwt,"
            " signing_key: rsa.pem, signing_alg: ES256}",
            "`ES256` does not go with this key",
        ),
        (
            "{type: client_credentials, token_url: https://id.test/t, client_id: c, client_auth: private_key_jwt,"
            " signing_key: small.pem}",
            "too weak",
        ),
        (
            "{type: client_credentials, token_url: https://id.test/t, client_id: c, client_auth: private_key_jwt,"
            " signing_key: locked.pem}",
            "give its password in `signing_key_password`",
        ),
        (
            "{type: client_credentials, token_url: https://id.test/t, client_id: c, client_auth: private_key_jwt,"
            " signing_key: rsa.pem, signing_key_password: x1234567}",
            "not encrypted",
        ),
        (
            "{type: client_credentials, token_url: https://id.test/t, client_id: c, client_auth: private_key_jwt,"
            " signing_key: notakey.pem}",
            "not a PEM private key",
        ),
        (
            "{type: client_credentials, token_url: https://id.test/t, client_id: c, client_auth: private_key_jwt,"
            " signing_key: rsa.pem, client_secret: s3cret-s3cret}",
            "remove `client_secret`",
        ),
        (
            "{type: client_credentials, token_url: https://id.test/t, client_id: c, client_secret: s3cret-s3cret,"
            " signing_key: rsa.pem}",
            "private_key_jwt only",
        ),
        (
            "{type: client_credentials, token_url: https://id.test/t, client_id: c, client_secret: s3cret-s3cret,"
            " assertion_audience: https://id.test}",
            "goes with client_auth",
        ),
        (
            "{type: client_credentials, token_url: https://id.test/t, client_id: c, client_secret: s3cret-s3cret,"
            " client_auth: client_secret_jwt, signing_alg: RS256}",
            "client_secret_jwt signs with HS256",
        ),
        (
            "{type: password, token_url: https://id.test/t, client_auth: client_secret_jwt, username: u,"
            " password: p4ssw0rd-p4ss}",
            "`client_id` is required",
        ),
        (
            "{type: client_credentials, token_url: https://id.test/t, client_id: c, client_auth: tls_client_awth}",
            "must be one of",
        ),
    ],
)
def test_check_reports_client_auth_problems(tmp_path: Path, auth: str, said: str) -> None:
    write_pem(tmp_path / "rsa.pem", make_key("rsa"))
    write_pem(tmp_path / "small.pem", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    write_pem(tmp_path / "locked.pem", make_key("ec"), b"locked-pass-1")
    (tmp_path / "notakey.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    text = _problems(tmp_path, auth)
    assert said in text and "routes[0].auth" in text and ":4:" in text, text


def test_check_warns_about_a_short_hmac_secret_and_never_shows_the_key(tmp_path: Path) -> None:
    pem = write_pem(tmp_path / "k.pem", make_key("ec"))
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        "routes:\n"
        "  - {name: a, match: a.test, auth: {type: client_credentials, token_url: https://id.test/t,"
        " client_id: c, client_secret: short-secret-1, client_auth: client_secret_jwt}}\n"
        "  - {name: b, match: b.test, auth: {type: client_credentials, token_url: https://id.test/t,"
        " client_id: c, client_auth: private_key_jwt, signing_key: k.pem}}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "authproxy", "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert "HS256 wants a key of 32 bytes or more" in run.stderr
    assert_no_secrets([run.stdout, run.stderr], [pem, "short-secret-1"])


def test_joserfc_is_loaded_only_when_a_route_signs(tmp_path: Path) -> None:
    """A configuration is loaded, signing routes and all, without joserfc: only a signature imports it."""
    write_pem(tmp_path / "k.pem", make_key("ec"))
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        "routes:\n"
        "  - {name: a, match: a.test, auth: {type: client_credentials, token_url: https://id.test/t,"
        " client_id: c, client_auth: private_key_jwt, signing_key: k.pem}}\n"
        "  - {name: b, match: b.test, auth: {type: jwt_bearer, token_url: https://id.test/t, assertion_file: t}}\n"
    )
    code = (
        "import sys\n"
        "from authproxy.config import load\n"
        "import authproxy.pipeline, authproxy.cli.main\n"
        "load(sys.argv[1])\n"
        "print('joserfc' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, timeout=60, cwd=str(root)
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_the_grants_digest_is_the_same_before_and_after_signing(tmp_path: Path) -> None:
    """Workers share tokens by a digest of the grant's settings (tokens/shared.py): signing must not change it."""
    from authproxy.credentials.signing import fresh_claims
    from authproxy.tokens.shared import grant_digest

    write_pem(tmp_path / "k.pem", make_key("rsa"))
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        "routes:\n"
        "  - {name: a, match: a.test, auth: {type: client_credentials, token_url: https://id.test/t,"
        " client_id: c, client_auth: private_key_jwt, signing_key: k.pem}}\n"
    )
    grant = load(cfg).routes[0].auth
    before = grant_digest(grant)
    key = grant.client.auth.key  # type: ignore[attr-defined]
    assert key.sign(fresh_claims("c", "c", "https://id.test/t"), "a").count(".") == 2
    assert grant_digest(grant) == before == grant_digest(load(cfg).routes[0].auth)


async def test_workers_share_one_signed_fetch_and_one_exchange(
    tmp_path: Path, upstream: Upstream, oauth_server: OAuthServer
) -> None:
    """`run --workers 2`: private_key_jwt and a token exchange through subject_route, one fetch each, and
    one more each after a burst of 401s on both workers (workers name a stored token by a digest of the
    grant's settings, which signing must leave alone)."""
    from tests.support.sts_server import CLIENT_ID, CLIENT_SECRET, start_sts

    from .test_workers import _burst, _children, _config

    key = make_key("ec")
    pem = write_pem(tmp_path / "client.pem", key)
    oauth_server.add_client("svc-client", None, auth_method="private_key_jwt", public_key=key.public_key())
    sts = await start_sts()
    sts.accept_subject = lambda token, kind: oauth_server.is_valid(token)
    upstream.check_auth = lambda h: bool(
        h and h.startswith("Bearer ") and (sts.is_valid(h[7:]) or oauth_server.is_valid(h[7:]))
    )
    routes = f"""
    - name: api
      match: {upstream.authority}/api
      auth: {{type: token_exchange, token_url: {sts.token_url}, client_id: {CLIENT_ID},
              client_secret: "${{WK_STS_SECRET}}", subject_route: idp}}
    - name: idp
      match: {upstream.authority}/idp
      auth: {{type: client_credentials, token_url: {oauth_server.token_url}, client_id: svc-client,
              client_auth: private_key_jwt, signing_key: {tmp_path / "client.pem"}}}
    """
    p = start_proxy(_config(tmp_path, routes, admin=False), "--workers", "2", env={"WK_STS_SECRET": CLIENT_SECRET})
    exchanged: list[str] = []
    try:
        assert {r.status_code for r in await _burst(p, f"{upstream.url}/api")} == {200}
        assert {r.status_code for r in await _burst(p, f"{upstream.url}/idp")} == {200}
        assert len(_children(p.proc.pid)) == 2
        assert oauth_server.token_requests() == 1 and len(sts.requests) == 1
        exchanged += sts.issued
        sts.issued.clear()  # every exchanged token refused: 401s on both workers, one new exchange
        assert {r.status_code for r in await _burst(p, f"{upstream.url}/api")} == {200}
        assert len(sts.requests) == 2 and oauth_server.token_requests() == 1  # the subject token was still good
        oauth_server.revoke_all()  # and the same for the signed fetch
        assert {r.status_code for r in await _burst(p, f"{upstream.url}/idp")} == {200}
        assert oauth_server.token_requests() == 2
    finally:
        assert p.stop() == 0, p.stderr_text()
        await sts.server.close()
    leaks = [pem, CLIENT_SECRET, *oauth_server.issued(), *sent_assertions(oauth_server), *exchanged, *sts.issued]
    assert_no_secrets(p.err_lines, leaks)


async def test_a_dpop_nonce_retry_signs_a_new_client_assertion(make_proxy, upstream, oauth_server, tmp_path) -> None:
    """RFC 9449 §8: a token endpoint may answer use_dpop_nonce after checking the client; the retry
    must carry a new assertion, since the server keeps each jti once (Authlib's validate_jti)."""
    import base64

    from aiohttp import ClientSession, web
    from aiohttp.test_utils import TestServer

    key = make_key("ec")
    pem = write_pem(tmp_path / "client.pem", key)
    oauth_server.add_client("svc-client", None, auth_method="private_key_jwt", public_key=key.public_key())
    oauth_server.token_type = "DPoP"
    seen: list[dict[str, str]] = []

    async def front(request: web.Request) -> web.Response:
        """Challenges a proof without a nonce, as a server checking DPoP after client authentication does."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        seen.append(form)
        proof = request.headers.get("DPoP", "")
        claims = json.loads(base64.urlsafe_b64decode(proof.split(".")[1] + "==")) if proof.count(".") == 2 else {}
        if claims.get("nonce") != "n-1":
            body = {"error": "use_dpop_nonce", "error_description": "Authorization server requires nonce in DPoP proof"}
            return web.json_response(body, status=400, headers={"DPoP-Nonce": "n-1"})
        async with ClientSession() as s, s.post(oauth_server.token_url, data=form) as resp:
            return web.Response(body=await resp.read(), status=resp.status, content_type="application/json")

    app = web.Application()
    app.router.add_post("/token", front)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        token_url = str(server.make_url("/token"))
        oauth_server.assertion_audience = token_url  # the URL the client posts to
        upstream.check_auth = lambda h: bool(h and h.startswith("DPoP ") and oauth_server.is_valid(h[5:]))
        p = await make_proxy(
            f"""
            routes:
              - name: svc
                match: {upstream.authority}
                auth: {{type: client_credentials, token_url: {token_url}, client_id: svc-client,
                        client_auth: private_key_jwt, signing_key: {tmp_path / "client.pem"}, dpop: true}}
            """
        )
        async with httpx.AsyncClient(proxy=p.url) as client:
            assert (await client.get(f"{upstream.url}/a")).status_code == 200
    finally:
        await server.close()
    first, second = (f["client_assertion"] for f in seen)
    assert first != second and len(oauth_server.assertions()) == 1
    p.secrets.update([pem, first, second], oauth_server.issued())
