"""type: jwt_bearer (RFC 7523 §2.1) against Authlib's ``JWTBearerGrant``.

Three sources of the assertion: a file a "kubelet" rotates (the test signs
Kubernetes-style service-account tokens with its own key, as the API server
would), a helper program, and the proxy's own signature with ``signing_key``
and ``assertion_claims``. The authorization server verifies each with
Authlib (signature by the issuer's registered key, exactly one ``aud``, ``exp``,
a ``jti`` never seen before); the upstream accepts only tokens it issued.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.support.jwt_assertions import JWT_BEARER
from tests.support.oauth_server import OAuthServer

from .test_jwt_client_auth import ALG, guard, make_key, write_pem

K8S_ISSUER = "https://kubernetes.default.svc"
SA = "system:serviceaccount:billing:api"


def k8s_token(key: ECKey, audience: str) -> str:
    """What the kubelet would mount: an ES256 JWT from the cluster's issuer (the test's key, not the proxy's code)."""
    now = int(time.time())
    claims = {"iss": K8S_ISSUER, "sub": SA, "aud": audience, "iat": now, "exp": now + 600, "jti": str(uuid.uuid4())}
    return jwt.encode({"alg": "ES256", "kid": "cluster"}, claims, key)


def cluster(server: OAuthServer) -> ECKey:
    key = ECKey.generate_key("P-256")
    server.add_client("k8s", None, auth_method="none", grant_types=(JWT_BEARER,), public_key=key)
    server.assertion_issuers[K8S_ISSUER] = "k8s"
    return key


def bearer_route(upstream: Any, server: OAuthServer, body: str) -> str:
    return f"""
        routes:
          - name: wl
            match: {upstream.authority}
            auth:
              type: jwt_bearer
              token_url: {server.token_url}
              scope: read
              {body}
        """


async def test_assertion_file_is_read_again_when_it_rotates(make_proxy, upstream, oauth_server, tmp_path) -> None:
    key = cluster(oauth_server)
    guard(upstream, oauth_server)
    first, second = k8s_token(key, oauth_server.token_url), k8s_token(key, oauth_server.token_url)
    (tmp_path / "sa-token").write_text(first + "\n")
    p = await make_proxy(bearer_route(upstream, oauth_server, f"assertion_file: {tmp_path / 'sa-token'}"))
    p.secrets.update([first, second])
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/a")).status_code == 200
        assert (await client.get(f"{upstream.url}/b")).status_code == 200  # cached
        (tmp_path / "sa-token").write_text(second)  # the kubelet rotated it
        oauth_server.revoke_all()
        assert (await client.get(f"{upstream.url}/c")).status_code == 200  # 401, one new fetch, the new file
    assert oauth_server.token_requests(JWT_BEARER) == 2
    got = [a["claims"] for a in oauth_server.assertions()]
    assert [c["sub"] for c in got] == [SA, SA]
    assert got[0]["jti"] != got[1]["jti"]
    assert oauth_server.last_request()["params"]["scope"] == "read"
    p.secrets.update(oauth_server.issued())


async def test_assertion_command(make_proxy, upstream, oauth_server, tmp_path) -> None:
    key = cluster(oauth_server)
    guard(upstream, oauth_server)
    svid = k8s_token(key, oauth_server.token_url)
    (tmp_path / "svid").write_text(svid)
    helper = tmp_path / "fetch-svid.py"
    helper.write_text(f"import sys\nsys.stdout.write(open({str(tmp_path / 'svid')!r}).read())\n")
    p = await make_proxy(bearer_route(upstream, oauth_server, f"assertion_command: [{sys.executable}, {helper}]"))
    p.secrets.add(svid)
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/a")).status_code == 200
    assert oauth_server.token_requests(JWT_BEARER) == 1
    p.secrets.update(oauth_server.issued())


