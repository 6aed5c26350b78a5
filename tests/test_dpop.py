"""DPoP-bound tokens (RFC 9449) against node oidc-provider and a resource server that checks every proof.

The authorization server is oidc-provider (a certified OpenID implementation)
with DPoP, a nonce secret and resource indicators, so its access tokens are
JWTs carrying ``cnf.jkt``; the resource server (``tests/support/dpop_resource``)
verifies proofs per RFC 9449 §7.1 with joserfc, never with the proxy's code.
Token requests are counted at the authorization server.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import trustme
from joserfc.jwk import ECKey, OKPKey

from authproxy.config import load
from authproxy.schema.problems import ConfigError
from tests.support.dpop_resource import DPoPResource

from .conftest import Proxy, assert_no_secrets

NODE_DIR = Path(__file__).parent / "node"
SECRET = "dpop-client-s3cret-4Kq9"
RESOURCE = "https://api.example.test/"

# Outside CI a checkout without `npm ci --prefix tests/node` skips, saying so; CI (.ci/run
# installs oidc-provider) never skips: there a missing server fails the module instead.
pytestmark = pytest.mark.skipif(
    not os.environ.get("CI")
    and (shutil.which("node") is None or not (NODE_DIR / "node_modules" / "oidc-provider").is_dir()),
    reason="node and oidc-provider (npm ci --prefix tests/node) are needed",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AuthServer:
    """The oidc-provider process: its URLs, and its counters and switches."""

    issuer: str
    token_url: str
    jwks_uri: str

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.issuer}/_stats", timeout=10) as r:
            data: dict[str, int] = json.loads(r.read())
            return data

    def set(self, **flags: int) -> None:
        query = "&".join(f"{k}={v}" for k, v in flags.items())
        req = urllib.request.Request(f"{self.issuer}/_config?{query}", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    port = _free_port()
    proc = subprocess.Popen(
        ["node", "dpop_provider.mjs", str(port), RESOURCE, SECRET],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once listening; EOF if it died
        assert line, "oidc-provider did not start"
        info = json.loads(line)
        yield AuthServer(info["issuer"], info["token_url"], info["jwks_uri"])
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def fresh_as(auth_server: AuthServer) -> Iterator[AuthServer]:
    """The module's server with its switches reset before and after the test."""
    auth_server.set(nonce=0, dpop=1)
    yield auth_server
    auth_server.set(nonce=0, dpop=1)


@pytest.fixture
async def resource(auth_server: AuthServer) -> AsyncIterator[DPoPResource]:
    rs = DPoPResource(RESOURCE, auth_server.jwks_uri)
    runner = await rs.start()
    yield rs
    await runner.cleanup()


@pytest.fixture
async def tls_resource(auth_server: AuthServer, tmp_path: Path) -> AsyncIterator[tuple[DPoPResource, Path]]:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca_path = tmp_path / "rs-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    rs = DPoPResource(RESOURCE, auth_server.jwks_uri)
    runner = await rs.start(ctx)
    yield rs, ca_path
    await runner.cleanup()


def _auth(a: AuthServer, dpop: str = "true") -> str:
    return (
        f"{{type: client_credentials, token_url: {a.token_url}, client_id: proxy,"
        f' client_secret: "${{DPOP_SECRET}}", dpop: {dpop}}}'
    )


def _one(rs: DPoPResource, a: AuthServer) -> str:
    return f"  - name: api\n    match: {rs.authority}\n    auth: {_auth(a)}"


async def _proxy(make_proxy: Any, secret_env: Any, routes: str) -> Proxy:
    secret_env("DPOP_SECRET", SECRET)
    p: Proxy = await make_proxy(f"routes:\n{routes}")
    p.secrets.add(SECRET)
    return p


def _protect(p: Proxy, *resources: DPoPResource) -> None:
    """Every token any resource server saw, and every DPoP key in the state dir, must never be logged."""
    for rs in resources:
        for seen in rs.seen:
            if seen["authorization"]:
                p.secrets.add(seen["authorization"].partition(" ")[2])
    folder = p.runtime.snapshot.config.state_dir / "dpop"
    for pem in folder.glob("*.pem") if folder.is_dir() else ():
        text = pem.read_text()
        p.secrets.add(text)
        p.secrets.add(str(ECKey.import_key(text).as_dict(private=True)["d"]))


