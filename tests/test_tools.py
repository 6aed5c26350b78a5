"""Real tools through the proxy: git, pip and Node, set up only by `authproxy env`.

Each tool talks HTTPS to a real server on 127.0.0.1 that has its own test CA
(trustme) and answers 401 unless the request carries the credential the route
injects. The tools trust only the bundle `authproxy env` points them at (the
system roots plus the proxy's CA), never the server's own CA, so they can only
succeed through the proxy's interception, and only if the proxy injected the
credential. Each test asserts that the server saw the credential on every
request and that the tool got the server's real answer (a cloned file, a
downloaded wheel, a JSON body).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trustme
from aiohttp import web
from multidict import CIMultiDict

from .conftest import Proxy, assert_no_secrets, tool_env

TIMEOUT = 120.0  # every subprocess, bounded
NODE_DIR = Path(__file__).parent / "node"

GIT_PASSWORD = "git-pass-5b1e0c7d93"
PIP_KEY = "pip-index-key-8f2a6c41d7"
NODE_TOKEN = "node-bearer-token-3e9d71ab04"


async def _run(*argv: str, env: dict[str, str], cwd: Path | None = None) -> tuple[int, str, str]:
    """Runs a tool without blocking the event loop (the proxy lives in it), killed after TIMEOUT."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv[0]} did not finish within {TIMEOUT:.0f} s") from None
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


@asynccontextmanager
async def _https_server(app: web.Application, tmp_path: Path, name: str) -> AsyncIterator[tuple[int, Path]]:
    """Serves `app` over TLS on 127.0.0.1 with a fresh test CA; yields the port and the CA's PEM path."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca_path = tmp_path / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    # auto_decompress=False: a request body's Content-Encoding reaches the
    # handler as sent (git gzips some of its POST bodies; http-backend inflates).
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, ca_path
    finally:
        await runner.cleanup()


async def _proxy_for(make_proxy: Callable[[str], Awaitable[Proxy]], name: str, port: int, ca: Path, auth: str) -> Proxy:
    return await make_proxy(
        f"""
        routes:
          - name: {name}
            match: 127.0.0.1:{port}
            ca_file: {ca}
            auth: {auth}
        """
    )


async def _direct_status(url: str, ca: Path) -> int:
    """The server's answer to a request without the credential (no proxy): it must refuse."""
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca)), trust_env=False) as client:
        return (await client.get(url)).status_code


def _intercepted(p: Proxy, method: str, route: str) -> list[str]:
    return [x for x in p.access_lines() if f"{method} intercept" in x and f"route={route}" in x]


@dataclass
class Seen:
    """What a credential-demanding server received: (method, path_qs, had the credential)."""

    requests: list[tuple[str, str, bool]] = field(default_factory=list)

    def all_authorized(self) -> bool:
        return bool(self.requests) and all(ok for _, _, ok in self.requests)


