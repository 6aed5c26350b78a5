"""Property-based fuzzing (hypothesis) of the request path and of the config loader.

Request path: random bytes, and random-but-plausible requests (request lines,
header names and values with CR/LF/NUL/unicode, bodies with random framing,
pipelining, CONNECT followed by junk, requests inside an intercepted TLS
tunnel) are written to a running in-process proxy on raw sockets. Every
exchange must end within a bound, the proxy must not crash or log an internal
error, a normal request must still succeed at the end, and no route secret may
appear in any response or in the proxy's log.

Config loader: random YAML text and bytes, random structures built from the
real key names, and line-level mutations of a valid config: ``load`` either
returns a ``Config`` or raises ``ConfigError`` (nothing else), and no secret
set through an environment variable appears in what it says.

Runs are derandomized (repeatable in CI) and bounded (``max_examples``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authproxy.config import Config, load
from authproxy.schema.problems import ConfigError

from .conftest import Proxy, assert_no_secrets, secret_forms

SECRETS = {
    "FUZZ_KEY": "fz-key-Qm9vYmFy-7781",
    "FUZZ_PW": "fz-pw-Zx81!wq",
    "FUZZ_QKEY": "fz-qkey-31415-xyz",
    "FUZZ_TOKEN": "fz-token-e2718-abc",
}

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)


# =============================================================================
# (a) the request path
# =============================================================================


@dataclass
class Quiet:
    """An upstream (plain and TLS) that never echoes what it got: any secret in a response is a leak."""

    port: int = 0
    tls_port: int = 0
    ca_path: Path | None = None
    hits: int = 0
    authorized: int = 0


def _quiet_app(q: Quiet) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        q.hits += 1
        auth = request.headers.get("X-Key") == SECRETS["FUZZ_KEY"] or request.query.get("key") == SECRETS["FUZZ_QKEY"]
        auth = auth or request.headers.get("Authorization", "").startswith(("Basic ", "Bearer "))
        q.authorized += bool(auth)
        return web.json_response({"n": size, "method": request.method, "auth": bool(auth)})

    app = web.Application(client_max_size=1 << 24)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
async def quiet(tmp_path: Path) -> AsyncIterator[Quiet]:
    q = Quiet()
    runners = []
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    q.ca_path = tmp_path / "quiet-ca.pem"
    ca.cert_pem.write_to_path(str(q.ca_path))
    for tls in (None, ctx):
        runner = web.AppRunner(_quiet_app(q), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        port = runner.addresses[0][1]
        if tls is None:
            q.port = port
        else:
            q.tls_port = port
        runners.append(runner)
    yield q
    for r in runners:
        await r.cleanup()


class _All(logging.Handler):
    """Every record from every logger (asyncio, aiohttp, authproxy) while the fuzz runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> list[str]:
        out = []
        for r in self.records:
            text = f"{r.name} {r.levelname} {r.getMessage()}"
            if r.exc_info:
                text += "\n" + logging.Formatter().formatException(r.exc_info)
            out.append(text)
        return out


@pytest.fixture
def all_logs() -> Iterator[_All]:
    h = _All()
    root = logging.getLogger()
    old = root.level
    root.addHandler(h)
    root.setLevel(logging.DEBUG)
    yield h
    root.removeHandler(h)
    root.setLevel(old)


@pytest.fixture
async def fuzz_proxy(make_proxy, secret_env, quiet: Quiet) -> Proxy:
    for name, value in SECRETS.items():
        secret_env(name, value)
    up, tls = f"127.0.0.1:{quiet.port}", f"127.0.0.1:{quiet.tls_port}"
    p = await make_proxy(
        f"""
        unmatched: deny
        limits: {{max_header_bytes: 16KiB}}
        timeouts: {{client_header: 1, idle: 0.5, upstream_headers: 2, tls_handshake: 1, connect: 2}}
        routes:
          - name: fz-plain
            match: {up}
            auth: {{type: api_key, header: X-Key, value: "${{FUZZ_KEY}}"}}
          - name: fz-basic
            match: {up}/basic
            auth: {{type: basic, username: fz, password: "${{FUZZ_PW}}"}}
          - name: fz-query
            match: {up}/q
            auth: {{type: api_key, query: key, value: "${{FUZZ_QKEY}}"}}
          - name: fz-gw
            gateway: /gw
            upstream: http://{up}
            auth: {{type: bearer, token: "${{FUZZ_TOKEN}}"}}
          - name: fz-tls
            match: {tls}
            ca_file: {quiet.ca_path}
            auth: {{type: api_key, header: X-Key, value: "${{FUZZ_KEY}}"}}
        """
    )
    p.secrets.update(SECRETS.values())
    return p