def _client_ctx(p: Proxy) -> ssl.SSLContext:
    assert p.runtime.ca is not None
    return ssl.create_default_context(cafile=str(p.runtime.ca.files.cert))


CALLS = [("GET", "/items?page=2", None), ("POST", "/items", b'{"n": 1}'), ("PUT", "/items/7?x=%2F", b"v"),
         ("DELETE", "/items/7", None), ("PATCH", "/a%20b/c", b"p")]  # fmt: skip


async def test_every_mode_sends_a_valid_proof_for_its_own_request(
    make_proxy, secret_env, fresh_as, resource, tls_resource
) -> None:
    tls_rs, ca_path = tls_resource
    p = await _proxy(
        make_proxy,
        secret_env,
        f"""
  - name: plain
    match: {resource.authority}
    auth: {_auth(fresh_as)}
  - name: gw
    gateway: /gw
    upstream: {resource.url}/base
    auth: {_auth(fresh_as)}
  - name: secure
    match: {tls_rs.authority}
    ca_file: {ca_path}
    auth: {_auth(fresh_as)}
""",
    )
    before = fresh_as.stats()["token_requests"]
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        for method, path, body in CALLS:
            r = await client.request(method, f"{resource.url}{path}", content=body)
            assert r.status_code == 200, r.text
            r = await client.request(method, f"{tls_rs.url}{path}", content=body)
            assert r.status_code == 200, r.text
    async with httpx.AsyncClient() as client:
        for method, path, body in CALLS:
            r = await client.request(method, f"{p.url}/gw{path}", content=body)
            assert r.status_code == 200, r.text
    # One token per route, each bound to its own key; every request verified by the resource servers.
    assert fresh_as.stats()["token_requests"] - before == 3
    assert all(s["ok"] for s in resource.seen + tls_rs.seen)
    assert len(resource.seen) == 2 * len(CALLS) and len(tls_rs.seen) == len(CALLS)
    plain, gw = resource.seen[: len(CALLS)], resource.seen[len(CALLS) :]
    for (method, path, _), s in zip(CALLS, plain, strict=True):
        assert (s["claims"]["htm"], s["claims"]["htu"]) == (method, resource.url + path.partition("?")[0])
    for (method, path, _), s in zip(CALLS, gw, strict=True):
        assert (s["claims"]["htm"], s["claims"]["htu"]) == (method, resource.url + "/base" + path.partition("?")[0])
    for (method, path, _), s in zip(CALLS, tls_rs.seen, strict=True):
        assert (s["claims"]["htm"], s["claims"]["htu"]) == (method, tls_rs.url + path.partition("?")[0])
    assert len({s["claims"]["jti"] for s in resource.seen + tls_rs.seen}) == 3 * len(CALLS)
    jkts = {s["authorization"] for s in plain} | {s["authorization"] for s in gw}
    assert len(jkts) == 2  # two routes, two tokens
    assert all(s["authorization"].startswith("DPoP ") for s in resource.seen + tls_rs.seen)
    _protect(p, resource, tls_rs)


async def test_a_replayed_proof_is_refused_and_a_client_proof_is_replaced(
    make_proxy, secret_env, fresh_as, resource
) -> None:
    p = await _proxy(make_proxy, secret_env, _one(resource, fresh_as))
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{resource.url}/once")).status_code == 200
        captured = resource.seen[-1]
        # The same request, its proof replayed straight at the resource server: refused.
        async with aiohttp.ClientSession() as s:
            headers = {"Authorization": captured["authorization"], "DPoP": captured["proof"]}
            async with s.get(f"{resource.url}/once", headers=headers) as r:
                assert r.status == 401
                assert 'error="invalid_dpop_proof"' in r.headers["WWW-Authenticate"]
        assert resource.seen[-1]["claims"].get("replay") is True
        # A client's own DPoP header never reaches the upstream beside ours.
        r = await client.get(f"{resource.url}/once", headers={"DPoP": captured["proof"]})
        assert r.status_code == 200
        assert resource.seen[-1]["proof"] != captured["proof"]
    _protect(p, resource)


