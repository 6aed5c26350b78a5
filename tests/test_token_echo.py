"""A token endpoint that echoes the request it got into ``error_description``, end to end.

No real authorization server does this on demand, so a small aiohttp app
plays it: it answers 401 ``invalid_client`` with the request's Authorization
header and body in the description. The proxy runs as a real process at
DEBUG; for ``client_secret_post`` (the secret form-encoded in the body),
``client_secret_basic`` (Base64 of the RFC 6749 §2.3.1-encoded pair) and
``body: json`` (a password holding `"`, JSON-escaped), the secret must be
absent, in every form ``tests/support/forms.py`` derives, from the 502 body a
client gets, the proxy's log, ``last_error`` on the status page and in
``/status.json``, and the output of ``authproxy status`` and ``authproxy
token`` (real runs of the command). The description must still be relayed,
with the secret masked.
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from authproxy.secrecy.redact import MASK
from tests.support.proc import ProxyProcess, start_proxy

from .conftest import Upstream, assert_no_secrets, secret_forms
from .test_cli import cli

CLIENT_SECRET = 'ech0 s3cr/t+&="é€ 42'
PASSWORD = 'pa"ss wörd/ 12 \\ end'


@dataclass
class EchoEndpoint:
    url: str = ""
    descriptions: list[str] = field(default_factory=list)


@pytest.fixture
async def echo_endpoint() -> AsyncIterator[EchoEndpoint]:
    ep = EchoEndpoint()

    async def token(request: web.Request) -> web.Response:
        body = await request.text()
        desc = f"auth={request.headers.get('Authorization', '-')} body={body}"
        ep.descriptions.append(desc)
        return web.json_response({"error": "invalid_client", "error_description": desc}, status=401)

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ep.url = f"http://127.0.0.1:{port}/token"
    yield ep
    await runner.cleanup()


CASES = {
    "client_secret_post": (
        "type: client_credentials, client_id: echo-client, client_secret: '${ECHO_SECRET}',"
        " client_auth: client_secret_post",
        CLIENT_SECRET,
    ),
    "client_secret_basic": (
        "type: client_credentials, client_id: 'echo client:1', client_secret: '${ECHO_SECRET}'",
        CLIENT_SECRET,
    ),
    "body_json_password": (
        "type: password, client_id: echo-client, username: bob, password: '${ECHO_PASSWORD}', body: json",
        PASSWORD,
    ),
}


async def _admin_of(p: ProxyProcess) -> str:
    for _ in range(200):  # logged just after "listening on"
        m = re.search(r"admin listener on (127\.0\.0\.1:\d+)", p.stderr_text())
        if m:
            return m.group(1)
        await asyncio.sleep(0.05)
    raise AssertionError("no admin listener:\n" + p.stderr_text())


async def _until_failing(admin: str) -> str:
    """/status.json once the failed fetch shows as the route's last_error (the supervisor asks workers)."""
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(100):
            text = (await client.get(f"http://{admin}/status.json")).text
            if json.loads(text)["routes"][0]["token"].get("last_error"):
                return text
            await asyncio.sleep(0.1)
    raise AssertionError("the route's last_error never showed")


@pytest.mark.parametrize(
    ("case", "workers"),
    [(c, 1) for c in CASES] + [("client_secret_basic", 2)],
    ids=[*CASES, "client_secret_basic-workers"],
)
async def test_an_echoed_secret_leaves_in_no_form(
    tmp_path: Path, upstream: Upstream, echo_endpoint: EchoEndpoint, case: str, workers: int
) -> None:
    auth, secret = CASES[case]
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            state_dir: {tmp_path / "state"}
            admin: 127.0.0.1:0
            routes:
              - name: echo
                match: {upstream.authority}
                auth: {{{auth}, token_url: "{echo_endpoint.url}"}}
            """
        )
    )
    env = {"ECHO_SECRET": CLIENT_SECRET, "ECHO_PASSWORD": PASSWORD}
    p = start_proxy(cfg, "--log-level", "debug", "--workers", str(workers), env=env)
    try:
        admin = await _admin_of(p)
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            r = await client.get(f"{upstream.url}/x")
        status_json = await _until_failing(admin)
        async with httpx.AsyncClient(timeout=10) as client:
            page = (await client.get(f"http://{admin}/")).text
        status = await asyncio.to_thread(cli, "status", "--admin", admin)
        token = await asyncio.to_thread(cli, "token", "echo", "-c", str(cfg), env=env)
    finally:
        p.stop()

    # The endpoint did echo the secret, in the form this client auth sends it.
    assert echo_endpoint.descriptions
    assert any(f in d for d in echo_endpoint.descriptions for f in secret_forms(secret))
    # The proxy relayed the code and the description, with the secret masked.
    assert r.status_code == 502 and r.headers["x-authproxy-error"] == "token_endpoint_error"
    detail = r.json()["detail"]
    assert "invalid_client: auth=" in detail and MASK in detail, detail
    last_error = json.loads(status_json)["routes"][0]["token"]["last_error"]
    assert "invalid_client" in last_error and MASK in last_error
    assert "invalid_client" in page
    assert status.returncode == 0 and "invalid_client" in status.stdout
    assert token.returncode == 1 and "invalid_client" in token.stderr and MASK in token.stderr

    outputs = [r.text, p.stderr_text(), status_json, page, status.stdout, status.stderr, token.stdout, token.stderr]
    assert_no_secrets(outputs, [secret])