class Hang(AssertionError):
    pass


EXCHANGE_BOUND = 6.0  # upstream_headers (2 s) + idle (1 s) + slack: nothing may take longer


def _recv_all(s: socket.socket, deadline: float, what: bytes) -> bytes:
    out = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Hang(f"no close within {EXCHANGE_BOUND} s; sent {what[:300]!r}; got {out[:300]!r}")
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            raise Hang(f"no close within {EXCHANGE_BOUND} s; sent {what[:300]!r}; got {out[:300]!r}") from None
        except (ssl.SSLError, OSError):
            return out
        if not chunk:
            return out
        out += chunk


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read until the proxy closes; bounded."""
    deadline = time.monotonic() + EXCHANGE_BOUND
    with socket.create_connection(("127.0.0.1", port), timeout=EXCHANGE_BOUND) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return _recv_all(s, deadline, data)


def tunnel_exchange(port: int, authority: str, ca_file: str, data: bytes) -> bytes:
    """CONNECT to an intercepted authority, TLS with the proxy's CA, then ``data`` inside."""
    deadline = time.monotonic() + EXCHANGE_BOUND
    with socket.create_connection(("127.0.0.1", port), timeout=EXCHANGE_BOUND) as raw:
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = raw.recv(4096)
            if not chunk:
                break
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        ctx = ssl.create_default_context(cafile=ca_file)
        with ctx.wrap_socket(raw, server_hostname=authority.rsplit(":", 1)[0]) as s:
            with contextlib.suppress(OSError):
                s.sendall(data)
            # No TLS half-close: the proxy answers, then closes on `Connection: close` or after `idle`.
            return _recv_all(s, deadline, data)


# -- strategies ----------------------------------------------------------------

HEADER_NAMES = [
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Expect",
    "Upgrade",
    "Proxy-Authorization",
    "Authorization",
    "X-Key",
    "TE",
    "Trailer",
    "Keep-Alive",
    "Proxy-Connection",
    "Cookie",
    "Content-Type",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "X-Fuzz",
    "content-length",
    "TRANSFER-ENCODING",
]
HEADER_VALUES = [
    "chunked",
    "close",
    "keep-alive",
    "100-continue",
    "websocket",
    "0",
    "5",
    "-1",
    "1e3",
    "  7  ",
    "5, 5",
    "5, 6",
    "gzip, chunked",
    "chunked, identity",
    "identity",
    "Upgrade",
    "x-key",
    "trailers",
    "Basic Zm9vOmJhcg==",
    "127.0.0.1",
    "[::1]:80",
    "dGhlIHNhbXBsZSBub25jZQ==",
    "13",
    "",
]
WEIRD = ["\r", "\n", "\r\n", "\x00", "\t", " ", "\x0b", "\x7f", "é", "€", "\u2028", "\U0001f600", ":", ",", ";", "\\"]
METHODS = ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE", "PRI", "get", "G ET"]
VERSIONS = ["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "http/1.1", "HTTP/9.9", "", "HTTP/1.1 extra"]
PATH_BITS = [
    "",
    "/",
    "/a",
    "/basic",
    "/basic/x",
    "/q",
    "/q?key=mine",
    "/gw",
    "/gw/",
    "/gw/x?y=1",
    "/ws",
    "/..",
    "/%2F",
    "/%2e%2e/",
    "/a\\b",
    "/a b",
    "//double",
    "/?",
    "/#frag",
    "/a;b",
    "/%00",
    "/é",
    "?only=query",
]


def _text(max_size: int = 24) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=max_size),
        st.text(max_size=max_size),
        st.lists(st.sampled_from(WEIRD), max_size=4).map("".join),
    )


