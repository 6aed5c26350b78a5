"""The client matrix: unmodified clients through a real `authproxy run`, set up only by `authproxy env`.

One `authproxy run` process serves the whole module, with two routes whose
names do not resolve, so no client bypasses the proxy for them (clients skip
the proxy for NO_PROXY's loopback names, and Go, Java and Ruby for any
loopback address):

- `api.test`   -> `upstream: https://127.0.0.1:PORT` (its own trustme CA in `ca_file`),
- `plain.test` -> `upstream: http://127.0.0.1:PORT`,

each injecting its own bearer token, which its aiohttp upstream demands (401
without it). Every client runs as a child process whose environment is only
what `eval "$(authproxy env -c FILE)"` sets in an empty shell (PATH, a fresh
HOME), plus the client's documented step, and no insecure flag: an HTTPS
answer can only come through the proxy's interception, verified against the
bundle `authproxy env` names.

| client | step beyond `authproxy env` | GET | SSE | WebSocket |
|---|---|---|---|---|
| curl | none (`-N` for streaming) | x | x | |
| wget | `--ca-certificate=BUNDLE` | x | | |
| git | none (`git ls-remote`, smart HTTP) | x | | |
| urllib | none | x | x | |
| requests | none | x | x | |
| httpx | none | x | x | |
| aiohttp | `ClientSession(trust_env=True)` | x | x | x |
| websockets | none | | | x |
| Node 20 fetch (undici 7) | `setGlobalDispatcher(new EnvHttpProxyAgent())` | x | x | |
| Node 20 undici WebSocket | the same global dispatcher | | | x |
| Node `ws` | `{agent: new HttpsProxyAgent(process.env.HTTPS_PROXY)}` | | | x |
| Go net/http | none | x | x | |
| Ruby Net::HTTP | none | x | x | |
| PHP curl | `-d curl.cainfo=BUNDLE` (php.ini) | x | x | |
| Java 17 HttpClient | `-Dhttp(s).proxyHost/-Port`, `-Djavax.net.ssl.trustStore` (keytool `-keystore`) | x | x | x |

Each feature runs against both upstreams (`https://api.test`, `http://plain.test`;
`wss://`, `ws://`). What each case shows:

- GET: the upstream's answer (only given with the route's credential), and the
  upstream recorded the request as carrying it.
- SSE: incremental delivery. The upstream holds event n+1 until this test has
  read event n from the client's output, so a client (or proxy) that buffers
  never gets past event 1.
- WebSocket: an echo, then the close. With `timeouts.idle` and every client's
  own close timeout at 30 s, the upstream closes (1000 "bye") and ends the
  connection; the client must report the close frame and the connection's
  end within 10 s: an event, not a timeout. (aiohttp and Java end the
  connection themselves once the close frames are exchanged; websockets and
  undici wait for the server's end; `ws` half-closes and waits for the socket
  to close.)

The clients are small programs in tests/clients/ (Node's in tests/node/, next
to its package.json), each printing the same lines: `status N` and the body,
each event-stream line as it arrives, or the echo and `closed CODE REASON SECONDS`.

Every client call is bounded (15 s). Only Java may skip, when it is not
installed (apt could not install `default-jdk-headless`); any other missing
client fails. Node must be 20.18 or later (undici 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trustme
from aiohttp import web

from .conftest import assert_no_secrets
from .support.proc import ProxyProcess, start_proxy
from .test_tools import _git_env, _parse_cgi

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = Path(__file__).parent / "clients"
NODE_DIR = Path(__file__).parent / "node"

# Every client call is killed after CALL_TIMEOUT, well before any timeout that could end a
# WebSocket (timeouts.idle and the clients' own close timeouts are CLOSE_TIMEOUT): a close the
# proxy did not pass on cannot complete in time, so a call that exits 0 saw the close as an event.
CALL_TIMEOUT = 15.0
CLOSE_TIMEOUT = 30
assert CALL_TIMEOUT < CLOSE_TIMEOUT
SSE_EVENTS = 3

HTTPS_TOKEN = "matrix-https-bearer-4c1d9e07b2"
PLAIN_TOKEN = "matrix-plain-bearer-8e5a2f61c3"
HOST = {"https": "api.test", "http": "plain.test", "wss": "api.test", "ws": "plain.test"}
TRUSTSTORE_PASSWORD = "changeit"


# --------------------------------------------------------------------------- upstreams


@dataclass
class Seen:
    """One request an upstream received: its scheme, method, path and whether it carried the credential."""

    scheme: str
    method: str
    path: str
    authorized: bool


class Upstreams:
    """The HTTPS and the plain upstream, in a thread of their own (the clients run as blocking children)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.seen: list[Seen] = []
        self.ports: dict[str, int] = {}
        self.ca = tmp / "upstream-ca.pem"
        self._acks: dict[tuple[str, int], asyncio.Event] = {}
        self._runners: list[web.AppRunner] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._git_root = tmp / "git"
        self.commit = _make_repo(tmp / "work", self._git_root / "repo.git")
        exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True, timeout=60)
        self._git_backend = str(Path(exec_path.stdout.strip()) / "git-http-backend")

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def ack(self, key: str, n: int) -> None:
        """The test read event n of stream `key` from the client: the upstream may send n+1."""
        self._loop.call_soon_threadsafe(lambda: self._ack_event(key, n).set())

    def requests_for(self, path: str) -> list[Seen]:
        return [s for s in list(self.seen) if s.path == path]

    async def _start(self) -> None:
        ca = trustme.CA()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        ca.cert_pem.write_to_path(str(self.ca))
        for scheme, token, sslctx in (("https", HTTPS_TOKEN, ctx), ("http", PLAIN_TOKEN, None)):
            # auto_decompress=False: git's gzipped request bodies reach http-backend as sent.
            runner = web.AppRunner(self._app(scheme, token), access_log=None, auto_decompress=False)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=sslctx)
            await site.start()
            self.ports[scheme] = runner.addresses[0][1]
            self._runners.append(runner)

    async def _stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    def _ack_event(self, key: str, n: int) -> asyncio.Event:
        return self._acks.setdefault((key, n), asyncio.Event())

    def _app(self, scheme: str, token: str) -> web.Application:
        @web.middleware
        async def demand(request: web.Request, handler: Callable[..., object]) -> web.StreamResponse:
            ok = request.headers.getall("Authorization", []) == [f"Bearer {token}"]
            self.seen.append(Seen(scheme, request.method, request.path_qs, ok))
            if not ok:
                return web.Response(status=401, text="credential required\n")
            return await handler(request)  # type: ignore[misc, no-any-return]

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text=f"hello {request.query['client']} via {scheme}\n")

        app = web.Application(middlewares=[demand])
        app.router.add_get("/hello", hello)
        app.router.add_get("/sse", self._sse)
        app.router.add_get("/ws", self._ws)
        app.router.add_route("*", "/repo.git/{tail:.*}", self._git)
        return app

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        """Event n+1 only after the test has seen event n in the client's output."""
        key = request.query["key"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for n in range(1, SSE_EVENTS + 1):
            await resp.write(f"id: {n}\ndata: {key} event {n}\n\n".encode())
            if n < SSE_EVENTS:
                try:
                    await asyncio.wait_for(self._ack_event(key, n).wait(), CALL_TIMEOUT)
                except TimeoutError:
                    # Never acknowledged: the client did not show event n. End
                    # without the rest; the test reports what it saw.
                    break
        await resp.write_eof()
        return resp

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        """Echo; on `close`, the closing handshake from the server's side, then the end of the connection."""
        ws = web.WebSocketResponse(timeout=CLOSE_TIMEOUT)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is web.WSMsgType.TEXT and msg.data == "close":
                await ws.close(code=1000, message=b"bye")
            elif msg.type is web.WSMsgType.TEXT:
                await ws.send_str(f"echo:{msg.data}")
        return ws

    async def _git(self, request: web.Request) -> web.Response:
        """`git http-backend` (smart HTTP) as CGI (RFC 3875)."""
        body = await request.read()
        env = _git_env(
            {
                "GIT_PROJECT_ROOT": str(self._git_root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": request.path,
                "QUERY_STRING": request.query_string,
                "REQUEST_METHOD": request.method,
                "CONTENT_TYPE": request.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": "127.0.0.1",
                "SERVER_PROTOCOL": "HTTP/1.1",
            },
            base={"PATH": os.environ["PATH"], "HOME": str(self.tmp)},
        )
        for header, var in (("Content-Encoding", "HTTP_CONTENT_ENCODING"), ("Git-Protocol", "HTTP_GIT_PROTOCOL")):
            if header in request.headers:
                env[var] = request.headers[header]
        proc = await asyncio.create_subprocess_exec(
            self._git_backend,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(body), CALL_TIMEOUT)
        if proc.returncode and not out:
            return web.Response(status=500, text=err.decode(errors="replace"))
        status, headers, payload = _parse_cgi(out)
        return web.Response(status=status, headers=headers, body=payload)


def _make_repo(work: Path, bare: Path) -> str:
    """A one-commit repository, cloned bare for http-backend; returns the commit."""

    def git(*args: str, cwd: Path | None = None) -> str:
        r = subprocess.run(["git", *args], cwd=cwd, env=_git_env(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"git {' '.join(args)}: {r.stderr}"
        return r.stdout.strip()

    git("init", "-q", "-b", "main", str(work))
    (work / "README.txt").write_text("served through authproxy\n")
    git("add", "README.txt", cwd=work)
    git("commit", "-q", "-m", "first commit", cwd=work)
    git("clone", "-q", "--bare", str(work), str(bare))
    return git("rev-parse", "HEAD", cwd=work)


# --------------------------------------------------------------------------- the proxy and its environment


@dataclass
class Matrix:
    upstreams: Upstreams
    proxy: ProxyProcess
    config: Path
    env: dict[str, str]  # what `authproxy env` set, in an otherwise empty shell
    tmp: Path
    outputs: list[str] = field(default_factory=list)

    @property
    def bundle(self) -> str:
        return self.env["SSL_CERT_FILE"]

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://{HOST[scheme]}{path}"


def _config(tmp: Path, up: Upstreams) -> Path:
    path = tmp / "routes.yaml"
    path.write_text(
        f"""\
state_dir: {tmp / "state"}
timeouts: {{idle: {CLOSE_TIMEOUT}}}
routes:
  - name: api
    match: api.test
    upstream: https://127.0.0.1:{up.ports["https"]}
    ca_file: {up.ca}
    auth: {{type: bearer, token: "${{MATRIX_HTTPS_TOKEN}}"}}
  - name: plain
    match: plain.test
    upstream: http://127.0.0.1:{up.ports["http"]}
    auth: {{type: bearer, token: "${{MATRIX_PLAIN_TOKEN}}"}}
"""
    )
    return path


def _authproxy_env(config: Path, port: int, home: Path) -> dict[str, str]:
    """`eval "$(authproxy env -c FILE)"` in a shell that starts with PATH and HOME only; its environment after."""
    home.mkdir(exist_ok=True)
    authproxy = f"{shlex.quote(sys.executable)} -m authproxy"
    script = f'eval "$({authproxy} env -c {shlex.quote(str(config))} --listen 127.0.0.1:{port})" && env -0'
    r = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"},
        cwd=ROOT,  # `python -m authproxy` imports this checkout
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    env = dict(item.split("=", 1) for item in r.stdout.decode().split("\0") if "=" in item)
    for shell_own in ("PWD", "OLDPWD", "SHLVL", "_"):
        env.pop(shell_own, None)
    assert env["HTTPS_PROXY"] == f"http://127.0.0.1:{port}", env
    return env


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    tmp = tmp_path_factory.mktemp("matrix")
    up = Upstreams(tmp)
    up.start()
    config = _config(tmp, up)
    proxy = start_proxy(config, env={"MATRIX_HTTPS_TOKEN": HTTPS_TOKEN, "MATRIX_PLAIN_TOKEN": PLAIN_TOKEN})
    try:
        m = Matrix(up, proxy, config, _authproxy_env(config, proxy.port, tmp / "home"), tmp)
        yield m
    finally:
        proxy.stop()
        up.stop()
    assert_no_secrets([proxy.stderr_text(), *m.outputs], {HTTPS_TOKEN, PLAIN_TOKEN})


# --------------------------------------------------------------------------- running a client


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def text(self) -> str:
        return f"exit {self.rc}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}"


def run(m: Matrix, argv: list[str], on_line: Callable[[str], None] | None = None) -> Result:
    """Runs one client with the matrix's environment, line by line, killed after CALL_TIMEOUT."""
    proc = subprocess.Popen(
        argv,
        env=m.env,
        cwd=m.tmp,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    lines: queue.Queue[str | None] = queue.Queue()
    err: list[str] = []

    def pump_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def pump_err() -> None:
        assert proc.stderr is not None
        err.append(proc.stderr.read())

    readers = [threading.Thread(target=t, daemon=True) for t in (pump_out, pump_err)]
    for t in readers:
        t.start()
    out: list[str] = []
    deadline = time.monotonic() + CALL_TIMEOUT
    with contextlib.suppress(queue.Empty):
        while (line := lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            out.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
    timed_out = proc.poll() is None and time.monotonic() >= deadline
    try:
        proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    if timed_out:
        proc.kill()
        proc.wait(5)
    for t in readers:
        t.join(5)
    while not lines.empty():  # what a killed client wrote after the deadline
        if (rest := lines.get_nowait()) is not None:
            out.append(rest)
    result = Result(proc.returncode, "".join(out), "".join(err))
    m.outputs += [result.out, result.err]
    assert_no_secrets([result.out, result.err], {HTTPS_TOKEN, PLAIN_TOKEN})
    if timed_out:
        raise AssertionError(f"{argv[0]} did not finish within {CALL_TIMEOUT:.0f} s\n{result.text()}")
    return result


# --------------------------------------------------------------------------- the clients


class Tools:
    """Each client's command line; the ones that need building are built once per module."""

    def __init__(self, m: Matrix) -> None:
        self.m = m
        self._go: Path | str | None = None
        self._java: list[str] | str | None = None
        self._node_checked: str | None = None

    def argv(self, client: str, feature: str, url: str) -> list[str]:
        m = self.m
        if client == "curl":
            need("curl", "curl")
            if feature == "sse":
                return ["curl", "-sSN", "--max-time", str(CALL_TIMEOUT), url]
            return ["curl", "-sS", "--max-time", str(CALL_TIMEOUT), "-w", "\nstatus %{http_code}\n", url]
        if client == "wget":
            need("wget", "wget")
            return ["wget", "-q", "-O", "-", "--tries=1", f"--timeout={CALL_TIMEOUT:.0f}",
                    f"--ca-certificate={m.bundle}", url]  # fmt: skip
        if client in ("urllib", "requests", "httpx", "aiohttp", "websockets"):
            return [sys.executable, str(CLIENTS / "py_client.py"), client, feature, url]
        if client in ("node-fetch", "node-undici-ws", "node-ws"):
            self.node()
            mode = {"node-fetch": feature, "node-undici-ws": "undici-ws", "node-ws": "ws"}[client]
            return ["node", str(NODE_DIR / "clients.mjs"), mode, url]
        if client == "go":
            return [str(self.go()), feature, url]
        if client == "ruby":
            need("ruby", "ruby")
            return ["ruby", str(CLIENTS / "net_http.rb"), feature, url]
        if client == "php":
            need("php", "php-cli")
            return ["php", "-d", f"curl.cainfo={m.bundle}", str(CLIENTS / "curl.php"), feature, url]
        if client == "java":
            return [*self.java(), feature, url]
        raise AssertionError(f"unknown client {client}")

    def node(self) -> None:
        if self._node_checked is None:
            self._node_checked = _check_node()
        if self._node_checked:
            pytest.fail(self._node_checked, pytrace=False)

    def go(self) -> Path:
        if self._go is None:
            self._go = _build_go(self.m.tmp)
        if isinstance(self._go, str):
            pytest.fail(self._go, pytrace=False)
        return self._go

    def java(self) -> list[str]:
        if self._java is None:
            self._java = _build_java(self.m)
        if isinstance(self._java, str):
            pytest.skip(self._java)
        return self._java


def need(command: str, package: str) -> None:
    if shutil.which(command) is None:
        pytest.fail(f"{command} is not installed (`.ci/run` installs the apt package {package}).", pytrace=False)


def _check_node() -> str:
    """An empty string when Node is 20.18 or later and tests/node's packages are installed; else why not."""
    if shutil.which("node") is None:
        return "node is not installed (`.ci/run` installs the apt package nodejs)."
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    major, minor = (int(x) for x in version.lstrip("v").split(".")[:2])
    if (major, minor) < (20, 18):
        return f"Node {version} is too old: undici 7 needs Node 20.18 or later."
    packages = ("undici", "ws", "https-proxy-agent")
    if all((NODE_DIR / "node_modules" / p / "package.json").exists() for p in packages):
        return ""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed (`.ci/run` installs the apt package npm)."
    r = subprocess.run(
        [npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return "" if r.returncode == 0 else f"npm ci --prefix {NODE_DIR} failed:\n{r.stderr[-2000:]}"


def _build_go(tmp: Path) -> Path | str:
    """The Go client, built once (Debian's golang-go); a string says why it could not be."""
    if shutil.which("go") is None:
        return "go is not installed (`.ci/run` installs the apt package golang-go)."
    out = tmp / "goclient"
    env = {**os.environ, "GOFLAGS": "", "GO111MODULE": "off", "CGO_ENABLED": "0"}
    r = subprocess.run(
        ["go", "build", "-o", str(out), str(CLIENTS / "goclient.go")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out if r.returncode == 0 else f"go build failed:\n{r.stderr[-2000:]}"


def _build_java(m: Matrix) -> list[str] | str:
    """javac once, and the user's documented steps: a truststore holding the proxy's CA, the proxy properties.

    A string (the skip reason) when no JDK is installed: Java is the one
    client allowed to be missing, when apt cannot install it.
    """
    missing = [c for c in ("java", "javac", "keytool") if shutil.which(c) is None]
    if missing:
        return f"Java is not installed ({', '.join(missing)} missing; apt could not install default-jdk-headless)."
    classes = m.tmp / "java"
    r = subprocess.run(
        ["javac", "-d", str(classes), str(CLIENTS / "JavaClient.java")], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, f"javac failed:\n{r.stderr[-2000:]}"
    # `authproxy ca` prints the CA's path on its first line.
    ca = subprocess.run(
        [sys.executable, "-m", "authproxy", "ca", "-c", str(m.config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()[0]
    store = m.tmp / "truststore.p12"
    r = subprocess.run(
        ["keytool", "-importcert", "-noprompt", "-alias", "authproxy", "-file", ca,
         "-keystore", str(store), "-storepass", TRUSTSTORE_PASSWORD],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, f"keytool failed:\n{r.stdout}{r.stderr}"
    props: list[str] = []
    for scheme in ("http", "https"):
        proxy = urlsplit(m.env[f"{scheme.upper()}_PROXY"])
        props += [f"-D{scheme}.proxyHost={proxy.hostname}", f"-D{scheme}.proxyPort={proxy.port}"]
    props += [f"-Djavax.net.ssl.trustStore={store}", f"-Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}"]
    return ["java", *props, "-cp", str(classes), "JavaClient"]


@pytest.fixture(scope="module")
def tools(matrix: Matrix) -> Tools:
    return Tools(matrix)


GET_CLIENTS = ["curl", "wget", "urllib", "requests", "httpx", "aiohttp", "node-fetch", "go", "ruby", "php", "java"]
SSE_CLIENTS = ["curl", "urllib", "requests", "httpx", "aiohttp", "node-fetch", "go", "ruby", "php", "java"]
WS_CLIENTS = ["websockets", "aiohttp", "node-undici-ws", "node-ws", "java"]


# --------------------------------------------------------------------------- the cases


def test_only_the_proxy_makes_the_upstreams_answer(matrix: Matrix) -> None:
    """The controls: without the credential each upstream refuses, and the bundle the clients
    trust does not verify the HTTPS upstream itself, so a client's success proves both the
    interception and the injection."""
    up = matrix.upstreams
    own_ca = ssl.create_default_context(cafile=str(up.ca))
    for scheme, verify in (("https", own_ca), ("http", True)):
        direct = httpx.get(
            f"{scheme}://127.0.0.1:{up.ports[scheme]}/hello?client=direct", verify=verify, trust_env=False
        )
        assert direct.status_code == 401, direct.text
    bundle = ssl.create_default_context(cafile=matrix.bundle)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://127.0.0.1:{up.ports['https']}/hello?client=direct", verify=bundle, trust_env=False)


@pytest.mark.parametrize("scheme", ["https", "http"])
@pytest.mark.parametrize("client", GET_CLIENTS)
def test_get_with_credential(matrix: Matrix, tools: Tools, client: str, scheme: str) -> None:
    marker = f"{client}-{scheme}"
    path = f"/hello?client={marker}"
    result = run(matrix, tools.argv(client, "get", matrix.url(scheme, path)))
    assert result.rc == 0, result.text()
    assert f"hello {marker} via {scheme}" in result.out.splitlines(), result.text()
    if client != "wget":  # wget prints the body only (and exits 8 on any error status)
        assert "status 200" in result.out.splitlines(), result.text()
    seen = matrix.upstreams.requests_for(path)
    assert seen and all(s.authorized and s.scheme == scheme for s in seen), seen


@pytest.mark.parametrize("scheme", ["https", "http"])
@pytest.mark.parametrize("client", SSE_CLIENTS)
def test_sse_arrives_event_by_event(matrix: Matrix, tools: Tools, client: str, scheme: str) -> None:
    key = f"{client}-{scheme}"
    path = f"/sse?key={key}"
    argv = tools.argv(client, "sse", matrix.url(scheme, path))
    events: list[int] = []

    def on_line(line: str) -> None:
        if found := re.search(rf"{re.escape(key)} event (\d+)", line):
            events.append(int(found.group(1)))
            matrix.upstreams.ack(key, events[-1])

    result = run(matrix, argv, on_line)
    assert events == list(range(1, SSE_EVENTS + 1)), result.text()
    assert result.rc == 0, result.text()
    seen = matrix.upstreams.requests_for(path)
    assert seen and all(s.authorized and s.scheme == scheme for s in seen), seen


@pytest.mark.parametrize("scheme", ["wss", "ws"])
@pytest.mark.parametrize("client", WS_CLIENTS)
def test_websocket_echo_and_close(matrix: Matrix, tools: Tools, client: str, scheme: str) -> None:
    path = f"/ws?client={client}-{scheme}"
    result = run(matrix, tools.argv(client, "ws", matrix.url(scheme, path)))
    assert result.rc == 0, result.text()
    assert "echo:hello" in result.out.splitlines(), result.text()
    closed = re.search(r"^closed (\d+) (\S*) ([\d.]+)(?: clean=(\w+))?$", result.out, re.MULTILINE)
    assert closed, result.text()
    code, reason, _, clean = closed.groups()  # the seconds are printed for a reader of a failure
    assert (code, reason) == ("1000", "bye"), result.text()  # the upstream's close frame, not a lost connection
    assert clean in (None, "true"), result.text()
    upstream = "https" if scheme == "wss" else "http"
    seen = matrix.upstreams.requests_for(path)
    assert seen and all(s.authorized and s.scheme == upstream for s in seen), seen


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_git_ls_remote(matrix: Matrix, scheme: str) -> None:
    need("git", "git")
    url = matrix.url(scheme, "/repo.git")
    # No prompt for a password: a 401 must fail the call, not wait for input.
    env_argv = ["env", "GIT_TERMINAL_PROMPT=0", "git", "ls-remote", url]
    result = run(matrix, env_argv)
    assert result.rc == 0, result.text()
    refs = {name: sha for sha, _, name in (line.partition("\t") for line in result.out.splitlines())}
    assert refs.get("refs/heads/main") == matrix.upstreams.commit, result.text()
    seen = [s for s in matrix.upstreams.seen if s.path.startswith("/repo.git/") and s.scheme == scheme]
    assert seen and all(s.authorized for s in seen), seen
