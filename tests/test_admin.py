"""The admin listener after real traffic: health, readiness, /metrics parsed with
prometheus_client's parser, /status.json, `authproxy status`'s table, and the
status page rendered by a real headless Chromium (screenshot kept under
tests/artifacts/), with no secret anywhere."""

from __future__ import annotations

import asyncio
import html
import re
import shutil
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authproxy.admin import AdminServer, fetch_status, render_page, start_admin, status_table
from authproxy.reload import Reloader

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
            auth: {{type: api_key, header: X-API-Key, value: ${{ADMIN_TEST_KEY}}}}
          - name: no-key
            gateway: /nokey
            upstream: {upstream.url}
            auth: {{type: api_key, header: X-API-Key, value: ${{ADMIN_UNSET_KEY_7F3A}}}}
          - name: basic-gw
            gateway: /gw
            upstream: {upstream.url}
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