@dataclass
class Ports:
    up: int
    tls: int
    proxy: int

    def authorities(self) -> list[str]:
        return [
            f"127.0.0.1:{self.up}",
            f"127.0.0.1:{self.tls}",
            f"localhost:{self.up}",
            f"[::1]:{self.up}",
            f"127.0.0.1:{self.proxy}",
            "example.invalid",
            "example.invalid:8080",
            "127.0.0.1:1",
            "[::1",
            f"user:pw@127.0.0.1:{self.up}",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "",
            "[fe80::1%25lo]:80",
        ]


CLEAN_METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]
CLEAN_PATHS = ["/", "/a", "/a/b?c=d", "/basic", "/basic/x", "/q", "/q?key=mine&x=1", "/v1/things", "/x;y"]
CLEAN_HEADERS = [
    ("Accept", "*/*"),
    ("User-Agent", "fuzz/1"),
    ("X-Key", "client-sent"),
    ("Authorization", "Bearer client"),
    ("Connection", "keep-alive"),
    ("Connection", "close"),
    ("Proxy-Connection", "keep-alive"),
    ("TE", "trailers"),
    ("Cookie", "a=b"),
    ("Content-Type", "text/plain"),
    ("Expect", "100-continue"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade, X-Drop"),
    ("X-Drop", "1"),
    ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
]


def request_strategy(ports: Ports, *, inside_tunnel: bool = False) -> st.SearchStrategy[bytes]:
    """Requests at three levels of damage: clean (should mostly be served), dirty (one thing
    wrong), wild (every part random)."""
    up = f"127.0.0.1:{ports.up}"
    authority = st.one_of(st.sampled_from(ports.authorities()), _text(16))
    path = st.one_of(st.sampled_from(PATH_BITS), _text(20).map(lambda t: "/" + t))
    scheme = st.sampled_from(["http://", "https://", "ws://", "HTTP://", "ftp://", ""])
    wild_target = st.one_of(
        st.tuples(scheme, authority, path).map("".join),  # absolute-form
        path,  # origin-form (gateway, or inside a tunnel)
        st.sampled_from(["/gw", "/gw/"]).flatmap(lambda g: path.map(lambda p: g + p.lstrip("/"))),
        authority,  # authority-form (CONNECT)
        st.just("*"),
        _text(30),
    )
    clean_path = st.sampled_from(CLEAN_PATHS)
    if inside_tunnel:
        clean_target = st.one_of(clean_path, clean_path.map(lambda p: f"https://127.0.0.1:{ports.tls}{p}"))
    else:
        clean_target = st.one_of(
            clean_path.map(lambda p: f"http://{up}{p}"),
            clean_path.map(lambda p: "/gw" + p),
            clean_path.map(lambda p: f"http://example.invalid{p}"),  # unmatched: 403 under deny
        )

    @st.composite
    def one(draw: Callable[..., Any]) -> bytes:
        level = draw(st.sampled_from(["clean", "clean", "dirty", "dirty", "wild"]))
        wild = level == "wild"
        if wild:
            method = draw(st.one_of(st.sampled_from(METHODS), _text(8)))
            line = f"{method} {draw(wild_target)} {draw(st.sampled_from(VERSIONS))}"
            if draw(st.integers(0, 10)) == 0:
                line = draw(_text(40))
        else:
            method = draw(st.sampled_from(CLEAN_METHODS))
            line = f"{method} {draw(clean_target)} {draw(st.sampled_from(['HTTP/1.1'] * 5 + ['HTTP/1.0']))}"
        headers: list[tuple[str, str]] = []
        if draw(st.integers(0, 3)) > 0:
            headers.append(("Host", draw(authority) if wild else up))
        if wild:
            pairs = st.tuples(
                st.one_of(st.sampled_from(HEADER_NAMES), _text(12)),
                st.one_of(st.sampled_from(HEADER_VALUES), _text(30)),
            )
        else:
            pairs = st.sampled_from(CLEAN_HEADERS)
        headers += draw(st.lists(pairs, max_size=6))
        body = draw(st.binary(max_size=300))
        framings = ["none", "cl", "cl-wrong", "chunked", "chunked-bad", "raw"] if wild else ["none", "cl", "chunked"]
        framing = draw(st.sampled_from(framings))
        tail = b""
        if framing == "cl":
            headers.append(("Content-Length", str(len(body))))
            tail = body
        elif framing == "cl-wrong":
            headers.append(("Content-Length", str(max(0, len(body) + draw(st.integers(-20, 20))))))
            tail = body
        elif framing in ("chunked", "chunked-bad"):
            headers.append(("Transfer-Encoding", "chunked"))
            pieces = [body[i : i + 50] for i in range(0, len(body), 50)]
            tail = b"".join(b"%x\r\n" % len(c) + c + b"\r\n" for c in pieces if c) + b"0\r\n\r\n"
            if framing == "chunked-bad":
                cut = draw(st.integers(0, len(tail)))
                tail = tail[:cut] + draw(st.binary(max_size=12)) + tail[cut:]
        elif framing == "raw":
            tail = body
        if inside_tunnel:
            headers.append(("Connection", "close"))
        eol, sep = "\r\n", ": "
        if level == "dirty":
            # Exactly one thing wrong: a weird character somewhere, a bad separator or line end, a stray header.
            what = draw(st.sampled_from(["char-in-value", "char-in-name", "char-in-line", "eol", "sep", "header"]))
            weird = draw(st.one_of(st.sampled_from(WEIRD), _text(6)))
            if what == "char-in-value" and headers:
                i = draw(st.integers(0, len(headers) - 1))
                n, v = headers[i]
                k = draw(st.integers(0, len(v)))
                headers[i] = (n, v[:k] + weird + v[k:])
            elif what == "char-in-name" and headers:
                i = draw(st.integers(0, len(headers) - 1))
                n, v = headers[i]
                k = draw(st.integers(0, len(n)))
                headers[i] = (n[:k] + weird + n[k:], v)
            elif what == "char-in-line":
                k = draw(st.integers(0, len(line)))
                line = line[:k] + weird + line[k:]
            elif what == "eol":
                eol = draw(st.sampled_from(["\n", "\r", "\n\r", "\r\r\n"]))
            elif what == "sep":
                sep = draw(st.sampled_from([":", " : ", ":\t", " :", ":\x0b"]))
            else:
                headers.insert(
                    draw(st.integers(0, len(headers))),
                    (draw(st.sampled_from(HEADER_NAMES)), draw(st.sampled_from(HEADER_VALUES))),
                )
        elif wild:
            eol = draw(st.sampled_from(["\r\n"] * 8 + ["\n", "\r", "\n\r", "\r\r\n"]))
            sep = draw(st.sampled_from([": "] * 8 + [":", " : ", ":\t"]))
        head = eol.join([line] + [n + sep + v for n, v in headers]) + eol + eol
        encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1"]))
        return head.encode(encoding, "replace") + tail

    return st.lists(one(), min_size=1, max_size=3).map(b"".join)


def normal_request(ports: Ports) -> bytes:
    return f"GET http://127.0.0.1:{ports.up}/after HTTP/1.1\r\nHost: 127.0.0.1:{ports.up}\r\nConnection: close\r\n\r\n".encode()


def _check_response(resp: bytes, secrets: set[str]) -> None:
    text = resp.decode("latin-1")
    for s in secrets:
        for form in secret_forms(s):
            assert form not in text, f"a secret reached a client (form {form[:4]}…): {resp[:300]!r}"
    if resp and resp.startswith(b"HTTP/1.1 5"):
        assert not resp.startswith(b"HTTP/1.1 500"), f"an internal error answered: {resp[:400]!r}"


@dataclass
class LoopWatch:
    errors: list[str] = field(default_factory=list)


@pytest.fixture
async def loop_watch() -> AsyncIterator[LoopWatch]:
    """Exceptions nobody handled on the proxy's loop (tasks that died, callbacks that raised)."""
    loop = asyncio.get_running_loop()
    w = LoopWatch()
    old = loop.get_exception_handler()

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        w.errors.append(f"{context.get('message')}: {context.get('exception')!r}")

    loop.set_exception_handler(handler)
    yield w
    loop.set_exception_handler(old)


async def _after(p: Proxy, ports: Ports, all_logs: _All, loop_watch: LoopWatch) -> None:
    resp = await asyncio.to_thread(exchange, p.port, normal_request(ports))
    assert resp.startswith(b"HTTP/1.1 200"), f"the proxy stopped serving: {resp[:300]!r}"
    assert json.loads(resp.split(b"\r\n\r\n", 1)[1])["auth"] is True
    internal = [line for line in p.lines() if "internal error" in line or "Traceback" in line]
    assert not internal, "\n".join(internal[:5])
    errors = [t for t in all_logs.texts() if t.split(" ", 2)[0].startswith("authproxy") and " ERROR " in t]
    assert not errors, "\n".join(errors[:5])
    assert not loop_watch.errors, "\n".join(loop_watch.errors[:5])
    assert_no_secrets(p.lines() + all_logs.texts(), p.secrets)


async def test_fuzz_random_bytes(fuzz_proxy: Proxy, quiet: Quiet, all_logs: _All, loop_watch: LoopWatch) -> None:
    p = fuzz_proxy
    ports = Ports(quiet.port, quiet.tls_port, p.port)
    prefixes = st.sampled_from(
        [
            b"",
            b"GET ",
            b"POST http://127.0.0.1:%d/ HTTP/1.1\r\n" % ports.up,
            b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % ports.tls,
        ]
    )

    @settings(FUZZ, max_examples=300)
    @given(prefix=prefixes, junk=st.binary(max_size=4096))
    def prop(prefix: bytes, junk: bytes) -> None:
        _check_response(exchange(p.port, prefix + junk), p.secrets)

    await asyncio.to_thread(prop)
    await _after(p, ports, all_logs, loop_watch)


async def test_fuzz_plausible_requests(fuzz_proxy: Proxy, quiet: Quiet, all_logs: _All, loop_watch: LoopWatch) -> None:
    p = fuzz_proxy
    ports = Ports(quiet.port, quiet.tls_port, p.port)
    statuses: dict[int, int] = {}

    @settings(FUZZ, max_examples=400)
    @given(data=request_strategy(ports))
    def prop(data: bytes) -> None:
        resp = exchange(p.port, data)
        _check_response(resp, p.secrets)
        if resp.startswith(b"HTTP/1.1 "):
            code = int(resp[9:12])
            statuses[code] = statuses.get(code, 0) + 1

    await asyncio.to_thread(prop)
    await _after(p, ports, all_logs, loop_watch)
    # The generator reaches the pipeline, not only the parser's front door.
    assert quiet.hits > 10, (quiet.hits, statuses)
    assert statuses.get(400, 0) > 10, statuses


async def test_fuzz_inside_an_intercepted_tunnel(
    fuzz_proxy: Proxy, quiet: Quiet, all_logs: _All, loop_watch: LoopWatch
) -> None:
    p = fuzz_proxy
    ports = Ports(quiet.port, quiet.tls_port, p.port)
    ca = p.runtime.ca
    assert ca is not None
    authority = f"127.0.0.1:{quiet.tls_port}"

    # Junk ends with an empty line, so it is a (bad) request head rather than a 1 s wait for the rest of one.
    junk = st.binary(max_size=2000).map(lambda b: b + b"\r\n\r\n")

    @settings(FUZZ, max_examples=80)
    @given(data=st.one_of(request_strategy(ports, inside_tunnel=True), junk))
    def prop(data: bytes) -> None:
        _check_response(tunnel_exchange(p.port, authority, str(ca.files.cert), data), p.secrets)

    await asyncio.to_thread(prop)
    await _after(p, ports, all_logs, loop_watch)


# =============================================================================
# (b) the config loader
# =============================================================================

CFG_SECRETS = {
    "FZC_API_KEY": "fzc-apikey-Hq93-Lm",
    "FZC_CLIENT_SECRET": "fzc-client-secret-82kd",
    "FZC_PASSWORD": "fzc-password-pQ7!",
    "FZC_REFRESH": "fzc-refresh-tok-0xa1",
}
CFG_ENV = {**CFG_SECRETS, "FZC_CRLF": "crlf-value\r\nX-Evil: 1", "FZC_HOST": "api.example.com"}

VALID = textwrap.dedent(
    """\
    listen: 127.0.0.1:8080
    state_dir: ./state
    unmatched: tunnel
    limits: {max_header_bytes: 64KiB, max_connections: 100, replay_body: 1MiB}
    timeouts: {connect: 5, client_header: 10, idle: 30, upstream_headers: 30, token_fetch: 10, drain: 5}
    routes:
      - name: api
        match: ${FZC_HOST}
        auth: {type: api_key, header: X-API-Key, value: ${FZC_API_KEY}}
      - name: billing
        match: "*.billing.example/v2"
        upstream: https://api.billing.example
        verify: true
        auth:
          type: client_credentials
          token_url: https://id.billing.example/connect/token
          client_id: billing-client
          client_secret: ${FZC_CLIENT_SECRET}
          client_auth: client_secret_post
          body: form
          scope: invoices.read
          extra: {resource: "urn:billing"}
      - name: crm
        match: api.crm.example:8443
        auth:
          type: password
          token_url: https://api.crm.example/oauth/token
          client_id: crm
          username: carol
          password: "${FZC_PASSWORD}"
      - name: xero
        match: api.xero.com
        auth:
          type: refresh_token
          token_url: https://identity.xero.com/connect/token
          client_id: xero
          refresh_token: ${FZC_REFRESH}
      - name: reports
        gateway: /reports
        upstream: https://reports.example
        auth: {type: basic, username: ci, password: "${FZC_PASSWORD}"}
      - name: helper
        match: "*.googleapis.com"
        auth: {type: command, argv: [gcloud, auth, print-access-token], ttl: 300, timeout: 30}
    """
)

KEYS = [
    "listen",
    "state_dir",
    "unmatched",
    "ca_cert",
    "ca_key",
    "extra_ca_file",
    "limits",
    "timeouts",
    "routes",
    "admin",
    "proxy_auth",
    "bws",
    "name",
    "match",
    "gateway",
    "upstream",
    "ca_file",
    "verify",
    "allow",
    "auth",
    "type",
    "header",
    "prefix",
    "value",
    "query",
    "token",
    "token_file",
    "username",
    "password",
    "token_url",
    "client_id",
    "client_secret",
    "client_auth",
    "body",
    "scope",
    "audience",
    "extra",
    "refresh_token",
    "issuer",
    "argv",
    "ttl",
    "timeout",
    "json_field",
    "expiry_field",
    "refresh_skew",
    "default_ttl",
    "max_header_bytes",
    "max_connections",
    "replay_body",
    "max_body_chunk",
    "connect",
    "client_header",
    "idle",
    "upstream_headers",
    "token_fetch",
    "drain",
    "tls_handshake",
    "max_headers",
    "max_request_line",
    "methods",
    "paths",
    "users",
    "realm",
    "region",
    "access_token",
    "identity_url",
    "api_url",
    "redirect_port",
    "redirect_path",
    "authorization_url",
]
AUTH_KEYS = [
    "header",
    "prefix",
    "value",
    "query",
    "token",
    "token_file",
    "username",
    "password",
    "token_url",
    "client_id",
    "client_secret",
    "client_auth",
    "body",
    "scope",
    "audience",
    "extra",
    "refresh_token",
    "issuer",
    "argv",
    "ttl",
    "timeout",
    "json_field",
    "expiry_field",
    "refresh_skew",
    "default_ttl",
    "access_token",
    "region",
]
VALUES = [
    "",
    "~",
    "null",
    "true",
    "no",
    "0",
    "-1",
    "1e309",
    ".nan",
    "0x10",
    "64KiB",
    "1GiB",
    "99999999999999999999",
    "127.0.0.1:0",
    "[::1]:8080",
    "0.0.0.0:80",
    "*.x",
    "'*.example.com'",
    "a.b/c",
    "/",
    "/p",
    "//",
    "http://h",
    "https://h:99999",
    "ftp://x",
    "api_key",
    "client_credentials",
    "bws",
    "command",
    "bearer",
    "basic",
    "deny",
    "[]",
    "{}",
    "[a, b]",
    "{a: b}",
    "{type: api_key}",
    "${UNSET_FZC_VAR}",
    "${file:missing.txt}",
    "${bws:x}",
    "${}",
    "${ FZC_HOST }",
    "${1BAD}",
    "$$",
    "${",
    "}",
    "${FZC_CRLF}",
    "${FZC_HOST}",
    "&anchor x",
    "*anchor",
    "!!binary aGk=",
    "!!python/object:os.system x",
    "!tag x",
    "|\n  block",
    ">\n  folded",
    "'quoted'",
    '"\\x00"',
    '"\\r\\n"',
    "é€😀",
    "- item",
    ": colon",
    "? key",
    "# comment",
    "key: value",
]


def _write(tmp: Path, text: str | bytes) -> Path:
    path = tmp / "routes.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def _load_checked(path: Path) -> Config | ConfigError:
    """The property: a Config or a ConfigError, nothing else, and no secret value in anything it says."""
    try:
        cfg = load(path)
    except ConfigError as exc:
        said = [str(exc)] + [str(p) for p in exc.problems]
        assert_no_secrets(said, CFG_SECRETS.values())
        return exc
    except Exception as exc:
        raise AssertionError(
            f"load raised {type(exc).__name__} instead of ConfigError: {exc!s:.300} for\n{path.read_bytes()[:600]!r}"
        ) from exc
    assert isinstance(cfg, Config)
    assert_no_secrets([str(w) for w in cfg.warnings], CFG_SECRETS.values())
    for route in cfg.routes:
        auth = route.auth
        if type(auth).__name__ == "ApiKey" and getattr(auth, "header", None) is not None:
            value = auth.value.reveal() + auth.prefix  # type: ignore[attr-defined]
            assert "\r" not in value and "\n" not in value, "a header value with CR/LF was accepted"
        if type(auth).__name__ == "Bearer" and getattr(auth, "token", None) is not None:
            token = auth.token.reveal()  # type: ignore[attr-defined]
            assert "\r" not in token and "\n" not in token, "a bearer token with CR/LF was accepted"
    return cfg


@pytest.fixture
def cfg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in CFG_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("UNSET_FZC_VAR", raising=False)


def test_the_valid_config_loads(tmp_path: Path, cfg_env: None) -> None:
    assert isinstance(_load_checked(_write(tmp_path, VALID)), Config)


def test_fuzz_config_random_text(tmp_path: Path, cfg_env: None) -> None:
    @settings(FUZZ, max_examples=200)
    @given(
        text=st.one_of(
            st.text(max_size=400),
            st.lists(
                st.sampled_from([*KEYS, *VALUES, ":", " ", "\n", "  ", "- ", "{", "}", "[", "]", ",", "\t"]),
                max_size=80,
            ).map("".join),
        )
    )
    def prop(text: str) -> None:
        _load_checked(_write(tmp_path, text))

    prop()


def test_fuzz_config_random_bytes(tmp_path: Path, cfg_env: None) -> None:
    """A routes file is bytes on disk: invalid UTF-8, a BOM, NULs must all be a ConfigError."""

    @settings(FUZZ, max_examples=100)
    @given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(lambda b: VALID.encode()[:200] + b)))
    def prop(data: bytes) -> None:
        _load_checked(_write(tmp_path, data))

    prop()