async def test_a_resource_nonce_challenge_is_answered_once_without_a_refresh(
    make_proxy, secret_env, fresh_as, resource
) -> None:
    resource.require_nonce = True
    resource.new_nonce()
    p = await _proxy(make_proxy, secret_env, _one(resource, fresh_as))
    before = fresh_as.stats()["token_requests"]
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.post(f"{resource.url}/n1", content=b"body-kept")
        assert r.status_code == 200 and r.json()["body_size"] == 9
        assert [s["error"] for s in resource.seen] == ["use_dpop_nonce", ""]
        assert resource.seen[1]["claims"]["nonce"] == resource.nonce
        assert "retry=nonce" in p.access_lines()[-1]
        # The nonce is remembered: the next request carries it at once.
        assert (await client.get(f"{resource.url}/n2")).status_code == 200
        assert len(resource.seen) == 3
        # A new nonce: one more challenge, one more retry.
        resource.new_nonce()
        assert (await client.get(f"{resource.url}/n3")).status_code == 200
        assert [s["error"] for s in resource.seen[3:]] == ["use_dpop_nonce", ""]
        assert fresh_as.stats()["token_requests"] - before == 1  # no refresh for a nonce

        # A nonce challenge does not spend the 401 rule: with the token revoked as
        # well, the nonce retry is followed by the one forced refresh and its retry.
        resource.new_nonce()
        resource.revoked.add(resource.seen[-1]["authorization"].partition(" ")[2])
        r = await client.put(f"{resource.url}/n4", content=b"again")
        assert r.status_code == 200
        assert [s["error"] for s in resource.seen[5:]] == ["use_dpop_nonce", "invalid_token", ""]
        assert fresh_as.stats()["token_requests"] - before == 2
    assert "token=retried" in p.access_lines()[-1]
    _protect(p, resource)


async def test_the_token_endpoint_nonce_challenge_is_answered(make_proxy, secret_env, fresh_as, resource) -> None:
    fresh_as.set(nonce=1)
    p = await _proxy(make_proxy, secret_env, _one(resource, fresh_as))
    before = fresh_as.stats()
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{resource.url}/x")).status_code == 200
    after = fresh_as.stats()
    assert after["nonce_challenges"] - before["nonce_challenges"] == 1
    assert after["token_requests"] - before["token_requests"] == 2
    assert resource.seen[-1]["ok"]
    # Nonces are per server: the authorization server's never goes to the resource server.
    assert "nonce" not in resource.seen[-1]["claims"]
    _protect(p, resource)


async def test_a_bearer_answer_is_refused(make_proxy, secret_env, fresh_as, resource) -> None:
    fresh_as.set(dpop=0)  # the server ignores the proof and hands out a Bearer token
    p = await _proxy(make_proxy, secret_env, _one(resource, fresh_as))
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{resource.url}/x")
    assert r.status_code == 502
    assert r.json()["error"] == "token_endpoint_error"
    assert "token_type Bearer, not DPoP" in r.json()["detail"]
    assert resource.seen == []
    p.bodies.append(r.text)
    _protect(p, resource)


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")  # joserfc, verifying at the resource server
async def test_a_key_file_signs_by_its_type(make_proxy, secret_env, fresh_as, resource, tmp_path: Path) -> None:
    key = OKPKey.generate_key("Ed25519")
    path = tmp_path / "dpop-ed25519.pem"
    path.write_bytes(key.as_pem(private=True))
    path.chmod(0o600)
    p = await _proxy(
        make_proxy,
        secret_env,
        f"  - name: api\n    match: {resource.authority}\n    auth: {_auth(fresh_as, '{key: ' + str(path) + '}')}",
    )
    p.secrets.update({path.read_text(), str(key.as_dict(private=True)["d"])})
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{resource.url}/ed")).status_code == 200
    proof = resource.seen[-1]["proof"]
    header = json.loads(_unb64(proof.split(".")[0]))
    assert header["alg"] == "EdDSA" and header["jwk"]["x"] == key.as_dict()["x"]
    assert not (p.runtime.snapshot.config.state_dir / "dpop").exists()  # no key made
    _protect(p, resource)


