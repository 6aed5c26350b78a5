"""proxy_auth (407 in every mode, users limited to routes) and per-route `allow` lists."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import bcrypt
import httpx
import pytest

from authproxy.config import load
from authproxy.schema.problems import ConfigError

from .conftest import Proxy, Upstream

ALICE_PW = "alice-proxy-pw-1"
BOB_PW = "bob-proxy-pw-2"
KEY = "access-key-7777"


def _hash(pw: str) -> str:
    return bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()


def _basic(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


async def _proxy(make_proxy, upstream: Upstream, tls_up: Upstream, ca: Path, secret_env) -> Proxy:
    secret_env("ACC_KEY", KEY)
    p = await make_proxy(
        f"""
        proxy_auth:
          realm: corp egress
          users:
            alice: "{_hash(ALICE_PW)}"
            bob: {{hash: "{_hash(BOB_PW)}", routes: [reports]}}
        routes:
          - name: main
            match: {upstream.authority}
            auth: {{type: api_key, header: X-Key, value: "${{ACC_KEY}}"}}
          - name: secure
            match: {tls_up.authority}
            ca_file: {ca}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: api_key, header: X-Key, value: "${{ACC_KEY}}"}}
          - name: reports
            gateway: /reports
            upstream: http://{upstream.authority}
            allow: [{{methods: [GET, HEAD], paths: [/v1/]}}]
            auth: {{type: api_key, header: X-Key, value: "${{ACC_KEY}}"}}
        """
    )
    p.secrets.update({KEY, ALICE_PW, BOB_PW})
    return p


async def test_407_in_plain_mode_then_ok(make_proxy, upstream, tls_upstream, secret_env) -> None:
    up2, ca = tls_upstream
    p = await _proxy(make_proxy, upstream, up2, ca, secret_env)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
        assert r.status_code == 407
        assert r.headers["proxy-authenticate"] == 'Basic realm="corp egress", charset="UTF-8"'
        assert r.json()["error"] == "proxy_auth_required"
        r = await client.get(f"{upstream.url}/x", headers={"Proxy-Authorization": _basic("alice", "wrong")})
        assert r.status_code == 407 and "wrong" in r.json()["detail"]
        r = await client.get(f"{upstream.url}/x", headers={"Proxy-Authorization": _basic("mallory", ALICE_PW)})
        assert r.status_code == 407
    proxy = f"http://alice:{ALICE_PW}@127.0.0.1:{p.port}"
    async with httpx.AsyncClient(proxy=proxy) as client:
        r = await client.get(f"{upstream.url}/x")
    assert r.status_code == 200
    names = [k.lower() for k, _ in r.json()["headers"]]
    assert "proxy-authorization" not in names  # never forwarded
    assert upstream.seen[-1]["path"] == "/x" and len(upstream.seen) == 1


async def test_407_for_connect_then_intercepted(make_proxy, upstream, tls_upstream, secret_env) -> None:
    up2, ca = tls_upstream
    p = await _proxy(make_proxy, upstream, up2, ca, secret_env)
    assert p.runtime.ca is not None
    verify = ssl.create_default_context(cafile=str(p.runtime.ca.files.cert))
    async with httpx.AsyncClient(proxy=p.url, verify=verify) as client:
        with pytest.raises(httpx.ProxyError, match="407"):
            await client.get(f"{up2.url}/x")
    proxy = f"http://alice:{ALICE_PW}@127.0.0.1:{p.port}"
    async with httpx.AsyncClient(proxy=proxy, verify=verify) as client:
        r = await client.get(f"{up2.url}/x")
    assert r.status_code == 200
    assert [v for k, v in r.json()["headers"] if k == "X-Key"] == [KEY]


async def test_407_in_gateway_mode_and_user_limited_to_routes(make_proxy, upstream, tls_upstream, secret_env) -> None:
    up2, ca = tls_upstream
    p = await _proxy(make_proxy, upstream, up2, ca, secret_env)
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{p.url}/reports/v1/daily")
        assert r.status_code == 407
        r = await client.get(f"{p.url}/reports/v1/daily", headers={"Proxy-Authorization": _basic("bob", BOB_PW)})
        assert r.status_code == 200
    # bob may use only `reports`: the `main` route is closed to him.
    async with httpx.AsyncClient(proxy=f"http://bob:{BOB_PW}@127.0.0.1:{p.port}") as client:
        r = await client.get(f"{upstream.url}/x")
    assert r.status_code == 403
    assert r.json() == {"error": "denied", "route": "main", "detail": "proxy user bob may not use route main."}


async def test_allow_list_makes_a_route_read_only(make_proxy, upstream, tls_upstream, secret_env) -> None:
    up2, ca = tls_upstream
    p = await _proxy(make_proxy, upstream, up2, ca, secret_env)
    auth = {"Proxy-Authorization": _basic("alice", ALICE_PW)}
    async with httpx.AsyncClient(headers=auth) as client:
        assert (await client.get(f"{p.url}/reports/v1/a")).status_code == 200
        assert (await client.head(f"{p.url}/reports/v1/a")).status_code == 200
        r = await client.post(f"{p.url}/reports/v1/a", content=b"x")
        assert r.status_code == 403 and r.json()["error"] == "denied"
        assert "allow list" in r.json()["detail"]
        assert (await client.get(f"{p.url}/reports/v2/a")).status_code == 403
        assert (await client.get(f"{p.url}/reports/v1/../v2/a")).status_code == 403
        assert (await client.get(f"{p.url}/reports/v1%2F..%2Fv2/a")).status_code in (400, 403)
    assert all(s["method"] in ("GET", "HEAD") and s["path"].startswith("/v1/") for s in upstream.seen)


def _cfg(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_config_errors_for_access(tmp_path: Path) -> None:
    path = _cfg(
        tmp_path,
        """\
        admin: nonsense
        proxy_auth:
          users:
            alice: plaintext-password
            bob: {hash: "BOBHASH", routes: [nope]}
        routes:
          - name: a
            match: a.example
            allow: [{methods: ["GET POST"]}, {}]
            auth: {type: api_key, value: "k-literal"}
        """.replace("BOBHASH", _hash("x")),
    )
    with pytest.raises(ConfigError) as exc:
        load(path)
    errs = {(p.path, p.line): p.message for p in exc.value.problems if p.severity == "error"}
    assert errs[("admin", 1)] == "`nonsense` needs a port (HOST:PORT)"
    assert "bcrypt hash" in errs[("proxy_auth.users.alice", 4)]
    assert errs[("proxy_auth", 3)] == "user bob names route `nope`, which does not exist"
    assert errs[("routes[0].allow[0].methods", 9)] == "`GET POST` is not an HTTP method"
    assert errs[("routes[0].allow[1]", 9)] == "an allow rule needs `methods`, `paths`, or both"
    for p in exc.value.problems:
        assert "plaintext-password" not in str(p)


def test_hash_password_command_and_open_listen(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "authproxy", "hash-password"],
        input="pw-to-hash\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0
    hashed = r.stdout.strip()
    assert bcrypt.checkpw(b"pw-to-hash", hashed.encode()) and "pw-to-hash" not in r.stdout + r.stderr
    # With proxy_auth, a non-loopback address is accepted (it starts; we stop it at once).
    path = _cfg(
        tmp_path,
        f"""\
        state_dir: {tmp_path / "st"}
        proxy_auth: {{users: {{ops: "{hashed}"}}}}
        routes: []
        """,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "authproxy", "run", "-c", str(path), "--listen", "0.0.0.0:0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on 0.0.0.0:" in line, line
    proc.terminate()
    assert proc.wait(20) == 0
    # Without it, --allow-open is needed, and it warns.
    path.write_text(f"state_dir: {tmp_path / 'st'}\nroutes: []\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "authproxy", "run", "-c", str(path), "--listen", "0.0.0.0:0", "--allow-open"],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert first.startswith("warning: listening on 0.0.0.0 with no proxy authentication"), first
    while "listening on 0.0.0.0:" not in (line := proc.stderr.readline()):
        assert line, "the proxy stopped before listening"
    proc.terminate()
    assert proc.wait(20) == 0


async def test_bcrypt_is_checked_once_per_header(make_proxy, upstream, tls_upstream, secret_env) -> None:
    up2, ca = tls_upstream
    p = await _proxy(make_proxy, upstream, up2, ca, secret_env)
    proxy = f"http://alice:{ALICE_PW}@127.0.0.1:{p.port}"
    async with httpx.AsyncClient(proxy=proxy) as client:
        rs = await asyncio.gather(*(client.get(f"{upstream.url}/c{i}") for i in range(20)))
    assert {r.status_code for r in rs} == {200}


@pytest.mark.parametrize("password", ["x" * 73, "é" * 37, "p" * 1000])
def test_hash_password_refuses_what_bcrypt_cannot_check_whole(password: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "authproxy", "hash-password"],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "72 bytes" in r.stderr, r.stderr
    assert password not in r.stderr


def test_hash_password_takes_72_bytes() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "authproxy", "hash-password"],
        input="y" * 72 + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert bcrypt.checkpw(b"y" * 72, r.stdout.strip().encode())


def _rules(tmp_path: Path, allow: str) -> tuple:
    cfg = _cfg(
        tmp_path,
        f"""\
        routes:
          - name: r
            match: api.example
            auth: {{type: api_key, value: "k-123456"}}
            allow: {allow}
        """,
    )
    rules = load(cfg).routes[0].allow
    assert rules is not None
    return rules


def test_each_override_must_be_allowed_on_the_path(tmp_path: Path) -> None:
    from authproxy.access import check_allowed
    from authproxy.errors import BadRequest, Denied

    rules = _rules(tmp_path, "[{methods: [POST], paths: [/v1/]}, {methods: [GET, DELETE], paths: [/v2/]}]")
    # DELETE is allowed, but not under /v1/: the override is judged on the request's path.
    with pytest.raises(Denied) as info:
        check_allowed(rules, "r", "POST", "/v1/x", [(b"X-HTTP-Method-Override", b"DELETE")])
    assert "X-HTTP-Method-Override" in info.value.detail and "DELETE" in info.value.detail
    check_allowed(rules, "r", "POST", "/v1/x", [(b"X-HTTP-Method-Override", b"post")])
    check_allowed(rules, "r", "GET", "/v2/x", [(b"x-method-override", b"DELETE"), (b"X-HTTP-Method", b"GET")])
    with pytest.raises(Denied):
        check_allowed(rules, "r", "GET", "/v2/x", [(b"X-HTTP-Method", b"GET"), (b"X-HTTP-Method", b"PUT")])
    # Paths no rule can judge are the client's error, as they are for prefixes.
    with pytest.raises(BadRequest):
        check_allowed(rules, "r", "GET", "/v2/%2e%2e/v1/x", [])
    with pytest.raises(BadRequest):
        check_allowed(rules, "r", "GET", "/v2/..;/v1/x", [])


def test_no_allow_list_judges_nothing(tmp_path: Path) -> None:
    from authproxy.access import check_allowed

    check_allowed(None, "r", "GET", "/v1/..;/admin", [(b"X-HTTP-Method-Override", b"DELETE")])
