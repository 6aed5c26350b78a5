"""Bitwarden Secrets Manager: access tokens, the `bws` grant and `${bws:SECRET_ID}` values.

The derivation is checked against the vector the public Bitwarden SDK
publishes in its own unit tests; everything else runs against the local
identity + Secrets Manager stand-in (``tests/support/bws_server.py``), whose
crypto is written with ``cryptography`` independently of ``authproxy.credentials.bws``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import httpx
import pytest

from authproxy.config import load
from authproxy.credentials import bws
from authproxy.credentials.grants.bws import Bws
from authproxy.schema.problems import ConfigError
from authproxy.secrecy.secrets import Secret, interpolate
from tests.support.bws_server import BwsServer, bws_server, encrypt_type2, stretch
from tests.support.proc import start_proxy

from .conftest import Upstream, assert_no_secrets

__all__ = ["bws_server"]  # the fixture, imported so pytest finds it

# From the Bitwarden SDK's unit test `can_decode_access_token`
# (bitwarden/sdk, crates/bitwarden-core/src/auth/access_token.rs).
SDK_TOKEN = "0.ec2c1d46-6a4b-4751-a310-af9601317f2d.C2IgxjjLF7qSshsbwe8JGcbM075YXw:X8vbvA0bduihIDe/qrzIQQ=="
SDK_ID = "ec2c1d46-6a4b-4751-a310-af9601317f2d"
SDK_SECRET = "C2IgxjjLF7qSshsbwe8JGcbM075YXw"
SDK_KEY = "X8vbvA0bduihIDe/qrzIQQ=="
SDK_STRETCHED = "H9/oIRLtL9nGCQOVDjSMoEbJsjWXSOCb3qeyDt6ckzS3FhyboEDWyTP/CQfbIszNmAVg2ExFganG1FVFGXO/Jg=="


def _guard(upstream: Upstream, server: BwsServer) -> None:
    upstream.check_auth = lambda h: bool(h and h.startswith("Bearer ") and server.is_valid(h[7:]))


def _grant_route(server: BwsServer, upstream: Upstream, extra: str = "") -> str:
    return f"""
        routes:
          - name: sm
            match: {upstream.authority}
            auth:
              type: bws
              access_token: ${{BWS_ACCESS_TOKEN}}
              identity_url: {server.identity_url}
              api_url: {server.api_url}
              {extra}
        """


def _bws_block(server: BwsServer) -> str:
    return f"""
        bws:
          access_token: ${{BWS_ACCESS_TOKEN}}
          identity_url: {server.identity_url}
          api_url: {server.api_url}
        """


# ------------------------------------------------------------------ the access token and its key


def test_derivation_matches_the_sdk_vector() -> None:
    token = bws.parse_access_token(SDK_TOKEN)
    assert token.access_token_id == SDK_ID
    assert token.client_secret == SDK_SECRET
    assert token.key == base64.b64decode(SDK_KEY)
    assert base64.b64encode(token.stretched.to_bytes()).decode() == SDK_STRETCHED
    raw = base64.b64decode(SDK_STRETCHED)
    assert (token.stretched.enc, token.stretched.mac) == (raw[:32], raw[32:])
    # The SDK accepts the key without its base64 padding, and so do we.
    assert bws.parse_access_token(SDK_TOKEN.rstrip("=")).stretched == token.stretched
    # The independent implementation of the test server agrees.
    assert stretch(base64.b64decode(SDK_KEY)) == raw


def test_derive_shareable_key_matches_the_sdks_generic_vectors() -> None:
    # bitwarden/sdk, crates/bitwarden-crypto/src/keys/shareable_key.rs, test_derive_shareable_key.
    key = bws.derive_shareable_key(b"&/$%F1a895g67HlX", "test_key", None)
    assert base64.b64encode(key.to_bytes()).decode() == (
        "4PV6+PcmF2w7YHRatvyMcVQtI7zvCyssv/wFWmzjiH6Iv9altjmDkuBD1aagLVaLezbthbSe+ktR+U6qswxNnQ=="
    )
    key = bws.derive_shareable_key(b"67t9b5g67$%Dh89n", "test_key", "test")
    assert base64.b64encode(key.to_bytes()).decode() == (
        "F9jVQmrACGx9VUPjuzfMYDjr726JtL300Y3Yg+VYUnVQtQ1s8oImJ5xtp1KALC9h2nav04++1LDW4iFD+infng=="
    )


def test_token_repr_shows_only_its_id() -> None:
    token = bws.parse_access_token(SDK_TOKEN)
    for text in (repr(token), str(token), f"{token}", repr(token.stretched)):
        assert_no_secrets([text], [SDK_SECRET, SDK_KEY, SDK_STRETCHED])


_KEY32 = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    ("token", "words"),
    [
        (f"1.{SDK_ID}.{SDK_SECRET}:{SDK_KEY}", "not of version 0"),
        (f"2.{SDK_ID}.{SDK_SECRET}:{SDK_KEY}", "not of version 0"),
        (f"0.{SDK_ID}.{SDK_SECRET}.{SDK_KEY}", "no `:<key>` part"),
        (f"0.{SDK_ID}.{SDK_SECRET}.more:{SDK_KEY}", "4 dot-separated parts"),
        (f"{SDK_ID}.{SDK_SECRET}:{SDK_KEY}", "2 dot-separated parts"),
        (f"0.not-a-uuid-{SDK_SECRET}.{SDK_SECRET}:{SDK_KEY}", "not a UUID"),
        (f"0.{SDK_ID}.:{SDK_KEY}", "client secret"),
        (f"0.{SDK_ID}.{SDK_SECRET}:X8vb!A0bduihIDe/qrzIQQ==", "not valid base64"),
        (f"0.{SDK_ID}.{SDK_SECRET}:{_KEY32}", "has 32 bytes; it must have 16"),
        (f"0.{SDK_ID}.{SDK_SECRET}:", "has 0 bytes"),
        ("", "empty"),
    ],
)
def test_malformed_tokens_never_echo_the_secret(token: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        bws.parse_access_token(token)
    message = str(info.value)
    assert words in message
    assert_no_secrets([message, repr(info.value)], [SDK_SECRET, SDK_KEY, _KEY32, SDK_ID, token or "x" * 8])


def test_malformed_token_in_config_is_a_load_error_that_does_not_echo_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = f"1.{SDK_ID}.{SDK_SECRET}:{SDK_KEY}"
    monkeypatch.setenv("BWS_ACCESS_TOKEN", bad)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        textwrap.dedent(
            """\
            routes:
              - name: sm
                match: vault.example
                auth: {type: bws, access_token: "${BWS_ACCESS_TOKEN}", region: eu}
            """
        )
    )
    with pytest.raises(ConfigError) as info:
        load(cfg)
    (err,) = [p for p in info.value.problems if p.severity == "error"]
    assert err.path == "routes[0].auth.access_token"
    assert "version 0" in err.message
    assert_no_secrets([str(info.value)], [bad, SDK_SECRET, SDK_KEY])
    out = subprocess.run(
        [sys.executable, "-m", "authproxy", "check", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "BWS_ACCESS_TOKEN": bad},
    )
    assert out.returncode == 2 and "version 0" in out.stderr
    assert_no_secrets([out.stdout, out.stderr], [bad, SDK_SECRET, SDK_KEY])


def test_regions_and_self_hosted_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BWS_ACCESS_TOKEN", SDK_TOKEN)

    def grant(auth: str) -> Bws:
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(f"routes:\n  - name: sm\n    match: vault.example\n    auth: {auth}\n")
        g = load(cfg).routes[0].auth
        assert isinstance(g, Bws)
        return g

    eu = grant('{type: bws, access_token: "${BWS_ACCESS_TOKEN}", region: eu}')
    assert (eu.identity_url, eu.api_url) == ("https://identity.bitwarden.eu", "https://api.bitwarden.eu")
    us = grant('{type: bws, access_token: "${BWS_ACCESS_TOKEN}"}')
    assert (us.identity_url, us.api_url) == ("https://identity.bitwarden.com", "https://api.bitwarden.com")
    own = grant(
        '{type: bws, access_token: "${BWS_ACCESS_TOKEN}", identity_url: "https://vault.corp/identity/", '
        'api_url: "https://vault.corp/api", refresh_skew: 30}'
    )
    assert (own.identity_url, own.api_url, own.refresh_skew()) == (
        "https://vault.corp/identity",
        "https://vault.corp/api",
        30.0,
    )


@pytest.mark.parametrize(
    ("auth", "path", "words"),
    [
        ("region: mars", "region", "must be one of us, eu"),
        ("region: us\n      identity_url: https://a.example", "identity_url", "not both"),
        ("identity_url: https://a.example", "identity_url", "needs `api_url`"),
        ("identity_url: http://a.example\n      api_url: https://a.example", "identity_url", "https://"),
        ("identity_url: ftp://a.example\n      api_url: https://a.example", "identity_url", "https://"),
    ],
)
def test_endpoint_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, auth: str, path: str, words: str) -> None:
    monkeypatch.setenv("BWS_ACCESS_TOKEN", SDK_TOKEN)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        "routes:\n  - name: sm\n    match: vault.example\n    auth:\n      type: bws\n"
        f"      access_token: ${{BWS_ACCESS_TOKEN}}\n      {auth}\n"
    )
    with pytest.raises(ConfigError) as info:
        load(cfg)
    errs = [p for p in info.value.problems if p.severity == "error"]
    assert [e.path for e in errs] == [f"routes[0].auth.{path}"], [str(e) for e in errs]
    assert words in errs[0].message


# ------------------------------------------------------------------ cipher strings


def test_type2_cipher_strings_decrypt_and_are_authenticated() -> None:
    key = bws.SymmetricKey.from_bytes(bytes(range(64)))
    text = "a secret value, long enough for two blocks ✓"
    enc = encrypt_type2(text.encode(), key.to_bytes())
    assert bws.decrypt_text(enc, key) == text

    iv, data, mac = enc[2:].split("|")
    flipped = base64.b64decode(data)
    flipped = bytes([flipped[0] ^ 1]) + flipped[1:]
    with pytest.raises(ValueError, match="MAC does not match"):
        bws.decrypt(f"2.{iv}|{base64.b64encode(flipped).decode()}|{mac}", key)
    other = bws.SymmetricKey.from_bytes(bytes(range(1, 65)))
    with pytest.raises(ValueError, match="MAC does not match"):
        bws.decrypt(enc, other)
    with pytest.raises(ValueError, match="type-2"):
        bws.decrypt(f"0.{iv}|{data}", key)
    with pytest.raises(ValueError, match="3 parts"):
        bws.decrypt(f"2.{iv}|{data}", key)
    with pytest.raises(ValueError, match="base64"):
        bws.decrypt(f"2.{iv}|{data}!|{mac}", key)


def test_organization_key_from_the_encrypted_payload() -> None:
    server = BwsServer()
    token = bws.parse_access_token(server.access_token)
    payload = json.dumps({"encryptionKey": base64.b64encode(server.org_key).decode()}).encode()
    org = bws.organization_key(encrypt_type2(payload, stretch(server.key)), token)
    assert org.to_bytes() == server.org_key
    wrong = bws.parse_access_token(f"0.{server.token_id}.{server.client_secret}:{SDK_KEY}")
    with pytest.raises(bws.BwsError, match="cannot be read with the access token's key") as info:
        bws.organization_key(encrypt_type2(payload, stretch(server.key)), wrong)
    assert_no_secrets([str(info.value)], server.secret_forms())


def test_interpolate_needs_a_bws_block() -> None:
    with pytest.raises(ValueError, match="top-level `bws:` block"):
        interpolate("${bws:ec2c1d46-6a4b-4751-a310-af9601317f2d}")


# ------------------------------------------------------------------ the grant, through the proxy


async def test_grant_end_to_end(
    tmp_path: Path, make_proxy, upstream: Upstream, bws_server: BwsServer, secret_env
) -> None:
    secret_env("BWS_ACCESS_TOKEN", bws_server.access_token)
    _guard(upstream, bws_server)
    p = await make_proxy(_grant_route(bws_server, upstream))
    async with httpx.AsyncClient(proxy=p.url) as client:
        for i in range(3):
            r = await client.get(f"{upstream.url}/secrets/{i}")
            assert r.status_code == 200, r.text
    assert bws_server.requests["token"] == 1
    form = bws_server.token_forms[0]
    assert form == {
        "grant_type": "client_credentials",
        "scope": "api.secrets",
        "client_id": bws_server.token_id,
        "client_secret": bws_server.client_secret,
    }
    assert bws_server.token_headers[0].get("Device-Type") == "21"
    jwt_token = bws_server.issued()[0]
    sent = dict((k.lower(), v) for k, v in upstream.seen[-1]["headers"])
    assert sent["authorization"] == f"Bearer {jwt_token}"
    lines = p.access_lines()
    assert "token=fetched" in lines[0] and "token=cached" in lines[-1]

    state = tmp_path / "state" / "tokens" / "sm.json"
    assert state.stat().st_mode & 0o777 == 0o600
    stored = json.loads(state.read_text())["data"]
    assert stored["access"] == f"Bearer {jwt_token}"
    assert stored["organization"] == bws_server.organization_id
    assert stored["encrypted_payload"].startswith("2.")
    assert stored["expires_at"] > 0
    # The store holds the JWT and the encrypted payload, never the access token or its key.
    assert_no_secrets([state.read_text()], [s for s in bws_server.secret_forms() if s != jwt_token])
    p.secrets.update(bws_server.secret_forms())


async def test_refresh_near_expiry(make_proxy, upstream: Upstream, bws_server: BwsServer, secret_env) -> None:
    bws_server.expires_in = 61  # within the default refresh_skew (60 s) after one second
    secret_env("BWS_ACCESS_TOKEN", bws_server.access_token)
    _guard(upstream, bws_server)
    p = await make_proxy(_grant_route(bws_server, upstream))
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/a")).status_code == 200
        await asyncio.sleep(1.5)
        assert (await client.get(f"{upstream.url}/b")).status_code == 200  # served, refresh in the background
        for _ in range(50):
            if len(bws_server.issued()) == 2:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # the proxy stores and caches what the server issued
        assert (await client.get(f"{upstream.url}/c")).status_code == 200
    assert bws_server.requests["token"] == 2
    auths = [dict((k.lower(), v) for k, v in s["headers"])["authorization"] for s in upstream.seen]
    first, second = bws_server.issued()
    assert auths == [f"Bearer {first}", f"Bearer {first}", f"Bearer {second}"]
    p.secrets.update(bws_server.secret_forms())


async def test_revoked_jwt_one_login_and_a_retry(
    make_proxy, upstream: Upstream, bws_server: BwsServer, secret_env
) -> None:
    secret_env("BWS_ACCESS_TOKEN", bws_server.access_token)
    _guard(upstream, bws_server)
    p = await make_proxy(_grant_route(bws_server, upstream))
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/a")).status_code == 200
        bws_server.revoke_all()
        r = await client.post(f"{upstream.url}/b", content=b"again")
        assert r.status_code == 200
    assert bws_server.requests["token"] == 2  # the stored (refused) JWT was not handed out again
    assert "token=retried" in p.access_lines()[-1]
    p.secrets.update(bws_server.secret_forms())


async def test_refused_access_token_is_a_502_without_secrets(
    make_proxy, upstream: Upstream, bws_server: BwsServer, secret_env
) -> None:
    wrong = f"0.{bws_server.token_id}.not-the-secret-9f8e7d:{bws_server.key_b64}"
    secret_env("BWS_ACCESS_TOKEN", wrong)
    p = await make_proxy(_grant_route(bws_server, upstream))
    p.secrets.update([wrong, "not-the-secret-9f8e7d", *bws_server.secret_forms()])
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    p.bodies.append(r.text)
    assert r.status_code == 502
    body = r.json()
    assert body["error"] == "token_endpoint_error" and body["route"] == "sm"
    assert "invalid_client" in body["detail"]
    assert upstream.seen == []


async def test_state_is_reused_after_a_restart(tmp_path: Path, upstream: Upstream, bws_server: BwsServer) -> None:
    _guard(upstream, bws_server)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\n" + textwrap.dedent(_grant_route(bws_server, upstream)))
    env = {"BWS_ACCESS_TOKEN": bws_server.access_token}
    logs: list[str] = []
    for _ in range(2):
        p = start_proxy(cfg, env=env)
        try:
            async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
                for _ in range(2):
                    r = await client.get(f"{upstream.url}/v1/things")
                    assert r.status_code == 200, r.text
        finally:
            assert p.stop() == 0
        logs.append(p.stderr_text())
    assert bws_server.requests["token"] == 1  # the second process used the stored JWT
    assert "token=fetched" in logs[1]  # fetched from the store, not from the identity server
    jwt_token = bws_server.issued()[0]
    seen = {dict((k.lower(), v) for k, v in s["headers"])["authorization"] for s in upstream.seen}
    assert seen == {f"Bearer {jwt_token}"}
    state = (tmp_path / "state" / "tokens" / "sm.json").read_text()
    assert_no_secrets([state], [s for s in bws_server.secret_forms() if s != jwt_token])
    assert_no_secrets(logs, bws_server.secret_forms())


async def test_a_new_access_token_does_not_reuse_the_old_state(
    tmp_path: Path, make_proxy, upstream: Upstream, bws_server: BwsServer, secret_env
) -> None:
    secret_env("BWS_ACCESS_TOKEN", bws_server.access_token)
    _guard(upstream, bws_server)
    p = await make_proxy(_grant_route(bws_server, upstream))
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{upstream.url}/a")).status_code == 200
    # The account gets a new access token (same server, new secret and key): the stored JWT is not its.
    old = bws_server.access_token
    bws_server.client_secret = "rotated-client-secret-77"
    bws_server.key = bytes(range(16))
    secret_env("BWS_ACCESS_TOKEN", bws_server.access_token)
    p2 = await make_proxy(_grant_route(bws_server, upstream))
    async with httpx.AsyncClient(proxy=p2.url) as client:
        assert (await client.get(f"{upstream.url}/b")).status_code == 200
    assert bws_server.requests["token"] == 2
    p.secrets.update([old, *bws_server.secret_forms()])


async def test_token_command_for_a_bws_route(tmp_path: Path, upstream: Upstream, bws_server: BwsServer) -> None:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\n" + textwrap.dedent(_grant_route(bws_server, upstream)))
    env = {"PATH": "/usr/bin:/bin", "BWS_ACCESS_TOKEN": bws_server.access_token}

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "authproxy", "token", "sm", "-c", str(cfg), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    masked = run()
    assert masked.returncode == 0, masked.stderr
    assert masked.stdout == "Authorization: Bearer ****\n"
    shown = run("--show")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"Authorization: Bearer {bws_server.issued()[0]}\n"
    assert bws_server.requests["token"] == 1  # the second run used the stored JWT
    check = subprocess.run(
        [sys.executable, "-m", "authproxy", "check", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert check.returncode == 0, check.stderr
    assert "access_token=${BWS_ACCESS_TOKEN}" in check.stdout
    assert_no_secrets(
        [masked.stdout, masked.stderr, shown.stderr, check.stdout, check.stderr], bws_server.secret_forms()
    )


# ------------------------------------------------------------------ ${bws:SECRET_ID} values


async def test_bws_reference_feeds_an_api_key(
    make_proxy, upstream: Upstream, bws_server: BwsServer, secret_env
) -> None:
    api_key = "sk-live-from-secrets-manager-4242"
    other = "second-secret-value-8080"
    sid = bws_server.add_secret(api_key, key="billing-api-key", note="rotated monthly")
    sid2 = bws_server.add_secret(other)
    secret_env("BWS_ACCESS_TOKEN", bws_server.access_token)
    p = await make_proxy(
        _bws_block(bws_server)
        + f"""
        routes:
          - name: billing
            match: {upstream.authority}/v1
            auth: {{type: api_key, header: X-API-Key, value: "${{bws:{sid}}}"}}
          - name: billing2
            match: {upstream.authority}/v2
            auth: {{type: api_key, header: X-API-Key, value: "${{bws:{sid.upper()}}}"}}
          - name: other
            match: {upstream.authority}/v3
            auth: {{type: basic, username: svc, password: "${{bws:{sid2}}}"}}
        """
    )
    p.secrets.update([api_key, other, *bws_server.secret_forms()])
    cfg = p.runtime.snapshot.config
    assert cfg.bws is not None
    assert (cfg.bws.identity_url, cfg.bws.api_url) == (bws_server.identity_url, bws_server.api_url)
    assert isinstance(cfg.bws.access_token, Secret)
    grant = cfg.routes[0].auth
    assert isinstance(grant.value, Secret) and grant.value.reveal() == api_key  # type: ignore[attr-defined]
    assert grant.sources() == [("value", f"${{bws:{sid}}}")]
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/v1/invoices")
        assert r.status_code == 200
        r2 = await client.get(f"{upstream.url}/v3/x")
        assert r2.status_code == 200
    sent = dict((k.lower(), v) for k, v in upstream.seen[0]["headers"])
    assert sent["x-api-key"] == api_key
    sent2 = dict((k.lower(), v) for k, v in upstream.seen[1]["headers"])
    assert sent2["authorization"] == "Basic " + base64.b64encode(f"svc:{other}".encode()).decode()
    # One login for the whole load, each secret fetched once (the same id twice, differently spelt).
    assert bws_server.requests["token"] == 1
    assert bws_server.requests[f"secret:{sid}"] == 1 and bws_server.requests[f"secret:{sid2}"] == 1
    assert bws_server.token_headers[0].get("Device-Type") == "21"


async def test_unfetchable_secret_is_a_502_naming_it(
    make_proxy, upstream: Upstream, bws_server: BwsServer, secret_env
) -> None:
    good = bws_server.add_secret("fine-value-31337")
    gone = str(uuid.uuid4())
    secret_env("BWS_ACCESS_TOKEN", bws_server.access_token)
    p = await make_proxy(
        _bws_block(bws_server)
        + f"""
        routes:
          - name: good
            match: {upstream.authority}/ok
            auth: {{type: api_key, header: X-API-Key, value: "${{bws:{good}}}"}}
          - name: gone
            match: {upstream.authority}/gone
            auth: {{type: api_key, header: X-API-Key, value: "${{bws:{gone}}}"}}
        """
    )
    p.secrets.update(["fine-value-31337", *bws_server.secret_forms()])
    cfg = p.runtime.snapshot.config
    assert cfg.routes[0].missing == ()
    assert len(cfg.routes[1].missing) == 1 and gone in cfg.routes[1].missing[0]
    assert any(gone in w.message and w.path == "routes[1].auth.value" for w in cfg.warnings)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/gone/x")
        ok = await client.get(f"{upstream.url}/ok/x")
    p.bodies.append(r.text)
    assert ok.status_code == 200
    assert r.status_code == 502
    body = r.json()
    assert body["error"] == "credential_unavailable" and body["route"] == "gone"
    assert gone in body["detail"] and "404" in body["detail"]
    assert [s["path"] for s in upstream.seen] == ["/ok/x"]


async def test_identity_failure_makes_every_reference_missing(
    make_proxy, upstream: Upstream, bws_server: BwsServer, secret_env
) -> None:
    sid = bws_server.add_secret("never-fetched-value-555")
    bws_server.fail_identity = 503
    secret_env("BWS_ACCESS_TOKEN", bws_server.access_token)
    p = await make_proxy(
        _bws_block(bws_server)
        + f"""
        routes:
          - name: a
            match: {upstream.authority}/a
            auth: {{type: api_key, header: X-API-Key, value: "${{bws:{sid}}}"}}
          - name: b
            match: {upstream.authority}/b
            auth: {{type: bearer, token: "${{bws:{sid}}}"}}
        """
    )
    p.secrets.update(["never-fetched-value-555", *bws_server.secret_forms()])
    assert bws_server.requests["token"] == 2  # one login (retried once after the 503) for the whole load
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/b/x")
    p.bodies.append(r.text)
    assert r.status_code == 502
    assert sid in r.json()["detail"] and "identity server" in r.json()["detail"]
    assert upstream.seen == []


def test_bws_block_without_its_token_makes_references_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BWS_ACCESS_TOKEN", raising=False)
    sid = str(uuid.uuid4())
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            bws: {{access_token: "${{BWS_ACCESS_TOKEN}}", region: eu}}
            routes:
              - name: a
                match: a.example
                auth: {{type: api_key, value: "${{bws:{sid}}}"}}
            """
        )
    )
    c = load(cfg)
    assert c.bws is not None and c.bws.identity_url == "https://identity.bitwarden.eu"
    (why,) = c.routes[0].missing
    assert sid in why and "BWS_ACCESS_TOKEN" in why


@pytest.mark.parametrize(
    ("top", "value", "words"),
    [
        ("", "${bws:ec2c1d46-6a4b-4751-a310-af9601317f2d}", "top-level `bws:` block"),
        ("bws: {access_token: x, region: us}\n", "${bws:0a1b2c}", "is a UUID"),
    ],
)
def test_bws_reference_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, top: str, value: str, words: str
) -> None:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(top + f'routes:\n  - name: a\n    match: a.example\n    auth: {{type: api_key, value: "{value}"}}\n')
    with pytest.raises(ConfigError) as info:
        load(cfg)
    errs = [p for p in info.value.problems if p.severity == "error" and p.path == "routes[0].auth.value"]
    assert len(errs) == 1 and words in errs[0].message, [str(p) for p in info.value.problems]