async def test_an_unreadable_assertion_file_is_a_502_naming_it(make_proxy, upstream, oauth_server, tmp_path) -> None:
    p = await make_proxy(bearer_route(upstream, oauth_server, f"assertion_file: {tmp_path / 'nothing-here'}"))
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/a")
    assert r.status_code == 502 and r.json()["error"] == "credential_unavailable"
    assert "nothing-here" in r.json()["detail"] and oauth_server.token_requests() == 0


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
async def test_signed_here_with_assertion_claims(kind: str, make_proxy, upstream, oauth_server, tmp_path) -> None:
    key = make_key(kind)
    pem = write_pem(tmp_path / "sa.pem", key)
    issuer = "robot@project.iam.example"
    oauth_server.add_client("robot", None, auth_method="none", grant_types=(JWT_BEARER,), public_key=key.public_key())
    oauth_server.assertion_issuers[issuer] = "robot"
    guard(upstream, oauth_server)
    p = await make_proxy(
        bearer_route(
            upstream,
            oauth_server,
            f"signing_key: {tmp_path / 'sa.pem'}\n"
            f"              kid: sa-key-1\n"
            f"              assertion_claims: {{iss: {issuer}, sub: dana@example.com, scope: read}}",
        )
    )
    p.secrets.add(pem)
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/a")).status_code == 200
        oauth_server.revoke_all()
        assert (await client.get(f"{upstream.url}/b")).status_code == 200
    got = oauth_server.assertions()
    assert [a["use"] for a in got] == [JWT_BEARER, JWT_BEARER]
    for a in got:
        assert a["header"]["alg"] == ALG[kind] and a["header"]["kid"] == "sa-key-1"
        c = a["claims"]
        assert (c["iss"], c["sub"], c["aud"], c["scope"]) == (
            issuer,
            "dana@example.com",
            oauth_server.token_url,
            "read",
        )
        assert c["exp"] - c["iat"] == 60
    assert got[0]["claims"]["jti"] != got[1]["claims"]["jti"]
    p.secrets.update(oauth_server.issued(), [r["params"]["assertion"] for r in oauth_server.all_requests()])


@pytest.mark.parametrize("how", ["assertion_audience: AUD", "assertion_claims: {aud: AUD}"])
async def test_signed_assertion_audience(how: str, make_proxy, upstream, oauth_server, tmp_path) -> None:
    key = make_key("ec")
    pem = write_pem(tmp_path / "sa.pem", key)
    oauth_server.add_client("robot", None, auth_method="none", grant_types=(JWT_BEARER,), public_key=key.public_key())
    oauth_server.assertion_audience = oauth_server.issuer
    guard(upstream, oauth_server)
    base = f"client_id: robot\n              signing_key: {tmp_path / 'sa.pem'}"
    wrong = await make_proxy(bearer_route(upstream, oauth_server, base))
    right = await make_proxy(
        bearer_route(upstream, oauth_server, base + "\n              " + how.replace("AUD", oauth_server.issuer))
    )
    async with httpx.AsyncClient(proxy=wrong.url) as client:
        refused = await client.get(f"{upstream.url}/a")
    async with httpx.AsyncClient(proxy=right.url) as client:
        accepted = await client.get(f"{upstream.url}/a")
    assert refused.status_code == 502 and "invalid_grant" in refused.json()["detail"]
    assert accepted.status_code == 200
    assert [a["claims"]["aud"] for a in oauth_server.assertions()] == [oauth_server.issuer]
    for p in (wrong, right):
        p.bodies.append(refused.text)
        p.secrets.update([pem], oauth_server.issued(), [r["params"]["assertion"] for r in oauth_server.all_requests()])


