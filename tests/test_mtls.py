"""Client certificates to upstreams: presented in every mode, refused without, rotated on disk without a restart."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp import web

from tests.support.mtls_upstream import MTLSUpstream, app, server_context
from tests.support.pki import Pair

from .conftest import Proxy

KEY = "mtls-route-key-27182818"
PASSWORD = "mtls-key-password-161803"


@pytest.fixture
async def mtls_upstream(tmp_path: Path) -> AsyncIterator[MTLSUpstream]:
    up = MTLSUpstream()
    ctx = server_context(tmp_path, up)
    runner = web.AppRunner(app(up), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    up.port = runner.addresses[0][1]
    yield up
    await runner.cleanup()


def _client_ctx(p: Proxy) -> ssl.SSLContext:
    assert p.runtime.ca is not None
    return ssl.create_default_context(cafile=str(p.runtime.ca.files.cert))


def _cert_keys(pair: Pair | None, password: bool = False) -> str:
    if pair is None:
        return ""
    keys = f"client_cert: {pair.cert}\n            client_key: {pair.key}"
    if password:
        keys += '\n            client_key_password: "${MTLS_KEY_PASSWORD}"'
    return keys


async def _proxy(make_proxy, secret_env, up: MTLSUpstream, pair: Pair | None, *, password: bool = False) -> Proxy:
    """Three routes to the one upstream: intercepted, plain→https and gateway, each presenting ``pair``."""
    secret_env("MTLS_KEY", KEY)
    if password:
        secret_env("MTLS_KEY_PASSWORD", PASSWORD)
    keys = _cert_keys(pair, password)
    p = await make_proxy(
        f"""
        routes:
          - name: icpt
            match: {up.authority}
            ca_file: {up.server_ca}
            {keys}
            auth: {{type: api_key, header: X-Key, value: "${{MTLS_KEY}}"}}
          - name: plain
            match: mtls.example.test
            upstream: https://{up.authority}
            ca_file: {up.server_ca}
            {keys}
            auth: {{type: api_key, header: X-Key, value: "${{MTLS_KEY}}"}}
          - name: gw
            gateway: /mtls
            upstream: https://{up.authority}
            ca_file: {up.server_ca}
            {keys}
            auth: {{type: api_key, header: X-Key, value: "${{MTLS_KEY}}"}}
        """
    )
    p.secrets.update({KEY, PASSWORD})
    if pair is not None:
        p.secrets.add(pair.key.read_text().strip().splitlines()[1])  # a line of the key's PEM body
    return p


async def _three_modes(p: Proxy, up: MTLSUpstream) -> list[httpx.Response]:
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        icpt = await client.get(f"{up.url}/icpt")
        plain = await client.get("http://mtls.example.test/plain")
    async with httpx.AsyncClient() as client:
        gw = await client.get(f"{p.url}/mtls/gw")
    for r in (icpt, plain, gw):
        p.bodies.append(r.text)
    return [icpt, plain, gw]


async def test_without_the_client_certificate_the_refusal_is_upstream_tls_error(
    make_proxy, secret_env, mtls_upstream: MTLSUpstream
) -> None:
    p = await _proxy(make_proxy, secret_env, mtls_upstream, None)
    for r in await _three_modes(p, mtls_upstream):
        assert r.status_code == 502, r.text
        assert r.headers["X-Authproxy-Error"] == "upstream_tls_error"
        assert "TLS with 127.0.0.1" in r.json()["detail"]
    assert mtls_upstream.subjects == []


async def test_with_the_client_certificate_every_mode_gets_200(
    make_proxy, secret_env, mtls_upstream: MTLSUpstream, tmp_path: Path
) -> None:
    pair = mtls_upstream.client_ca.issue(tmp_path, "client", common_name="agent-one", password=PASSWORD)
    p = await _proxy(make_proxy, secret_env, mtls_upstream, pair, password=True)
    rs = await _three_modes(p, mtls_upstream)
    assert [r.status_code for r in rs] == [200, 200, 200], [r.text for r in rs]
    assert {r.json()["subject"] for r in rs} == {pair.subject}
    assert [r.json()["path"] for r in rs] == ["/icpt", "/plain", "/gw"]


async def test_a_websocket_upgrade_over_tls_presents_the_certificate(
    make_proxy, secret_env, mtls_upstream: MTLSUpstream, tmp_path: Path
) -> None:
    pair = mtls_upstream.client_ca.issue(tmp_path, "client", common_name="agent-ws")
    p = await _proxy(make_proxy, secret_env, mtls_upstream, pair)
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"wss://{mtls_upstream.authority}/ws", proxy=p.url, ssl=_client_ctx(p)) as ws,
    ):
        await ws.send_str("hello")
        got = await asyncio.wait_for(ws.receive_str(), 30)
    # The upstream had the key (its echo is as long); the frame came back scrubbed (docs/scrubbing.md).
    assert got == f"{pair.subject}|{'*' * len(KEY)}|hello"


async def test_a_certificate_rotated_on_disk_is_used_by_new_connections(
    make_proxy, secret_env, mtls_upstream: MTLSUpstream, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    first = mtls_upstream.client_ca.issue(live, "client", common_name="before-rotation")
    p = await _proxy(make_proxy, secret_env, mtls_upstream, first)
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{p.url}/mtls/a")
        assert r.json()["subject"] == first.subject
        # The way cert-manager and most tools rotate: new files written beside, renamed over the old.
        staged = tmp_path / "staged"
        staged.mkdir()
        second = mtls_upstream.client_ca.issue(staged, "client", common_name="after-rotation")
        os.replace(second.key, live / "client.key")
        os.replace(second.cert, live / "client.crt")
        r = await client.get(f"{p.url}/mtls/b")
        assert r.status_code == 200 and r.json()["subject"] == "CN=after-rotation,O=authproxy tests"
        # A half-done rotation (the key alone replaced) keeps the last good pair, and says so once.
        third = mtls_upstream.client_ca.issue(staged, "third", common_name="half-rotated")
        os.replace(third.key, live / "client.key")
        for path in ("/mtls/c", "/mtls/d"):
            r = await client.get(f"{p.url}{path}")
            assert r.status_code == 200 and r.json()["subject"] == "CN=after-rotation,O=authproxy tests"
    warned = [x for x in p.lines() if "cannot be used, the last one is" in x]
    assert len(warned) == 1 and "does not match the certificate" in warned[0]
    p.secrets.add(third.key.read_text().strip().splitlines()[1] if third.key.exists() else "")


async def test_the_status_page_names_the_trust_store_and_the_certificate_not_the_key(
    make_proxy, secret_env, mtls_upstream: MTLSUpstream, tmp_path: Path
) -> None:
    from authproxy.admin.web import start_admin

    pair = mtls_upstream.client_ca.issue(tmp_path, "client", common_name="agent-status", password=PASSWORD)
    p = await _proxy(make_proxy, secret_env, mtls_upstream, pair, password=True)
    admin = await start_admin(p.runtime, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin.port}") as client:
            data = (await client.get("/status.json")).json()
            page = (await client.get("/")).text
    finally:
        await admin.close()
    tls = {r["name"]: r["tls"] for r in data["routes"]}
    assert tls["gw"]["trust"] == f"route ca_file {mtls_upstream.server_ca}"
    assert tls["gw"]["client_cert"].startswith("CN=agent-status,O=authproxy tests until ")
    assert tls["gw"]["token_client_cert"] is None
    assert "TLS trusts route ca_file" in page and "presents CN=agent-status" in page
    p.bodies += [str(data), page]


@pytest.mark.parametrize("present", [False, True])
async def test_the_running_process_on_its_default_loop_refuses_and_presents_alike(
    mtls_upstream: MTLSUpstream, tmp_path: Path, present: bool
) -> None:
    """`authproxy run` (uvloop where it builds): the refusal is upstream_tls_error there too; the certificate works."""
    from tests.support.proc import start_proxy

    pair = mtls_upstream.client_ca.issue(tmp_path, "client", common_name="agent-process", password=PASSWORD)
    keys = _cert_keys(pair, password=True) if present else ""
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        f"""
state_dir: {tmp_path / "state"}
routes:
  - name: gw
    gateway: /mtls
    upstream: https://{mtls_upstream.authority}
    ca_file: {mtls_upstream.server_ca}
    {keys.replace(" " * 12, " " * 4)}
    auth: {{type: api_key, header: X-Key, value: "${{MTLS_KEY}}"}}
"""
    )
    p = start_proxy(cfg, env={"MTLS_KEY": KEY, "MTLS_KEY_PASSWORD": PASSWORD})
    try:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{p.url}/mtls/x")
    finally:
        p.stop()
    if present:
        assert r.status_code == 200 and r.json()["subject"] == pair.subject
    else:
        assert r.status_code == 502 and r.headers["X-Authproxy-Error"] == "upstream_tls_error", r.text
    from .conftest import assert_no_secrets

    assert_no_secrets([p.stderr_text(), r.text], [KEY, PASSWORD, *pair.key.read_text().splitlines()[1:-1]])