def _scalar() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(VALUES),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        st.text(max_size=20),
    )


def _structure() -> st.SearchStrategy[Any]:
    return st.recursive(
        _scalar(),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5),
        ),
        max_leaves=25,
    )


def test_fuzz_config_random_structures(tmp_path: Path, cfg_env: None) -> None:
    """Mappings made of the real key names, so validation runs deep (routes, auth, limits)."""
    auth = st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                [
                    "api_key",
                    "bearer",
                    "basic",
                    "client_credentials",
                    "password",
                    "refresh_token",
                    "authorization_code",
                    "command",
                    "nope",
                ]
            )
        },
        optional={k: _structure() for k in AUTH_KEYS},
    )
    route = st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["a", "b", "a b", ""]), st.text(max_size=6))},
        optional={
            "match": _scalar(),
            "gateway": _scalar(),
            "upstream": _scalar(),
            "verify": _scalar(),
            "ca_file": _scalar(),
            "auth": st.one_of(auth, _structure()),
            "allow": _structure(),
        },
    )
    top = st.fixed_dictionaries(
        {"routes": st.one_of(st.lists(route, max_size=3), _structure())},
        optional={
            "listen": _scalar(),
            "unmatched": _scalar(),
            "limits": _structure(),
            "timeouts": _structure(),
            "state_dir": _scalar(),
            "admin": _scalar(),
            "proxy_auth": _structure(),
            "extra": _structure(),
        },
    )

    @settings(FUZZ, max_examples=250)
    @given(doc=top, flow=st.booleans(), indent=st.integers(2, 6))
    def prop(doc: dict[str, Any], flow: bool, indent: int) -> None:
        text = yaml.safe_dump(doc, default_flow_style=flow, indent=indent, allow_unicode=True, width=60)
        _load_checked(_write(tmp_path, text))

    prop()


