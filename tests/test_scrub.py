"""Response scrubbing through a real proxy: an upstream that sends the injected key back never hands it to the client.

The upstream (tests/support/echo_raw.py) writes every body in pieces cut in
the middle of the key, so the proxy reads it across chunk boundaries; the
clients are httpx and aiohttp, through the proxy in plain, intercepted and
gateway modes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import pytest
import trustme

from tests.support.echo_raw import RawEcho

from .conftest import Proxy, assert_no_secrets

KEY = "sk-scrub/Test+0123456789abcdef"
MASKED = "*" * len(KEY)
MODES = ["plain", "intercept", "gateway"]


@pytest.fixture
async def echoes() -> AsyncIterator[list[RawEcho]]:
    """The upstreams a test started, closed at its end."""
    started: list[RawEcho] = []
    yield started
    for up in started:
        await up.close()


def _tls(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca_path = tmp / "echo-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return ctx, ca_path


class Setup:
    """One proxy in one mode, and how a client reaches a path of the echo upstream through it."""

    def __init__(self, p: Proxy, up: RawEcho, mode: str) -> None:
        self.p, self.up, self.mode = p, up, mode

    def url(self, path: str) -> str:
        if self.mode == "gateway":
            return f"{self.p.url}/g{path}"
        scheme = "https" if self.mode == "intercept" else "http"
        return f"{scheme}://{self.up.authority}{path}"

    def client(self, **kw: Any) -> httpx.AsyncClient:
        if self.mode == "gateway":
            return httpx.AsyncClient(timeout=30, **kw)
        verify: ssl.SSLContext | bool = True
        if self.mode == "intercept":
            assert self.p.runtime.ca is not None
            verify = ssl.create_default_context(cafile=str(self.p.runtime.ca.files.cert))
        return httpx.AsyncClient(proxy=self.p.url, verify=verify, timeout=30, **kw)


async def _setup(make_proxy, secret_env, up: RawEcho, mode: str, ca: Path | None = None, extra: str = "") -> Setup:
    secret_env("SCRUB_KEY", KEY)
    where = {
        "plain": f"match: {up.authority}",
        "intercept": f"match: {up.authority}\n    ca_file: {ca}",
        "gateway": f"gateway: /g\n    upstream: http://{up.authority}",
    }[mode]
    p = await make_proxy(
        f"""
routes:
  - name: echo
    {where}
    {extra}
    auth: {{type: api_key, header: X-API-Key, value: "${{SCRUB_KEY}}"}}
"""
    )
    p.secrets.add(KEY)
    return Setup(p, up, mode)


async def _mode(echoes: list[RawEcho], tmp: Path, make_proxy, secret_env, mode: str, extra: str = "") -> Setup:
    ctx, ca = _tls(tmp) if mode == "intercept" else (None, None)
    up = await RawEcho("X-API-Key", ctx).start()
    echoes.append(up)
    return await _setup(make_proxy, secret_env, up, mode, ca, extra)


def _scrubbed(s: Setup) -> int:
    lines = [x for x in s.p.access_lines() if "route=echo" in x]
    return sum(int(x.split(" scrubbed=")[1].split()[0]) for x in lines if " scrubbed=" in x)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["/json", "/chunked", "/gzip"])
async def test_echoed_key_is_scrubbed(echoes, tmp_path, make_proxy, secret_env, mode: str, path: str) -> None:
    s = await _mode(echoes, tmp_path, make_proxy, secret_env, mode)
    async with s.client() as c:
        r = await c.get(s.url(path), headers={"Accept-Encoding": "gzip, br"})
    assert r.status_code == 200
    info = r.json()
    assert info["headers"]["x-api-key"] == MASKED  # the upstream had the key: its echo comes back masked
    assert s.up.seen[-1]["x-api-key"] == KEY
    assert s.up.seen[-1]["accept-encoding"] == "identity"  # asked for what can be read
    assert set(info["b64"]) == {"*"} or info["b64"].count("*") >= len(KEY)
    assert info["url"] == "*" * len(quote(KEY))
    assert info["escaped"] == "*" * (len(KEY) + 1)  # `\/`: one byte longer
    if path == "/json":
        assert r.headers["x-echo"] == MASKED
        assert int(r.headers["content-length"]) == len(r.content)  # same-length replacements: the length holds
    if path == "/gzip":
        assert "content-encoding" not in r.headers  # decompressed, scrubbed, sent as identity
    assert_no_secrets([r.text, str(r.headers)], [KEY])
    assert _scrubbed(s) > 4 * len(KEY)


@pytest.mark.parametrize("mode", MODES)
async def test_scrub_false_leaves_the_body_alone(echoes, tmp_path, make_proxy, secret_env, mode: str) -> None:
    s = await _mode(echoes, tmp_path, make_proxy, secret_env, mode, extra="scrub: false")
    async with s.client() as c:
        r = await c.get(s.url("/json"), headers={"Accept-Encoding": "gzip"})
    assert r.json()["headers"]["x-api-key"] == KEY
    assert s.up.seen[-1]["accept-encoding"] == "gzip"
    assert _scrubbed(s) == 0


@pytest.mark.parametrize("mode", MODES)
async def test_unreadable_encoding_fails_closed(echoes, tmp_path, make_proxy, secret_env, mode: str) -> None:
    s = await _mode(echoes, tmp_path, make_proxy, secret_env, mode)
    async with s.client() as c:
        r = await c.get(s.url("/br"))
    assert r.status_code == 502
    assert r.json()["error"] == "unscrubbable_encoding"
    s.p.bodies.append(r.text)


async def _events(s: Setup, path: str, sse: bool) -> list[str]:
    """Read the stream; after each event, let the upstream produce the next (it waits for that).

    A proxy that held the stream back would leave the upstream waiting and this read
    would never get the next event: the bound below fails the test, nothing is timed.
    """
    got: list[str] = []
    async with s.client() as c, c.stream("GET", s.url(path)) as r, asyncio.timeout(20):
        assert r.status_code == 200
        if sse:
            async for line in r.aiter_lines():
                if line:
                    got.append(line)
                    s.up.gate.set()
            return got
        buf = ""
        async for text in r.aiter_text():
            buf += text
            while "." in buf:
                event, _, buf = buf.partition(".")
                got.append(event)
                s.up.gate.set()
    return got


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scrub", [True, False])
async def test_sse_events_arrive_one_by_one(echoes, tmp_path, make_proxy, secret_env, mode: str, scrub: bool) -> None:
    s = await _mode(echoes, tmp_path, make_proxy, secret_env, mode, extra="" if scrub else "scrub: false")
    got = [x for x in await _events(s, "/sse", sse=True) if x]
    # Each event was produced only after the client had the one before (echo_raw's gate).
    assert got == [f'data: {{"n": {n}, "auth": "{MASKED if scrub else KEY}"}}' for n in range(3)]


@pytest.mark.parametrize("scrub", [True, False])
async def test_chunks_arrive_one_by_one(echoes, tmp_path, make_proxy, secret_env, scrub: bool) -> None:
    s = await _mode(echoes, tmp_path, make_proxy, secret_env, "plain", extra="" if scrub else "scrub: false")
    got = await _events(s, "/drip", sse=False)
    assert got == [f"part {n} holds {MASKED if scrub else KEY}" for n in range(3)]


@pytest.mark.parametrize("mode", ["plain", "intercept"])
async def test_websocket_frames_are_scrubbed(echoes, tmp_path, make_proxy, secret_env, mode: str) -> None:
    s = await _mode(echoes, tmp_path, make_proxy, secret_env, mode)
    scheme = "ws" if mode == "plain" else "wss"
    kw: dict[str, Any] = {"proxy": s.p.url}
    if mode == "intercept":
        assert s.p.runtime.ca is not None
        kw["ssl"] = ssl.create_default_context(cafile=str(s.p.runtime.ca.files.cert))
    url = f"{scheme}://{s.up.authority}/ws"
    async with aiohttp.ClientSession() as session, session.ws_connect(url, **kw) as ws:  # offers permessage-deflate
        text = await ws.receive_str(timeout=10)
        data = await ws.receive_bytes(timeout=10)
        closing = await ws.receive(timeout=10)
    assert text == f"header: {MASKED} and again {MASKED}"  # across three fragments and a ping
    assert data == b"\x00bin " + MASKED.encode() + b" \xff"
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert s.up.seen[-1]["x-api-key"] == KEY
    assert "sec-websocket-extensions" not in s.up.seen[-1]  # no permessage-deflate: frames stay readable
    assert_no_secrets([text, data.decode("latin-1")], [KEY])


async def test_basic_blob_and_password_are_scrubbed(make_proxy, secret_env) -> None:
    up = await RawEcho("Authorization").start()
    try:
        secret_env("SCRUB_PW", "pw-0123456789-secret")
        p = await make_proxy(
            f"""
