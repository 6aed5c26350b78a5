"""Shared fixtures: a real aiohttp upstream and the proxy itself, both on 127.0.0.1.

The proxy runs in the test's event loop (``proxy`` fixture) with its log
captured at DEBUG, through the proxy's own formatter (tracebacks included);
at teardown every captured line and every error body is grepped for every
secret the test registered, in every form ``tests/support/forms.py`` derives
(raw, percent- and form-encoded, JSON- and HTML-escaped, Base64 at any offset
in either alphabet, and their compositions).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import textwrap
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from authproxy.config import load
from authproxy.ops import accesslog
from authproxy.runtime import Runtime
from authproxy.server.listener import ProxyServer
from tests.support.forms import secret_forms

pytest_plugins = ["tests.support.oauth_server"]

__all__ = ["assert_no_secrets", "secret_forms"]


def assert_no_secrets(texts: Iterable[str], secrets: Iterable[str]) -> None:
    blob = "\n".join(texts)
    for s in secrets:
        for form in secret_forms(s):
            assert form not in blob, f"a secret leaked (form {form[:3]}…)"


class _Capture(logging.Handler):
    """What the proxy's stderr would show: its formatter writes the message and any traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(accesslog.TextFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Upstream:
    """A real aiohttp server that records what arrived."""

    url: str
    port: int
    seen: list[dict[str, Any]] = field(default_factory=list)
    valid_tokens: set[str] = field(default_factory=set)
    check_auth: Callable[[str | None], bool] | None = None

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"


def _upstream_app(up: Upstream) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        h = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            size += len(chunk)
        info = {
            "method": request.method,
            "path": request.path_qs,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "host": request.host,
            "body_size": size,
            "body_sha256": h.hexdigest(),
            "chunked": request.headers.get("Transfer-Encoding", "") == "chunked",
        }
        up.seen.append(info)
        if up.check_auth is not None and not up.check_auth(request.headers.get("Authorization")):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response(info)

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", "1048576"))
        resp = web.StreamResponse()
        if request.query.get("chunked") != "1":
            resp.content_length = size
        await resp.prepare(request)
        block = b"x" * 65536
        left = size
        while left > 0:
            n = min(left, len(block))
            await resp.write(block[:n])
            left -= n
        await resp.write_eof()
        return resp

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}", headers={"X-Upstream": "yes"})

    async def gzipped(request: web.Request) -> web.Response:
        import gzip

        body = gzip.compress(b"hello compressed world" * 10)
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://elsewhere.invalid/next")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text="slow done")

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    async def reset(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"partial")
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def ws(request: web.Request) -> web.StreamResponse:
        up.seen.append({"method": "WS", "path": request.path_qs, "headers": list(request.headers.items())})
        if up.check_auth is not None and not up.check_auth(request.headers.get("Authorization")):
            return web.json_response({"error": "unauthorized"}, status=401)
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == web.WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
            elif msg.type == web.WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/ws", ws)
    app.router.add_get("/big", big)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/hang", hang)
    app.router.add_get("/slow", slow)
    app.router.add_get("/reset", reset)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream(url="", port=0)
    runner = web.AppRunner(_upstream_app(up), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    up.port, up.url = port, f"http://127.0.0.1:{port}"
    yield up
    await runner.cleanup()


@pytest.fixture
async def tls_upstream(tmp_path: Path) -> AsyncIterator[tuple[Upstream, Path]]:
    """An HTTPS aiohttp upstream with its own test CA; yields it and the CA's PEM path."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_path = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    up = Upstream(url="", port=0)
    runner = web.AppRunner(_upstream_app(up), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    up.port, up.url = port, f"https://127.0.0.1:{port}"
    yield up, ca_path
    await runner.cleanup()


def tool_env(p: Proxy, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `authproxy env` prints for this proxy (NO_PROXY emptied: upstreams are on loopback)."""
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "authproxy",
            "env",
            "-c",
            str(p.config_path),
            "--listen",
            f"127.0.0.1:{p.port}",
            "--no-proxy",
            "",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    for line in out.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.strip("'")
    env.update(extra or {})
    return env


@dataclass
class Proxy:
    url: str
    port: int
    runtime: Runtime
    server: ProxyServer
    config_path: Path
    log: _Capture
    secrets: set[str] = field(default_factory=set)
    bodies: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return list(self.log.lines)

    def access_lines(self) -> list[str]:
        return [line for line in self.log.lines if " route=" in line]


@pytest.fixture
async def make_proxy(tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    """``await make_proxy(yaml_text)`` starts a proxy on a free port with that config."""
    started: list[Proxy] = []
    logger = logging.getLogger("authproxy")
    capture = _Capture()
    logger.addHandler(capture)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)

    async def start(text: str) -> Proxy:
        path = tmp_path / f"routes{len(started)}.yaml"
        text = textwrap.dedent(text)
        if "state_dir:" not in text:
            text = f"state_dir: {tmp_path / 'state'}\n" + text
        path.write_text(text)
        cfg = load(path)
        rt = Runtime(cfg)
        rt.enable_interception()
        server = ProxyServer(rt)
        _, port = await server.start("127.0.0.1", 0)
        p = Proxy(f"http://127.0.0.1:{port}", port, rt, server, path, capture)
        started.append(p)
        return p

    yield start
    logger.removeHandler(capture)
    logger.setLevel(old_level)
    for p in started:
        await p.server.drain(1.0)
        await p.runtime.close()
    for p in started:
        assert_no_secrets(capture.lines + p.bodies, p.secrets)


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], str]:
    """Set an environment variable to a secret value and return the value."""

    def setter(name: str, value: str) -> str:
        monkeypatch.setenv(name, value)
        return value

    return setter


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Clients in tests are given the proxy explicitly; a stray HTTP_PROXY from
    # the machine must not reroute them.
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