@st.composite
def _mutated(draw: Callable[..., Any]) -> str:
    lines = VALID.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(
            st.sampled_from(["delete", "duplicate", "indent", "dedent", "value", "key", "insert", "swap", "junk"])
        )
        line = lines[i]
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, line)
        elif op == "indent":
            lines[i] = " " * draw(st.integers(1, 4)) + line
        elif op == "dedent":
            lines[i] = line[draw(st.integers(1, 4)) :]
        elif op == "value" and ":" in line:
            lines[i] = line.split(":", 1)[0] + ": " + draw(st.sampled_from(VALUES))
        elif op == "key" and ":" in line:
            stripped = line.lstrip(" -")
            lead = line[: len(line) - len(stripped)]
            lines[i] = lead + draw(st.sampled_from(KEYS)) + ":" + stripped.split(":", 1)[1]
        elif op == "insert":
            pad = " " * draw(st.sampled_from([0, 2, 4, 6, 8, 10]))
            lines.insert(i, f"{pad}{draw(st.sampled_from(KEYS))}: {draw(st.sampled_from(VALUES))}")
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "junk":
            lines[i] = line + draw(st.sampled_from(["\t", " #", " &a", " *a", "\x00", "\ufeff", "'", '"', "{", "]"]))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n", "\r\n"]))