async def test_wrong_signing_key_is_a_502(make_proxy, upstream, oauth_server, tmp_path) -> None:
    registered, used = make_key("rsa"), make_key("rsa")
    pem = write_pem(tmp_path / "sa.pem", used)
    oauth_server.add_client(
        "robot", None, auth_method="none", grant_types=(JWT_BEARER,), public_key=registered.public_key()
    )
    p = await make_proxy(
        bearer_route(upstream, oauth_server, f"client_id: robot\n              signing_key: {tmp_path / 'sa.pem'}")
    )
    p.secrets.add(pem)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/a")
    p.bodies.append(r.text)
    assert r.status_code == 502 and r.json()["error"] == "token_endpoint_error"
    assert "invalid_grant" in r.json()["detail"] and upstream.seen == []
    p.secrets.update(r["params"]["assertion"] for r in oauth_server.all_requests())


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("scope: x", "give `assertion_file`, `assertion_command`, or `signing_key`"),
        ("assertion_file: t, assertion_command: [cat, t]", "not both"),
        ("assertion_file: t, assertion_claims: {iss: a}", "only for an assertion signed here"),
        ("signing_key: k.pem, client_id: c, assertion_claims: {jti: fixed}", "`jti` is set afresh"),
        ("signing_key: k.pem", "needs an issuer"),
        ("assertion_file: t, signing_key: k.pem", "would sign nothing"),
    ],
)
def test_check_reports_jwt_bearer_problems(tmp_path: Path, body: str, said: str) -> None:
    from authproxy.config import ConfigError, load

    write_pem(tmp_path / "k.pem", make_key("ec"))
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        f"routes:\n  - name: r\n    match: r.test\n    auth: {{type: jwt_bearer, token_url: https://id.test/t, {body}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load(cfg)
    assert said in str(info.value) and ":4:" in str(info.value), str(info.value)


def test_check_shows_where_keys_and_assertions_come_from(tmp_path: Path) -> None:
    import subprocess

    from .conftest import assert_no_secrets

    pem = write_pem(tmp_path / "k.pem", make_key("ec"))
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        "routes:\n"
        "  - {name: a, match: a.test, auth: {type: client_credentials, token_url: https://id.test/t, client_id: c,"
        " client_auth: private_key_jwt, signing_key: k.pem}}\n"
        "  - {name: b, match: b.test, auth: {type: jwt_bearer, token_url: https://id.test/t, assertion_file: /run/t}}\n"
        "  - {name: c, match: c.test, auth: {type: jwt_bearer, token_url: https://id.test/t,"
        " assertion_command: [get-svid, --audience, x]}}\n"
        "  - {name: d, match: d.test, auth: {type: token_exchange, token_url: https://id.test/t, subject_route: a}}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "authproxy", "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines()[1:5]]
    assert [r[-1] for r in rows] == [
        "signing_key=k.pem",
        "assertion_file=/run/t",
        "assertion_command=get-svid",
        "subject_route=a",
    ]
    assert_no_secrets([run.stdout, run.stderr], [pem])


async def test_signed_assertion_and_private_key_jwt_with_one_key(make_proxy, upstream, oauth_server, tmp_path) -> None:
    """RFC 7521 §4.1: the client may authenticate beside the grant; here with the same key, both checked by Authlib."""
    key = make_key("ed25519")
    pem = write_pem(tmp_path / "sa.pem", key)
    oauth_server.add_client(
        "robot", None, auth_method="private_key_jwt", grant_types=(JWT_BEARER,), public_key=key.public_key()
    )
    guard(upstream, oauth_server)
    p = await make_proxy(
        bearer_route(
            upstream,
            oauth_server,
            f"client_id: robot\n              client_auth: private_key_jwt\n"
            f"              signing_key: {tmp_path / 'sa.pem'}",
        )
    )
    p.secrets.add(pem)
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/a")).status_code == 200
    uses = [a["use"] for a in oauth_server.assertions()]
    assert uses == [JWT_BEARER, "private_key_jwt"]
    grant, auth = (a["claims"] for a in oauth_server.assertions())
    assert grant["iss"] == grant["sub"] == auth["iss"] == auth["sub"] == "robot" and grant["jti"] != auth["jti"]
    last = oauth_server.last_request()["params"]
    p.secrets.update(oauth_server.issued(), [last["assertion"], last["client_assertion"]])
