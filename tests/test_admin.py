"""The admin listener after real traffic: health, readiness, /metrics parsed with
prometheus_client's parser, /status.json, `authproxy status`'s table, and the
status page rendered by a real headless Chromium (screenshot kept under
tests/artifacts/), with no secret anywhere."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import html
import ipaddress
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authproxy.admin.page import render_page
from authproxy.admin.statusclient import fetch_status, status_table
from authproxy.admin.web import AdminServer, start_admin
from authproxy.config import load
from authproxy.run.reload import Reloader
from authproxy.schema.problems import ConfigError
from tests.support.proc import ProxyProcess, start_proxy

from .conftest import Proxy, Upstream, assert_no_secrets

ARTIFACTS = Path(__file__).parent / "artifacts"
KEY = "ak-admin-9d1f2e7b-never-shown"
PASSWORD = "gw-pa55-admin-4c8a-never-shown"
ROUTES = ("keyed-api", "no-key", "basic-gw")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


async def _busy_proxy(make_proxy: Callable[[str], Any], upstream: Upstream, secret_env: Any) -> Proxy:
    secret_env("ADMIN_TEST_KEY", KEY)
    secret_env("ADMIN_TEST_PW", PASSWORD)
    p: Proxy = await make_proxy(
        f"""
        routes:
          - name: keyed-api
            match: {upstream.authority}
            upstream: {upstream.url}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: api_key, header: X-API-Key, value: ${{ADMIN_TEST_KEY}}}}
          - name: no-key
            gateway: /nokey
            upstream: {upstream.url}
            auth: {{type: api_key, header: X-API-Key, value: ${{ADMIN_UNSET_KEY_7F3A}}}}
          - name: basic-gw
            gateway: /gw
            upstream: {upstream.url}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: basic, username: ci, password: ${{ADMIN_TEST_PW}}}}
        """
    )
    p.secrets.update({KEY, PASSWORD})
    return p


async def _traffic(p: Proxy, upstream: Upstream) -> None:
    async with httpx.AsyncClient(proxy=p.url) as client:
        for i in range(5):
            r = await client.get(f"{upstream.url}/things/{i}")
            assert r.status_code == 200
            assert ["X-API-Key", KEY] in r.json()["headers"]  # the credential was injected
        r = await client.get(f"{upstream.url}/status/503")
        assert r.status_code == 503
    async with httpx.AsyncClient() as direct:
        for _ in range(2):
            r = await direct.get(f"{p.url}/nokey/x")
            assert r.status_code == 502
            p.bodies.append(r.text)
            assert "ADMIN_UNSET_KEY_7F3A" in r.text


@pytest.fixture
async def admin_for() -> AsyncIterator[Callable[[Proxy], Any]]:
    started: list[AdminServer] = []

    async def start(p: Proxy) -> AdminServer:
        admin = await start_admin(p.runtime, "127.0.0.1", 0)
        started.append(admin)
        return admin

    yield start
    for admin in started:
        await admin.close()


async def test_health_ready_metrics_and_status(make_proxy, upstream: Upstream, secret_env, admin_for) -> None:
    p = await _busy_proxy(make_proxy, upstream, secret_env)
    admin = await admin_for(p)
    base = f"http://127.0.0.1:{admin.port}"
    async with httpx.AsyncClient(base_url=base) as client:
        r = await client.get("/healthz")
        assert (r.status_code, r.text.strip()) == (200, "ok")
        assert (await client.get("/readyz")).status_code == 503
        p.runtime.ready = True
        assert (await client.get("/readyz")).status_code == 200

        await _traffic(p, upstream)
        # A keep-alive client connection held open while /metrics is scraped.
        async with httpx.AsyncClient(proxy=p.url) as held:
            assert (await held.get(f"{upstream.url}/held")).status_code == 200
            r = await client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        metrics_text = r.text
        families = {f.name: f for f in text_string_to_metric_families(metrics_text)}

        def value(family: str, sample: str, **labels: str) -> float:
            return sum(
                s.value
                for s in families[family].samples
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
            )

        assert families["authproxy_requests"].type == "counter"
        assert value("authproxy_requests", "authproxy_requests_total", route="keyed-api", status="200") == 6
        assert value("authproxy_requests", "authproxy_requests_total", route="keyed-api", status="503") == 1
        assert value("authproxy_requests", "authproxy_requests_total", route="no-key", status="502") == 2
        assert value("authproxy_errors", "authproxy_errors_total", route="no-key", code="credential_unavailable") == 2
        hist = families["authproxy_request_duration_seconds"]
        assert hist.type == "histogram"
        assert value(hist.name, hist.name + "_count", route="keyed-api") == 7
        inf = [s for s in hist.samples if s.name.endswith("_bucket") and s.labels.get("le") == "+Inf"]
        assert sum(s.value for s in inf if s.labels["route"] == "keyed-api") == 7
        assert value(hist.name, hist.name + "_sum", route="keyed-api") > 0
        assert families["authproxy_active_connections"].type == "gauge"
        assert value("authproxy_active_connections", "authproxy_active_connections") >= 1
        assert value("authproxy_token_fetches", "authproxy_token_fetches_total", route="keyed-api", outcome="ok") == 1
        assert value("authproxy_routes", "authproxy_routes") == 3
        # Label values are the config's and the proxy's, never the request's.
        for fam in families.values():
            for s in fam.samples:
                assert "/things" not in " ".join(s.labels.values())

        r = await client.get("/status.json")
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        status_text = r.text
        data = r.json()
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert '<meta http-equiv="refresh" content="5">' in page.text

    assert data["ready"] is True
    assert data["listen"] == f"127.0.0.1:{p.port}"
    routes = {r["name"]: r for r in data["routes"]}
    assert list(routes) == list(ROUTES)
    keyed, nokey, basic = routes["keyed-api"], routes["no-key"], routes["basic-gw"]
    assert (keyed["mode"], keyed["grant"], keyed["match"]) == ("plain", "api_key", upstream.authority)
    assert keyed["token"]["state"] == "fresh" and keyed["token"]["fetches"] == 1
    assert keyed["requests"] == 7 and keyed["req_rate"] > 0 and keyed["errors"] == 0
    assert keyed["statuses"] == {"2xx": 6, "5xx": 1}
    assert nokey["token"]["state"] == "unavailable"
    assert "ADMIN_UNSET_KEY_7F3A" in nokey["token"]["last_error"]
    assert nokey["errors"] == 2 and nokey["err_rate"] > 0
    assert (basic["mode"], basic["gateway"], basic["token"]["state"]) == ("gateway", "/gw", "none yet")
    for r in routes.values():
        assert r["name"] in page.text

    table = status_table(await asyncio.to_thread(fetch_status, "127.0.0.1", admin.port))
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("ROUTE"))
    assert header.split() == ["ROUTE", "MODE", "GRANT", "TOKEN", "EXPIRES", "REQ/S", "ERR/S", "LAST", "ERROR"]
    for name in ROUTES:
        assert any(line.startswith(name + " ") for line in lines), table
    assert re.search(r"^no-key\s+gateway\s+api_key\s+unavailable\s", table, re.M), table
    assert "No reload since the proxy started." in table

    assert_no_secrets([metrics_text, status_text, page.text, table], p.secrets)
    for text in (metrics_text, status_text, page.text, table):
        assert KEY not in text and PASSWORD not in text


def _png_checks(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, after checking it decodes to more than one colour."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", raw[16:24])
    idat, pos = b"", 8
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        kind = raw[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += raw[pos + 8 : pos + 8 + length]
        pos += 12 + length
    pixels = zlib.decompress(idat)
    assert len(set(pixels)) > 16, "the screenshot is (nearly) one colour"
    return width, height


async def _chromium(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "Debian's `chromium` is not installed, so the status page cannot be checked in a real browser: "
            "add `chromium` to the apt packages in .ci/run (apt-get install -y chromium)."
        )
    proc = await asyncio.create_subprocess_exec(
        exe, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"chromium did not finish within {timeout:.0f} s: {' '.join(args[-2:])}")
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _visible_text(dom: str) -> str:
    body = re.sub(r"<(style|head)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


async def test_status_page_in_headless_chromium(
    make_proxy, upstream: Upstream, secret_env, admin_for, tmp_path: Path
) -> None:
    p = await _busy_proxy(make_proxy, upstream, secret_env)
    p.runtime.ready = True
    admin = await admin_for(p)  # before the traffic, so the page has rates to show
    await _traffic(p, upstream)
    # Two real reloads: a broken file (a secret variable put where a value is
    # quoted back in the problem) that changes nothing, then the good file again.
    misplaced = secret_env("ADMIN_RELOAD_MISPLACED", "misplaced-d41c-value-never-shown")
    reloader = Reloader(p.runtime, p.config_path)
    good = p.config_path.read_text()
    p.config_path.write_text(good.replace("gateway: /gw\n", "gateway: /gw\n    verify: ${ADMIN_RELOAD_MISPLACED}\n"))
    assert not await reloader.reload("test")
    p.config_path.write_text(good)
    assert await reloader.reload("test")
    url = f"http://127.0.0.1:{admin.port}/"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-shot'}"]
    rc, _, err = await _chromium(*flags, f"--screenshot={shot}", "--window-size=1200,900", url)
    assert rc == 0, err[-2000:]
    assert shot.exists(), f"no screenshot was written; chromium said: {err[-2000:]}"
    assert shot.stat().st_size > 20_000, "the screenshot is suspiciously small"
    assert _png_checks(shot) == (1200, 900)

    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-dom'}"]
    rc, dom, err = await _chromium(*flags, "--dump-dom", url)
    assert rc == 0, err[-2000:]
    text = _visible_text(dom)
    for name in ROUTES:
        assert name in text, f"route {name} is not on the rendered page"
    for word in ("fresh", "unavailable", "none yet", "api_key", "basic", "ADMIN_UNSET_KEY_7F3A", "Recent reloads"):
        assert word in text, word
    assert re.search(r"failed\s+\S*routes\d\.yaml:\d+: routes\[2\]\.verify: ", text), text
    assert re.search(r"ok\s+3 routes from ", text), text
    assert_no_secrets([dom, text], {*p.secrets, misplaced})
    assert KEY not in dom and PASSWORD not in dom and misplaced not in dom

    async with httpx.AsyncClient() as client:
        metrics_text = (await client.get(f"{url}metrics")).text
        status_text = (await client.get(f"{url}status.json")).text
    reloads = {
        s.labels["outcome"]: s.value
        for f in text_string_to_metric_families(metrics_text)
        for s in f.samples
        if s.name == "authproxy_reloads_total"
    }
    assert reloads == {"error": 1.0, "ok": 1.0}
    table = status_table(await asyncio.to_thread(fetch_status, "127.0.0.1", admin.port))
    assert "RECENT RELOADS" in table and "FAILED" in table
    assert_no_secrets([metrics_text, status_text, table], {*p.secrets, misplaced})


def test_page_escapes_what_it_shows() -> None:
    now = time.time()
    data = {
        "now": now,
        "version": "0.1.0",
        "listen": "127.0.0.1:8080",
        "config_file": "/etc/<i>routes</i>.yaml",
        "routes": [
            {
                "name": "<script>alert(1)</script>",
                "mode": "plain",
                "match": 'a.example/"x"&y',
                "gateway": None,
                "upstream": None,
                "grant": "api_key",
                "token": {"state": "failing", "last_error": "<img src=x onerror=alert(1)>", "last_error_at": now},
                "req_rate": 0.5,
                "err_rate": 0.5,
            }
        ],
        "reloads": [{"at": now, "ok": False, "detail": "a.yaml:1: <b>bold</b>"}],
    }
    page = render_page(data)
    assert "<script>" not in page and "<img" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "a.example/&quot;x&quot;&amp;y" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    table = status_table({**data, "routes": [{**data["routes"][0], "name": "evil\x1b[2Jname"}]})
    assert "\x1b" not in table and "evil [2Jname" in table


# -- who may ask: the Host check and the token (admingate) ---------------------------------------

ADMIN_TOKEN = "adm-tok-5b1e9c0d7a2f4e6b8c3d-never-shown"
REBINDING = "attacker.example"  # a page's own name, pointed at the listener by DNS rebinding


async def _ask(
    port: int,
    path: str,
    host: str | None,
    *headers: str,
    connect: str = "127.0.0.1",
    target: str | None = None,
    version: str = "1.1",
) -> tuple[int, dict[str, list[str]], bytes]:
    """One hand-written request on its own connection: status, headers (lower-case names), body."""
    reader, writer = await asyncio.open_connection(connect, port)
    try:
        lines = [f"GET {target or path} HTTP/{version}"]
        lines += [f"Host: {host}"] if host is not None else []
        lines += [*headers, "Connection: close", "", ""]
        writer.write("\r\n".join(lines).encode("latin-1"))
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    got: dict[str, list[str]] = {}
    for field_line in fields:
        name, _, value = field_line.partition(":")
        got.setdefault(name.strip().lower(), []).append(value.strip())
    return int(status_line.split()[1]), got, body


def _assert_error(status: int, headers: dict[str, list[str]], body: bytes, want: int, code: str) -> None:
    """The proxy's error shape: JSON ``{"error", "route": null, "detail"}`` and ``X-Authproxy-Error``."""
    assert status == want, (status, body)
    assert headers["x-authproxy-error"] == [code], headers
    assert headers["content-type"][0].startswith("application/json"), headers
    doc = json.loads(body)
    assert set(doc) == {"error", "route", "detail"} and doc["error"] == code and doc["route"] is None, doc
    assert doc["detail"] and "\n" not in doc["detail"]