def test_fuzz_config_mutations_of_a_valid_file(tmp_path: Path, cfg_env: None) -> None:
    outcomes = {"config": 0, "error": 0}

    @settings(FUZZ, max_examples=300)
    @given(text=_mutated())
    def prop(text: str) -> None:
        got = _load_checked(_write(tmp_path, text))
        outcomes["config" if isinstance(got, Config) else "error"] += 1

    prop()
    assert outcomes["config"] > 0 and outcomes["error"] > 0, outcomes


# Every scalar position of VALID a `${VAR}` could stand in.
def _scalar_slots() -> list[tuple[int, str]]:
    slots = []
    for i, line in enumerate(VALID.splitlines()):
        if ":" in line and not line.rstrip().endswith(":"):
            slots.append((i, line.split(":", 1)[0]))
    return slots


def test_fuzz_config_errors_never_echo_a_secret_variable(tmp_path: Path, cfg_env: None) -> None:
    """A `${VAR}` holding a secret, written where the loader wanted something else (a host, a port,
    a header name, a number): the problem may name `${VAR}`, never its value."""
    slots = _scalar_slots()

    @settings(FUZZ, max_examples=120)
    @given(slot=st.sampled_from(slots), var=st.sampled_from(sorted(CFG_SECRETS)), flow_key=st.sampled_from(KEYS))
    def prop(slot: tuple[int, str], var: str, flow_key: str) -> None:
        i, key = slot
        lines = VALID.splitlines()
        line = lines[i]
        if "{" in line:  # a flow mapping: replace one of its values
            head, _, rest = line.partition("{")
            items = [kv.strip() for kv in rest.rstrip("}").split(",")]
            k = min(len(items) - 1, len(flow_key) % len(items))
            name = items[k].split(":", 1)[0]
            items[k] = f"{name}: ${{{var}}}"
            lines[i] = head + "{" + ", ".join(items) + "}"
        else:
            lines[i] = f"{key}: ${{{var}}}"
        _load_checked(_write(tmp_path, "\n".join(lines) + "\n"))

    prop()