def _demanding(header: str, expected: str, seen: Seen, challenge: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: 401 unless `header` equals `expected` exactly; records every request."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        ok = request.headers.getall(header, []) == [expected]
        seen.requests.append((request.method, request.path_qs, ok))
        if not ok:
            return web.Response(status=401, text="credential required\n", headers={"WWW-Authenticate": challenge})
        return await handler(request)

    return middleware


# --------------------------------------------------------------------------- git


def _git_env(extra: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which git reads no system or user config and never prompts."""
    env = dict(os.environ if base is None else base)
    for name in ("GIT_ASKPASS", "SSH_ASKPASS", "GIT_DIR", "GIT_WORK_TREE"):
        env.pop(name, None)
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME="authproxy tests",
        GIT_AUTHOR_EMAIL="tests@example.invalid",
        GIT_COMMITTER_NAME="authproxy tests",
        GIT_COMMITTER_EMAIL="tests@example.invalid",
    )
    env.update(extra or {})
    return env


def _git(*args: str, cwd: Path | None = None) -> str:
    r = subprocess.run(
        ["git", *args], cwd=cwd, env=_git_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert r.returncode == 0, f"git {' '.join(args)}: {r.stderr}"
    return r.stdout.strip()


def _parse_cgi(out: bytes) -> tuple[int, CIMultiDict[str], bytes]:
    """Splits a CGI response into status, headers and body (RFC 3875 §6)."""
    ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := out.find(sep)) >= 0]
    assert ends, f"CGI output without a header block: {out[:200]!r}"
    at, size = min(ends)
    head, body = out[:at], out[at + size :]
    status, headers = 200, CIMultiDict[str]()
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "status":
            status = int(value.split()[0])
        elif name.strip().lower() not in ("content-length", "transfer-encoding", "connection"):
            headers.add(name.strip(), value.strip())
    return status, headers, body


@dataclass
class GitServer:
    url: str  # of the repository
    ca: Path
    commit: str
    seen: Seen


@pytest.fixture
async def git_server(tmp_path: Path) -> AsyncIterator[GitServer]:
    """`git http-backend` (smart HTTP) as CGI behind aiohttp over TLS, demanding Basic git:GIT_PASSWORD."""
    work, root = tmp_path / "work", tmp_path / "srv"
    root.mkdir()
    _git("init", "-q", "-b", "main", str(work))
    (work / "README.txt").write_text("hello from the git server behind authproxy\n")
    _git("add", "README.txt", cwd=work)
    _git("commit", "-q", "-m", "first commit", cwd=work)
    _git("clone", "-q", "--bare", str(work), str(root / "probe.git"))
    commit = _git("rev-parse", "HEAD", cwd=work)
    backend = Path(_git("--exec-path")) / "git-http-backend"
    assert backend.exists(), backend

    async def cgi(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        env = _git_env(
            {
                "GIT_PROJECT_ROOT": str(root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": request.path,
                "QUERY_STRING": request.query_string,
                "REQUEST_METHOD": request.method,
                "CONTENT_TYPE": request.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": "127.0.0.1",
                "SERVER_PROTOCOL": "HTTP/1.1",
            },
            base={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        )
        for header, var in (("Content-Encoding", "HTTP_CONTENT_ENCODING"), ("Git-Protocol", "HTTP_GIT_PROTOCOL")):
            if header in request.headers:
                env[var] = request.headers[header]
        proc = await asyncio.create_subprocess_exec(
            str(backend),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(body), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return web.Response(status=504, text="git http-backend timed out\n")
        if proc.returncode and not out:
            return web.Response(status=500, text=err.decode(errors="replace"))
        status, headers, payload = _parse_cgi(out)
        return web.Response(status=status, headers=headers, body=payload)

    seen = Seen()
    expected = "Basic " + base64.b64encode(f"git:{GIT_PASSWORD}".encode()).decode()
    app = web.Application(middlewares=[_demanding("Authorization", expected, seen, 'Basic realm="git"')])
    app.router.add_route("*", "/{tail:.*}", cgi)
    async with _https_server(app, tmp_path, "git") as (port, ca):
        yield GitServer(f"https://127.0.0.1:{port}/probe.git", ca, commit, seen)


async def _git_proxy(make_proxy, git_server: GitServer, secret_env) -> Proxy:
    secret_env("GIT_ROUTE_PASSWORD", GIT_PASSWORD)
    port = int(git_server.url.split(":")[2].split("/")[0])
    p = await _proxy_for(
        make_proxy, "git", port, git_server.ca, '{type: basic, username: git, password: "${GIT_ROUTE_PASSWORD}"}'
    )
    # The password alone, and the Basic header's base64 as the upstream sees it.
    p.secrets.update({GIT_PASSWORD, base64.b64encode(f"git:{GIT_PASSWORD}".encode()).decode()})
    return p


async def test_git_ls_remote_through_proxy(make_proxy, git_server: GitServer, secret_env) -> None:
    assert await _direct_status(f"{git_server.url}/info/refs?service=git-upload-pack", git_server.ca) == 401
    git_server.seen.requests.clear()
    p = await _git_proxy(make_proxy, git_server, secret_env)

    rc, out, err = await _run("git", "ls-remote", git_server.url, env=_git_env(base=tool_env(p)))
    assert_no_secrets([out, err], p.secrets)
    assert rc == 0, err
    refs = dict(reversed(line.split("\t")) for line in out.splitlines())
    assert refs["refs/heads/main"] == git_server.commit
    assert refs["HEAD"] == git_server.commit
    assert git_server.seen.all_authorized(), git_server.seen.requests
    assert _intercepted(p, "GET", "git"), p.access_lines()
    assert not [x for x in p.access_lines() if "status=401" in x]


async def test_git_clone_through_proxy(make_proxy, git_server: GitServer, secret_env, tmp_path: Path) -> None:
    p = await _git_proxy(make_proxy, git_server, secret_env)
    dest = tmp_path / "clone"

    rc, out, err = await _run("git", "clone", git_server.url, str(dest), env=_git_env(base=tool_env(p)))
    assert_no_secrets([out, err], p.secrets)
    assert rc == 0, err
    assert (dest / "README.txt").read_text() == "hello from the git server behind authproxy\n"
    assert _git("rev-parse", "HEAD", cwd=dest) == git_server.commit
    # The credential was injected, not stored: the clone's config holds no password.
    assert_no_secrets([(dest / ".git" / "config").read_text()], p.secrets)
    methods = {m for m, _, _ in git_server.seen.requests}
    assert methods == {"GET", "POST"}, git_server.seen.requests  # ref advertisement, then upload-pack
    assert git_server.seen.all_authorized(), git_server.seen.requests
    assert _intercepted(p, "POST", "git") and _intercepted(p, "GET", "git"), p.access_lines()


# --------------------------------------------------------------------------- pip

WHEEL_NAME = "authproxy_probe-1.0-py3-none-any.whl"


def _build_wheel(path: Path) -> bytes:
    """A minimal valid wheel for authproxy-probe 1.0 (PEP 427: METADATA, WHEEL, RECORD)."""
    dist = "authproxy_probe-1.0.dist-info"
    files = {
        "authproxy_probe/__init__.py": b'VALUE = "served through authproxy"\n',
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: authproxy-probe\nVersion: 1.0\nSummary: probe\n\n",
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: authproxy-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path.read_bytes()


async def test_pip_download_from_index_demanding_a_key(make_proxy, secret_env, tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path / WHEEL_NAME)
    sha = hashlib.sha256(wheel).hexdigest()

    async def root(request: web.Request) -> web.Response:
        return web.Response(
            text='<!DOCTYPE html><html><body><a href="authproxy-probe/">authproxy-probe</a></body></html>',
            content_type="text/html",
        )

    async def project(request: web.Request) -> web.Response:
        link = f'<a href="/files/{WHEEL_NAME}#sha256={sha}">{WHEEL_NAME}</a>'
        return web.Response(text=f"<!DOCTYPE html><html><body>{link}</body></html>", content_type="text/html")

    async def file(request: web.Request) -> web.Response:
        return web.Response(body=wheel, content_type="application/octet-stream")

    seen = Seen()
    app = web.Application(middlewares=[_demanding("X-API-Key", PIP_KEY, seen, 'ApiKey realm="index"')])
    app.router.add_get("/simple/", root)
    app.router.add_get("/simple/authproxy-probe/", project)
    app.router.add_get(f"/files/{WHEEL_NAME}", file)
    async with _https_server(app, tmp_path, "index") as (port, ca):
        index = f"https://127.0.0.1:{port}/simple/"
        assert await _direct_status(f"{index}authproxy-probe/", ca) == 401
        seen.requests.clear()
        secret_env("PIP_ROUTE_KEY", PIP_KEY)
        p = await _proxy_for(
            make_proxy, "index", port, ca, '{type: api_key, header: X-API-Key, value: "${PIP_ROUTE_KEY}"}'
        )
        p.secrets.add(PIP_KEY)

        # Only the variables `authproxy env` sets reach pip: no pip.conf, no
        # machine-wide PIP_* (find-links, extra indexes) that could serve it instead.
        env = {k: v for k, v in tool_env(p).items() if not k.startswith("PIP_") or k == "PIP_CERT"}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
        dest = tmp_path / "dl"
        rc, out, err = await _run(
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-d", str(dest),
            "--index-url", index, "authproxy-probe",
            env=env,
        )  # fmt: skip
    assert_no_secrets([out, err], p.secrets)
    assert rc == 0, out + err
    assert (dest / WHEEL_NAME).read_bytes() == wheel
    paths = [path for _, path, _ in seen.requests]
    assert "/simple/authproxy-probe/" in paths and f"/files/{WHEEL_NAME}" in paths, seen.requests
    assert seen.all_authorized(), seen.requests
    assert len(_intercepted(p, "GET", "index")) == len(seen.requests), p.access_lines()


# --------------------------------------------------------------------------- Node


async def _ensure_undici() -> None:
    """Installs tests/node's locked dependencies when they are missing (CI installs them up front)."""
    if (NODE_DIR / "node_modules" / "undici" / "package.json").exists():
        return
    npm = shutil.which("npm")
    assert npm, "npm is not on PATH: the Node test needs it to install undici"
    # The machine's own environment (its npm registry settings), not the proxy's.
    rc, out, err = await _run(npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", env=dict(os.environ))
    assert rc == 0, f"npm ci --prefix {NODE_DIR} failed:\n{out[-2000:]}\n{err[-2000:]}"


@pytest.mark.timeout(300)  # npm ci, when node_modules is missing, has its own 120 s
async def test_node_fetch_with_env_http_proxy_agent(make_proxy, secret_env, tmp_path: Path) -> None:
    await _ensure_undici()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"greeting": "hello from upstream", "path": request.path_qs})

    seen = Seen()
    app = web.Application(middlewares=[_demanding("Authorization", f"Bearer {NODE_TOKEN}", seen, "Bearer")])
    app.router.add_get("/node/{tail:.*}", hello)
    async with _https_server(app, tmp_path, "node") as (port, ca):
        url = f"https://127.0.0.1:{port}/node/hello?n=1"
        assert await _direct_status(url, ca) == 401
        seen.requests.clear()
        secret_env("NODE_ROUTE_TOKEN", NODE_TOKEN)
        p = await _proxy_for(make_proxy, "node", port, ca, '{type: bearer, token: "${NODE_ROUTE_TOKEN}"}')
        p.secrets.add(NODE_TOKEN)

        env = tool_env(p)
        assert env["NODE_EXTRA_CA_CERTS"] and env["HTTPS_PROXY"] == p.url
        rc, out, err = await _run("node", str(NODE_DIR / "fetch_via_proxy.mjs"), url, env=env)
    assert_no_secrets([out, err], p.secrets)
    assert rc == 0, err
    status, _, body = out.partition("\n")
    assert status == "200", out
    assert json.loads(body) == {"greeting": "hello from upstream", "path": "/node/hello?n=1"}
    assert seen.requests == [("GET", "/node/hello?n=1", True)]
    assert _intercepted(p, "GET", "node"), p.access_lines()