async def test_the_made_key_is_private_and_kept(make_proxy, secret_env, fresh_as, resource) -> None:
    route = _one(resource, fresh_as)
    p = await _proxy(make_proxy, secret_env, route)
    async with httpx.AsyncClient(proxy=p.url) as client:
        assert (await client.get(f"{resource.url}/k1")).status_code == 200
    pem = p.runtime.snapshot.config.state_dir / "dpop" / "api.pem"
    assert pem.stat().st_mode & 0o777 == 0o600
    first = json.loads(_unb64(resource.seen[-1]["proof"].split(".")[0]))["jwk"]
    p2 = await _proxy(make_proxy, secret_env, route)  # same state dir: a restart
    async with httpx.AsyncClient(proxy=p2.url) as client:
        assert (await client.get(f"{resource.url}/k2")).status_code == 200
    assert json.loads(_unb64(resource.seen[-1]["proof"].split(".")[0]))["jwk"] == first
    _protect(p, resource)
    _protect(p2, resource)


def _unb64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _errors(tmp_path: Path, auth_extra: str) -> list[str]:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "routes:\n  - name: api\n    match: api.example.com\n    auth:\n      type: client_credentials\n"
        "      token_url: https://idp.example.com/token\n      client_id: a\n"
        f'      client_secret: "${{DPOP_CFG_SECRET}}"\n{auth_extra}'
    )
    try:
        load(path)
    except ConfigError as exc:
        return [f"{p.path}:{p.line}: {p.message}" for p in exc.problems if p.severity == "error"]
    return []


def test_dpop_settings_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPOP_CFG_SECRET", "cfg-secret-value-123")
    rsa_pub = tmp_path / "pub.pem"
    from joserfc.jwk import RSAKey

    rsa = RSAKey.generate_key(2048)
    rsa_pub.write_bytes(rsa.as_pem(private=False))
    rsa_priv = tmp_path / "rsa.pem"
    rsa_priv.write_bytes(rsa.as_pem(private=True))
    rsa_priv.chmod(0o600)
    assert _errors(tmp_path, "      dpop: true\n") == []
    assert _errors(tmp_path, f"      dpop: {{key: {rsa_priv}, alg: PS256}}\n") == []
    assert _errors(tmp_path, "      dpop: maybe\n") == ["routes[0].auth.dpop:9: must be true or false, not `maybe`"]
    missing = _errors(tmp_path, f"      dpop: {{key: {tmp_path / 'nope.pem'}}}\n")
    assert missing == ["routes[0].auth.dpop.key:9: cannot be read (No such file or directory)"]
    pub = _errors(tmp_path, f"      dpop: {{key: {rsa_pub}}}\n")
    assert pub == ["routes[0].auth.dpop.key:9: pub.pem is not a PEM private key"]
    wrong = _errors(tmp_path, f"      dpop: {{key: {rsa_priv}, alg: ES256}}\n")
    assert wrong == ["routes[0].auth.dpop.key:9: rsa.pem cannot sign ES256 (its key type signs RS256, RS384, "
                     "RS512, PS256, PS384, PS512)"]  # fmt: skip
    made = _errors(tmp_path, "      dpop: {alg: EdDSA}\n")
    assert made == [
        "routes[0].auth.dpop.alg:9: a key the proxy makes is ES256; give `key: PATH` to sign with another algorithm"
    ]
    assert _errors(tmp_path, "      dpop: {keyfile: x}\n") == ["routes[0].auth.dpop.keyfile:9: unknown key `keyfile`"]


def test_a_route_without_dpop_loads_no_jose_library(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        "routes:\n  - name: a\n    match: a.example.com\n    auth: {type: bearer, token: abcdefghijklmnop}\n"
    )
    code = f"import sys; from authproxy.config import load; load({str(path)!r}); print('joserfc' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent
    )
    assert out.stdout.strip() == "False", out.stderr