async def _gated_proxy(make_proxy: Callable[[str], Any], secret_env: Any, token: bool) -> Proxy:
    """A proxy whose config has an `admin:` block, with or without a token, naming `status.internal`."""
    secret_env("ADMIN_GATE_TOKEN", ADMIN_TOKEN)
    token_line = "token: ${ADMIN_GATE_TOKEN}" if token else ""
    p: Proxy = await make_proxy(
        f"""
        admin:
          listen: 127.0.0.1:0
          hosts: [status.internal, Metrics.Example.]
          {token_line}
        routes: []
        """
    )
    p.secrets.add(ADMIN_TOKEN)
    return p


def _own_address() -> str:
    """A non-loopback IPv4 address of this host: the source address a route out would use, else an interface's."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("198.51.100.1", 9))  # UDP connect sends nothing; it only picks the route's source address
        addr = str(s.getsockname()[0])
        if not ipaddress.ip_address(addr).is_loopback:
            return addr
    for _, name in socket.if_nameindex():  # no route out: ask each interface (SIOCGIFADDR)
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("256s", name.encode()[:15])
            addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])
            if not ipaddress.ip_address(addr).is_loopback:
                return addr
    pytest.fail("this host has no non-loopback IPv4 address to test an unspecified bind with")


@pytest.mark.parametrize("token", [True, False], ids=["with-token", "without-token"])
async def test_dns_rebinding_host_is_refused(make_proxy, secret_env, admin_for, token: bool) -> None:
    p = await _gated_proxy(make_proxy, secret_env, token)
    admin = await admin_for(p)
    port = admin.port
    auth = (f"Authorization: Bearer {ADMIN_TOKEN}",)
    foreign = (
        REBINDING,
        f"{REBINDING}:{port}",
        f"127.0.0.1.{REBINDING}",
        f"localhost.{REBINDING}",
        "127.0.0.2",  # loopback, but not the address it is bound to
        "[::1]",
        "0x7f000001",  # a spelling a browser would have normalized: not its address either
        "status.internal.evil",
    )
    for path in ("/status.json", "/metrics", "/", "/healthz", "/readyz", "/nowhere"):
        for host in foreign if path in ("/status.json", "/metrics") else foreign[:2]:
            for sent in ((), auth):  # the Host is judged first: a token does not open a foreign name
                status, headers, body = await _ask(port, path, host, *sent)
                p.bodies.append(body.decode())
                _assert_error(status, headers, body, 421, "admin_host_refused")
                assert b"routes" not in body and b"authproxy_" not in body
    # An absolute-form target names the authority in place of Host (RFC 9112 §3.2.2): judged too.
    status, headers, body = await _ask(
        port, "/status.json", f"127.0.0.1:{port}", *auth, target=f"http://{REBINDING}:{port}/status.json"
    )
    _assert_error(status, headers, body, 421, "admin_host_refused")
    # Malformed, doubled or missing Host: 400 (RFC 9112 §3.2), never an answer.
    for host, version in ((f"127.0.0.1:{port}:1", "1.1"), ("bad host", "1.1"), (None, "1.0")):
        status, headers, body = await _ask(port, "/status.json", host, *auth, version=version)
        assert status == 400, (host, status, body)
    status, _, body = await _ask(port, "/status.json", "127.0.0.1", "Host: 127.0.0.1", *auth)
    assert status == 400 and b"routes" not in body

    # Its own address (with or without the port), localhost (a loopback bind), the configured names.
    for host in (
        "127.0.0.1",
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        "LocalHost.",
        "[::ffff:127.0.0.1]",
        "status.internal",
        f"STATUS.internal.:{port}",
        "metrics.example",
    ):
        for path in ("/status.json", "/metrics"):
            status, _, body = await _ask(port, path, host, *auth)
            assert status == 200, (host, path, status, body)
    assert_no_secrets([body.decode()], {ADMIN_TOKEN})


async def test_token_guards_all_but_the_probes(make_proxy, secret_env, admin_for) -> None:
    p = await _gated_proxy(make_proxy, secret_env, token=True)
    admin = await admin_for(p)
    port, host = admin.port, f"127.0.0.1:{admin.port}"
    basic = base64.b64encode(f"anyone:{ADMIN_TOKEN}".encode()).decode()
    wrong = [
        f"Authorization: Bearer {ADMIN_TOKEN}x",
        f"Authorization: Bearer {ADMIN_TOKEN[:-1]}",
        "Authorization: Bearer ",
        f"Authorization: Token {ADMIN_TOKEN}",
        f"Authorization: {ADMIN_TOKEN}",
        "Authorization: Basic " + base64.b64encode(f"{ADMIN_TOKEN}:".encode()).decode(),
        "Authorization: Basic !!!",
    ]
    for path in ("/status.json", "/metrics", "/", "/nowhere"):
        status, headers, body = await _ask(port, path, host)
        p.bodies.append(body.decode())
        _assert_error(status, headers, body, 401, "admin_token_required")
        challenges = headers["www-authenticate"]
        assert 'Bearer realm="authproxy admin"' in challenges, challenges
        assert any(c.startswith("Basic ") for c in challenges), challenges
        for bad in wrong:
            status, headers, body = await _ask(port, path, host, bad)
            p.bodies.append(body.decode())
            _assert_error(status, headers, body, 401, "admin_token_invalid")
            assert 'Bearer realm="authproxy admin", error="invalid_token"' in headers["www-authenticate"]
        # Two Authorization fields, one right: refused, not guessed.
        status, _, _ = await _ask(port, path, host, "Authorization: Bearer x", f"Authorization: Bearer {ADMIN_TOKEN}")
        assert status == 401
    # The token, as Bearer (scheme in any case) or as a Basic password: every path answers.
    for good in (
        f"Authorization: Bearer {ADMIN_TOKEN}",
        f"Authorization: bearer  {ADMIN_TOKEN}",
        f"Authorization: Basic {basic}",
    ):
        for path, ctype in (("/status.json", "application/json"), ("/metrics", "text/plain"), ("/", "text/html")):
            status, headers, body = await _ask(port, path, host, good)
            assert status == 200 and headers["content-type"][0].startswith(ctype), (good[:22], path, status)
            p.bodies.append(body.decode())
        status, _, _ = await _ask(port, "/nowhere", host, good)
        assert status == 404
    # The probes need none (Kubernetes cannot send one), and take a wrong one without a fuss.
    for extra in ((), (f"Authorization: Bearer {ADMIN_TOKEN}x",)):
        status, _, body = await _ask(port, "/healthz", host, *extra)
        assert (status, body) == (200, b"ok\n")
        assert (await _ask(port, "/readyz", host, *extra))[0] == 503
        p.runtime.ready = True
        assert (await _ask(port, "/readyz", host, *extra))[0] == 200
        p.runtime.ready = False
    # A probe's path spelled otherwise is not a probe.
    assert (await _ask(port, "/healthz/../status.json", host))[0] == 401
    assert (await _ask(port, "/%68ealthz", host))[0] == 200  # decoded, it is /healthz itself


async def test_unspecified_bind_answers_for_every_address_of_the_host(make_proxy, secret_env, admin_for) -> None:
    p = await _gated_proxy(make_proxy, secret_env, token=True)
    admin = await start_admin(p.runtime, "0.0.0.0", 0)
    try:
        own = _own_address()
        port = admin.port
        auth = f"Authorization: Bearer {ADMIN_TOKEN}"
        for host in (own, f"{own}:{port}", "127.0.0.1", "127.0.0.7", f"[::ffff:{own}]", "localhost", "[::1]"):
            status, _, body = await _ask(port, "/status.json", host, auth, connect=own)
            assert status == 200, (host, status, body)
            assert (await _ask(port, "/status.json", host, connect=own))[0] == 401  # the token still applies
        refused = (REBINDING, f"{own}.{REBINDING}", "198.51.100.7", "[2001:db8::1]", "0.0.0.1")
        for host in refused:
            for path in ("/status.json", "/metrics"):
                status, headers, body = await _ask(port, path, host, auth, connect=own)
                _assert_error(status, headers, body, 421, "admin_host_refused")
    finally:
        await admin.close()


# -- the `admin:` key -----------------------------------------------------------------------------


def _load_admin(tmp_path: Path, block: str) -> tuple[Any, list[str]]:
    path = tmp_path / "routes.yaml"
    path.write_text(f"state_dir: {tmp_path / 'st'}\n{block}routes: []\n")
    try:
        cfg = load(path)
    except ConfigError as exc:
        return None, [str(problem) for problem in exc.problems]
    return cfg, [str(w) for w in cfg.warnings]


def test_admin_key_both_spellings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, problems = _load_admin(tmp_path, "admin: 127.0.0.1:9090\n")
    assert (cfg.admin, cfg.admin_token, cfg.admin_hosts, problems) == (("127.0.0.1", 9090), None, (), [])
    monkeypatch.setenv("ADMIN_KEY_TOKEN", ADMIN_TOKEN)
    block = "admin:\n  listen: '[::]:9091'\n  token: ${ADMIN_KEY_TOKEN}\n  hosts: [Status.Internal., 10.1.2.3, '[fd00::9]']\n"
    cfg, problems = _load_admin(tmp_path, block)
    assert problems == [] and cfg.admin == ("::", 9091)
    assert cfg.admin_hosts == ("status.internal", "10.1.2.3", "fd00::9")
    assert cfg.admin_token.reveal() == ADMIN_TOKEN and ADMIN_TOKEN not in f"{cfg.admin_token} {cfg!r}"
    cfg, problems = _load_admin(tmp_path, "admin: {listen: 127.0.0.1:0}\n")
    assert (cfg.admin, cfg.admin_token, problems) == (("127.0.0.1", 0), None, [])


@pytest.mark.parametrize(
    ("block", "where", "says"),
    [
        ("admin:\n  listen: nowhere\n", ":3: admin.listen: ", "needs a port"),
        ("admin:\n  token: ${ADMIN_KEY_TOKEN}\n", ":3: admin: ", "`listen` is required"),
        ("admin:\n  listen: 127.0.0.1:9\n  tokn: x\n", ":4: admin.tokn: ", "unknown key `tokn`"),
        (
            "admin:\n  listen: 127.0.0.1:9\n  token: ${ADMIN_KEY_UNSET_4E1}\n",
            ":4: admin.token: ",
            "ADMIN_KEY_UNSET_4E1 is not set",
        ),
        ("admin:\n  listen: 127.0.0.1:9\n  token: ${ADMIN_KEY_EMPTY}\n", ":4: admin.token: ", "is empty"),
        ("admin:\n  listen: 127.0.0.1:9\n  token: ${ADMIN_KEY_SPACE}\n", ":4: admin.token: ", "RFC 6750"),
        ("admin:\n  listen: 127.0.0.1:9\n  token: [a, b]\n", ":4: admin.token: ", "single value"),
        ("admin:\n  listen: 127.0.0.1:9\n  hosts: status.internal\n", ":4: admin.hosts: ", "must be a list"),
        ("admin:\n  listen: 127.0.0.1:9\n  hosts: [ok.example, '*.example']\n", ":4: admin.hosts: ", "item 1:"),
        ("admin:\n  listen: 127.0.0.1:9\n  hosts: [a.example:80]\n", ":4: admin.hosts: ", "item 0:"),
        ("admin: [127.0.0.1:9]\n", ":2: admin: ", "single value"),
    ],
)
def test_admin_key_errors_name_path_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: str, where: str, says: str
) -> None:
    monkeypatch.setenv("ADMIN_KEY_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("ADMIN_KEY_EMPTY", "")
    monkeypatch.setenv("ADMIN_KEY_SPACE", "two words-and-more-than-16")
    monkeypatch.delenv("ADMIN_KEY_UNSET_4E1", raising=False)
    cfg, problems = _load_admin(tmp_path, block)
    assert cfg is None, problems
    assert any(where in p and says in p and p.startswith("error: ") for p in problems), problems
    assert_no_secrets(problems, {ADMIN_TOKEN, "two words-and-more-than-16"})


def test_admin_token_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_KEY_SHORT", "short-tok")
    cfg, problems = _load_admin(tmp_path, "admin:\n  listen: 127.0.0.1:9\n  token: ${ADMIN_KEY_SHORT}\n")
    assert cfg is not None and len(problems) == 1 and ":4: admin.token: shorter than 16" in problems[0]
    cfg, problems = _load_admin(tmp_path, "admin:\n  listen: 127.0.0.1:9\n  token: literal-token-in-the-file-0123\n")
    assert cfg is not None and any("admin.token: a literal secret" in p for p in problems), problems
    assert_no_secrets(problems, {"short-tok", "literal-token-in-the-file-0123"})


# -- `authproxy run` and `authproxy status`, as real processes ------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authproxy", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _write(tmp_path: Path, name: str, admin: str) -> Path:
    path = tmp_path / name
    path.write_text(f"state_dir: {tmp_path / 'st'}\n{admin}\nroutes: []\n")
    return path


async def _admin_of(p: ProxyProcess) -> str:
    """HOST:PORT from the "admin listener on" line (said just after "listening on")."""
    for _ in range(400):
        found = re.search(r"admin listener on (\S+)", p.stderr_text())
        if found:
            return found.group(1)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no admin listener line:\n{p.stderr_text()}")


@pytest.mark.parametrize("bind", ["0.0.0.0", "own"])
def test_run_refuses_an_admin_beyond_loopback_without_a_token(tmp_path: Path, bind: str) -> None:
    host = _own_address() if bind == "own" else bind
    for admin in (f"admin: {host}:0", f"admin: {{listen: '{host}:0', hosts: [status.internal]}}"):
        path = _write(tmp_path, "open.yaml", admin)
        r = _cli("run", "-c", str(path), "--listen", "127.0.0.1:0")
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: refusing to run the admin listener on "), r.stderr
        assert "token" in lines[0] and "--allow-open" in lines[0]
        # The same under --workers: the supervisor would serve it.
        r = _cli("run", "-c", str(path), "--listen", "127.0.0.1:0", "--workers", "2")
        assert r.returncode == 2 and "refusing to run the admin listener" in r.stderr, r.stderr
    # Loopback needs no token (only this host reaches it).
    p = start_proxy(_write(tmp_path, "loop.yaml", "admin: 127.0.0.1:0"))
    assert p.stop() == 0, p.stderr_text()


async def test_run_allow_open_lets_an_open_admin_through_with_a_warning(tmp_path: Path) -> None:
    p = start_proxy(_write(tmp_path, "open.yaml", "admin: 0.0.0.0:0"), "--allow-open")
    try:
        where = await _admin_of(p)
        assert "warning: no token guards the admin listener at 0.0.0.0:0" in p.stderr_text()
        r = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{where.rpartition(':')[2]}/status.json")
        assert r.status_code == 200  # no token to ask for; the Host check still holds:
        r = await asyncio.to_thread(
            httpx.get, f"http://127.0.0.1:{where.rpartition(':')[2]}/status.json", headers={"Host": REBINDING}
        )
        assert r.status_code == 421 and r.headers["x-authproxy-error"] == "admin_host_refused"
    finally:
        assert p.stop() == 0, p.stderr_text()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_status_command_sends_the_token(tmp_path: Path, workers: str) -> None:
    """`authproxy status` against a real `run` whose admin listener (beyond loopback) has a token."""
    env = {"ADMIN_RUN_TOKEN": ADMIN_TOKEN}
    path = _write(tmp_path, "routes.yaml", "admin: {listen: '0.0.0.0:0', token: '${ADMIN_RUN_TOKEN}'}")
    p = start_proxy(path, "--workers", workers, env=env)
    outputs: list[str] = []
    try:
        port = (await _admin_of(p)).rpartition(":")[2]
        base = f"http://127.0.0.1:{port}"
        assert (await asyncio.to_thread(httpx.get, f"{base}/healthz")).status_code == 200
        for path_ in ("/status.json", "/metrics", "/"):
            r = await asyncio.to_thread(httpx.get, f"{base}{path_}")
            outputs.append(r.text)
            assert r.status_code == 401 and r.headers["x-authproxy-error"] == "admin_token_required"
            r = await asyncio.to_thread(httpx.get, f"{base}{path_}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert r.status_code == 200, (path_, r.status_code)
            r = await asyncio.to_thread(
                httpx.get, f"{base}{path_}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Host": REBINDING}
            )
            assert r.status_code == 421, (path_, r.status_code)
        # The file gives the token; --admin gives the address (the file's says port 0).
        r = await asyncio.to_thread(_cli, "status", "-c", str(path), "--admin", f"0.0.0.0:{port}", env=env)
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("authproxy ") and "ROUTE" in r.stdout
        if workers == "2":
            assert "2 of 2 workers ready" in r.stdout, r.stdout  # the supervisor's listener (fleetadmin)
        # Another token in the file, or none: a clear sentence, exit 1.
        r = await asyncio.to_thread(
            _cli,
            "status",
            "-c",
            str(path),
            "--admin",
            f"127.0.0.1:{port}",
            env={"ADMIN_RUN_TOKEN": "not-the-token-0000"},
        )
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 1 and r.stdout == ""
        assert f"refused the token in {path} (`admin.token`)" in r.stderr, r.stderr
        bare = _write(tmp_path, "bare.yaml", "admin: 127.0.0.1:0")
        r = await asyncio.to_thread(_cli, "status", "-c", str(bare), "--admin", f"127.0.0.1:{port}")
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 1 and f"wants its token, and {bare} has none" in r.stderr, r.stderr
    finally:
        assert p.stop() == 0, p.stderr_text()
    assert_no_secrets([*outputs, p.stderr_text()], {ADMIN_TOKEN})


async def test_a_new_token_or_names_take_effect_on_restart(make_proxy, secret_env, admin_for) -> None:
    """Like the address, the listener keeps the token and names it started with, and a reload says so."""
    p = await _gated_proxy(make_proxy, secret_env, token=True)
    admin = await admin_for(p)
    secret_env("ADMIN_GATE_TOKEN", "adm-tok-rotated-41c7e2a9b0d3-never-shown")
    p.secrets.add("adm-tok-rotated-41c7e2a9b0d3-never-shown")
    assert p.runtime.apply(load(p.config_path)) == ["admin_token"]
    assert (await _ask(admin.port, "/status.json", "127.0.0.1", f"Authorization: Bearer {ADMIN_TOKEN}"))[0] == 200
    p.config_path.write_text(p.config_path.read_text().replace("status.internal", "other.internal"))
    assert p.runtime.apply(load(p.config_path)) == ["admin_hosts"]