routes:
  - name: echo
    match: {up.authority}
    auth: {{type: basic, username: alice, password: "${{SCRUB_PW}}"}}
"""
        )
        p.secrets.add("pw-0123456789-secret")
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as c:
            r = await c.get(f"http://{up.authority}/json")
        info = r.json()
        assert info["headers"]["authorization"].startswith("Basic ***")
        assert set(info["b64"]) <= set("*=QmFzaWMg")  # base64("Basic " + blob): the blob's run masked
        assert_no_secrets([r.text], ["pw-0123456789-secret", "alice:pw-0123456789-secret"])
    finally:
        await up.close()


async def test_another_switched_protocol_is_scrubbed_as_a_stream(echoes, tmp_path, make_proxy, secret_env) -> None:
    s = await _mode(echoes, tmp_path, make_proxy, secret_env, "plain")
    reader, writer = await asyncio.open_connection("127.0.0.1", s.p.port)
    target = f"http://{s.up.authority}/switch"
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: {s.up.authority}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n".encode()
    )
    async with asyncio.timeout(20):
        got = await reader.read(-1)  # the 101, the bytes after it, then the upstream's end
    writer.close()
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert rest == b"raw " + MASKED.encode() + b" end"


async def test_a_placeholder_route_hands_back_its_placeholder(echoes, tmp_path, make_proxy, secret_env) -> None:
    """Scrubbing is on by default with a placeholder; a match as long as it becomes the placeholder."""
    up = await RawEcho("X-API-Key").start()
    echoes.append(up)
    secret_env("SCRUB_KEY", KEY)
    ph = "ph-" + "x" * (len(KEY) - 3)  # as long as the key
    p = await make_proxy(
        f"""
routes:
  - name: echo
    match: {up.authority}
    auth: {{type: api_key, header: X-API-Key, value: "${{SCRUB_KEY}}", placeholder: "{ph}"}}
"""
    )
    p.secrets.add(KEY)
    async with httpx.AsyncClient(proxy=p.url, timeout=30) as c:
        r = await c.get(f"http://{up.authority}/json", headers={"X-API-Key": ph})
    assert up.seen[-1]["x-api-key"] == KEY  # swapped on the way out
    info = r.json()
    assert info["headers"]["x-api-key"] == ph and r.headers["x-echo"] == ph  # and back on the way in
    assert set(info["b64"]) == {"*"} or "*" * 10 in info["b64"]  # other lengths: `*`
    assert_no_secrets([r.text, str(r.headers)], [KEY])