async def test_workers_share_one_token_and_one_key(tmp_path: Path, fresh_as, resource) -> None:
    """`run --workers 2` on one state dir: one token fetch, one key; the worker that takes the
    token from the store signs valid proofs with the key the other one made."""
    from tests.support.proc import start_proxy

    from .test_workers import _burst, _children, _total, _worker_values

    routes = tmp_path / "routes.yaml"
    routes.write_text(f"state_dir: {tmp_path / 'state'}\nroutes:\n{_one(resource, fresh_as)}\n")
    before = fresh_as.stats()["token_requests"]
    p = start_proxy(routes, "--workers", "2", env={"DPOP_SECRET": SECRET})
    try:
        rs = await _burst(p, f"{resource.url}/w")
        assert [r.status_code for r in rs] == [200] * len(rs)
        workers = _children(p.proc.pid)
        per = {w: _worker_values(tmp_path / "state", w, "authproxy_token_fetches_total") for w in workers}
        served = {w: _total(_worker_values(tmp_path / "state", w, "authproxy_requests_total")) for w in workers}
        assert len(served) == 2 and all(n > 0 for n in served.values()), served
        assert sum(_total(v, route="api", outcome="ok") for v in per.values()) == 1
        assert sum(_total(v, route="api", outcome="stored") for v in per.values()) == 1
    finally:
        assert p.stop() == 0, p.stderr_text()
    assert fresh_as.stats()["token_requests"] - before == 1
    assert all(s["ok"] for s in resource.seen) and len(resource.seen) == len(rs)
    assert len({json.dumps(json.loads(_unb64(s["proof"].split(".")[0]))["jwk"]) for s in resource.seen}) == 1
    pem = (tmp_path / "state" / "dpop" / "api.pem").read_text()
    secrets = [SECRET, pem, str(ECKey.import_key(pem).as_dict(private=True)["d"])]
    secrets += [s["authorization"].partition(" ")[2] for s in resource.seen]
    assert_no_secrets(p.err_lines, secrets)


async def test_a_body_too_large_to_replay_gets_the_challenge_and_the_next_request_the_nonce(
    make_proxy, secret_env, fresh_as, resource
) -> None:
    resource.require_nonce = True
    resource.new_nonce()
    secret_env("DPOP_SECRET", SECRET)
    p = await make_proxy(f"limits: {{replay_body: 1KiB}}\nroutes:\n{_one(resource, fresh_as)}")
    p.secrets.add(SECRET)
    before = fresh_as.stats()["token_requests"]
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.post(f"{resource.url}/big", content=b"b" * 65536)
        assert r.status_code == 401 and r.headers["DPoP-Nonce"] == resource.nonce
        assert 'error="use_dpop_nonce"' in r.headers["WWW-Authenticate"]
        assert (await client.post(f"{resource.url}/big", content=b"b" * 65536)).status_code == 200
    assert [s["error"] for s in resource.seen] == ["use_dpop_nonce", ""]
    assert "retry=skipped" in p.access_lines()[0] and "retry" not in p.access_lines()[1]
    assert fresh_as.stats()["token_requests"] - before == 1  # the token was not dropped for a challenge
    _protect(p, resource)


def test_the_token_command_fetches_a_dpop_token(tmp_path: Path, fresh_as, auth_server) -> None:
    routes = tmp_path / "routes.yaml"
    rs = DPoPResource(RESOURCE, auth_server.jwks_uri, url="https://api.example.test")
    routes.write_text(f"state_dir: {tmp_path / 'state'}\nroutes:\n{_one(rs, fresh_as)}\n")
    before = fresh_as.stats()["token_requests"]
    out = subprocess.run(
        [sys.executable, "-m", "authproxy", "token", "api", "-c", str(routes)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DPOP_SECRET": SECRET},
        cwd=Path(__file__).parent.parent,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Authorization: DPoP ****"
    assert fresh_as.stats()["token_requests"] - before == 1
    pem = (tmp_path / "state" / "dpop" / "api.pem").read_text()
    assert_no_secrets([out.stdout, out.stderr], [SECRET, pem])
