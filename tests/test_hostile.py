"""Hostile input on raw sockets: smuggling, bad targets, garbage, slow and vanishing peers.

Every case writes hand-made bytes to the in-process proxy and asserts the exact
status, that the connection closes, that no smuggled request ever reached the
upstream, and that the proxy still serves a normal request afterwards.
Statuses follow RFC 9112 and docs/behaviour.md ("Framing") and docs/troubleshooting.md (the errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import Proxy, Upstream

KEY = "hostile-key-5f3e1d9c7b"
USERINFO_PW = "userinfo-pw-8c2a41"


# -- raw-socket helpers ------------------------------------------------------


async def _read_until_close(reader: asyncio.StreamReader, wait: float) -> tuple[bytes, bool]:
    """Everything the proxy sends within ``wait`` seconds, and whether it closed the connection."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    out = b""
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return out, False
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            return out, False
        except (ConnectionError, OSError):
            return out, True
        if not chunk:
            return out, True
        out += chunk


async def _send_all(writer: asyncio.StreamWriter, data: bytes, pace: float = 0.0, piece: int = 65536) -> None:
    """Write ``data`` in pieces; the proxy may close on us half-way, which is fine."""
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        for i in range(0, len(data), piece):
            writer.write(data[i : i + piece])
            await writer.drain()
            if pace:
                await asyncio.sleep(pace)


async def talk(port: int, data: bytes, *, wait: float = 5.0, eof: bool = False) -> tuple[bytes, bool]:
    """Send ``data`` (concurrently with reading, so a big send cannot deadlock) and collect the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sender = asyncio.create_task(_send_all(writer, data))
    try:
        if eof:
            await sender
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
        return await _read_until_close(reader, wait)
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        writer.transport.abort()


def status_of(resp: bytes) -> int:
    assert resp.startswith(b"HTTP/1."), f"no HTTP response: {resp[:200]!r}"
    return int(resp.split(b" ", 2)[1])


def head_and_body(resp: bytes) -> tuple[bytes, bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    return head, body


def error_code(resp: bytes) -> str:
    head, body = head_and_body(resp)
    assert b"x-authproxy-error:" in head.lower(), head
    return str(json.loads(body)["error"])


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def smuggled(u: str) -> bytes:
    """The request a desynchronised parser would see: absolute-form, so a proxy-side desync reaches the upstream too."""
    return f"GET http://{u}/smuggled HTTP/1.1\r\nHost: {u}\r\n\r\n".encode()


# -- the proxy under test ------------------------------------------------------


@dataclass
class Env:
    p: Proxy
    up: Upstream

    @property
    def u(self) -> str:
        return self.up.authority

    def smuggle_free(self) -> None:
        paths = [s["path"] for s in self.up.seen]
        assert not any("smuggled" in path for path in paths), f"a smuggled request reached the upstream: {paths}"
        assert len(paths) <= 1, f"the upstream saw more than one request: {paths}"

    async def still_serving(self) -> None:
        before = len(self.up.seen)
        resp, closed = await talk(
            self.p.port,
            f"GET http://{self.u}/normal HTTP/1.1\r\nHost: {self.u}\r\nConnection: close\r\n\r\n".encode(),
        )
        assert status_of(resp) == 200, resp[:300]
        assert closed
        assert len(self.up.seen) == before + 1 and self.up.seen[-1]["path"] == "/normal"
        assert [v for k, v in self.up.seen[-1]["headers"] if k.lower() == "x-key"] == [KEY]

    async def logged(self, needle: str, since: int = 0) -> bool:
        """Whether an access line containing ``needle`` appears (the line is written after the answer)."""
        for _ in range(20):
            if any(needle in line and " route=" in line for line in self.p.lines()[since:]):
                return True
            await asyncio.sleep(0.05)
        return False

    def no_internal_errors(self) -> None:
        bad = [line for line in self.p.lines() if "internal error" in line or "Traceback" in line]
        assert not bad, "\n".join(bad)


async def _start(make_proxy, upstream: Upstream, secret_env, extra: str = "") -> Env:
    secret_env("HOSTILE_KEY", KEY)
    u = upstream.authority
    p = await make_proxy(
        f"""
        {extra}
        routes:
          - name: plain
            match: {u}
            auth: {{type: api_key, header: X-Key, value: "${{HOSTILE_KEY}}"}}
          - name: gw
            gateway: /gw
            upstream: http://{u}
            auth: {{type: api_key, header: X-Key, value: "${{HOSTILE_KEY}}"}}
        """
    )
    p.secrets.add(KEY)
    return Env(p, upstream)


@pytest.fixture
async def env(make_proxy, upstream, secret_env) -> Env:
    return await _start(make_proxy, upstream, secret_env, "timeouts: {client_header: 3}")


# -- request smuggling: refused with 400 and a close --------------------------

# (id, request bytes for upstream authority u, status, error code)
REFUSED: list[tuple[str, Callable[[str], bytes], int, str]] = [
    (
        "gateway-cl-then-te",
        lambda u: (
            (
                f"POST /gw/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ).encode()
            + smuggled(u)
        ),
        400,
        "bad_request",
    ),
    (
        "cl-then-te",
        lambda u: (
            (
                f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                "0\r\n\r\n"
            ).encode()
            + smuggled(u)
        ),
        400,
        "bad_request",
    ),
    (
        "te-then-cl",
        lambda u: (
            (
                f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
            ).encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        400,
        "bad_request",
    ),
    (
        "cl-then-te-chunked-uppercase",
        lambda u: (
            (
                f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\ncontent-length: 0\r\nTRANSFER-ENCODING: CHUNKED\r\n\r\n"
            ).encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        400,
        "bad_request",
    ),
    (
        "duplicate-differing-content-length",
        lambda u: (
            (
                f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: 0\r\nContent-Length: {len(smuggled(u))}\r\n\r\n"
            ).encode()
            + smuggled(u)
        ),
        400,
        "bad_request",
    ),
    (
        "content-length-list-differing",
        lambda u: (
            (f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: 0, {len(smuggled(u))}\r\n\r\n").encode()
            + smuggled(u)
        ),
        400,
        "bad_request",
    ),
    (
        "content-length-plus-sign",
        lambda u: f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: +0\r\n\r\n".encode() + smuggled(u),
        400,
        "bad_request",
    ),
    (
        "content-length-negative",
        lambda u: f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: -1\r\n\r\n".encode() + smuggled(u),
        400,
        "bad_request",
    ),
    (
        "content-length-hex",
        lambda u: f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: 0x0\r\n\r\n".encode() + smuggled(u),
        400,
        "bad_request",
    ),
    (
        # RFC 9112 §6.3: chunked not the final coding of a request -> MUST 400 and close.
        "te-chunked-then-identity",
        lambda u: (
            (f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: chunked, identity\r\n\r\n").encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        400,
        "bad_request",
    ),
    (
        # docs/behaviour.md, "Framing": a repeated Transfer-Encoding gets 400 (ARCHITECTURE pitfall 1).
        "te-repeated",
        lambda u: (
            (
                f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        400,
        "bad_request",
    ),
    (
        "te-repeated-differing",
        lambda u: (
            (
                f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        400,
        "bad_request",
    ),
    (
        # RFC 9112 §5.1: whitespace between a field name and the colon MUST be a 400.
        "te-space-before-colon",
        lambda u: (
            (
                f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: 0\r\nTransfer-Encoding : chunked\r\n\r\n"
            ).encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        400,
        "bad_request",
    ),
    (
        "te-vertical-tab-before-value",
        lambda u: (
            (
                f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: 0\r\nTransfer-Encoding:\x0bchunked\r\n\r\n"
            ).encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        400,
        "bad_request",
    ),
    (
        "te-on-http-1.0",
        lambda u: (
            (f"POST http://{u}/a HTTP/1.0\r\nHost: {u}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        400,
        "bad_request",
    ),
    (
        # RFC 9112 §2.2: whitespace before the first field line; h11 refuses it.
        "obs-fold-at-start-of-headers",
        lambda u: (
            (
                f"POST http://{u}/a HTTP/1.1\r\n Content-Length: {len(smuggled(u))}\r\nHost: {u}\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            + smuggled(u)
        ),
        400,
        "bad_request",
    ),
    (
        "obs-fold-into-content-length",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: 0\r\n {len(smuggled(u))}\r\n\r\n".encode()
            + smuggled(u)
        ),
        400,
        "bad_request",
    ),
    (
        "obs-fold-into-transfer-encoding",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: chunked\r\n\t, identity\r\n\r\n".encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        400,
        "bad_request",
    ),
    (
        # RFC 9112 §2.2: a bare CR is invalid (or replaced by SP); never a line end.
        "bare-cr-hides-content-length",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nX-A: a\rContent-Length: {len(smuggled(u))}\r\n\r\n".encode()
            + smuggled(u)
        ),
        400,
        "bad_request",
    ),
    (
        "bare-cr-line-endings",
        lambda u: f"GET http://{u}/a HTTP/1.1\rHost: {u}\rX-A: b\r\r\n\r\n".encode() + smuggled(u),
        400,
        "bad_request",
    ),
    (
        "bare-lf-adds-second-content-length",
        lambda u: (
            (
                f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: 0\r\nX-A: a\nContent-Length: {len(smuggled(u))}\r\n\r\n"
            ).encode()
            + smuggled(u)
        ),
        400,
        "bad_request",
    ),
    (
        "bare-lf-adds-transfer-encoding",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: 0\r\nX-A: a\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        400,
        "bad_request",
    ),
    (
        "nul-in-header-value",
        lambda u: f"GET http://{u}/a HTTP/1.1\r\nHost: {u}\r\nX-A: a\x00b\r\n\r\n".encode(),
        400,
        "bad_request",
    ),
    (
        "nul-in-header-name",
        lambda u: f"GET http://{u}/a HTTP/1.1\r\nHost: {u}\r\nX-\x00A: b\r\n\r\n".encode(),
        400,
        "bad_request",
    ),
    ("nul-in-target", lambda u: f"GET http://{u}/a\x00b HTTP/1.1\r\nHost: {u}\r\n\r\n".encode(), 400, "bad_request"),
    ("nul-before-method", lambda u: f"\x00GET http://{u}/a HTTP/1.1\r\nHost: {u}\r\n\r\n".encode(), 400, "bad_request"),
    (
        "nul-in-content-length",
        lambda u: f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: 4\x00\r\n\r\nbody".encode(),
        400,
        "bad_request",
    ),
    (
        "chunk-size-not-hex",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"zz\r\nhello\r\n0\r\n\r\n"
            + smuggled(u)
        ),
        400,
        "bad_request",
    ),
    (
        "chunk-size-negative",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"-5\r\nhello\r\n0\r\n\r\n"
            + smuggled(u)
        ),
        400,
        "bad_request",
    ),
    (
        "chunk-size-huge-hex",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"1"
            + b"0" * 40
            + b"\r\nhello\r\n0\r\n\r\n"
            + smuggled(u)
        ),
        400,
        "bad_request",
    ),
    (
        "chunk-data-longer-than-size",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"2\r\nhello\r\n0\r\n\r\n"
            + smuggled(u)
        ),
        400,
        "bad_request",
    ),
    (
        "userinfo-in-absolute-form",
        lambda u: f"GET http://alice:{USERINFO_PW}@{u}/a HTTP/1.1\r\nHost: {u}\r\n\r\n".encode(),
        400,
        "bad_request",
    ),
    (
        "userinfo-without-password",
        lambda u: f"GET http://alice@{u}/a HTTP/1.1\r\nHost: {u}\r\n\r\n".encode(),
        400,
        "bad_request",
    ),
    (
        # RFC 9112 §3: a request-target longer than the server parses MUST get 414.
        "request-line-1mib",
        lambda u: f"GET http://{u}/{'a' * (1 << 20)} HTTP/1.1\r\nHost: {u}\r\n\r\n".encode(),
        414,
        "uri_too_long",
    ),
    (
        "request-line-16kib",
        lambda u: f"GET http://{u}/{'a' * (16 << 10)} HTTP/1.1\r\nHost: {u}\r\n\r\n".encode(),
        414,
        "uri_too_long",
    ),
    (
        "header-line-1mib",
        lambda u: f"GET http://{u}/a HTTP/1.1\r\nHost: {u}\r\nX-Long: {'b' * (1 << 20)}\r\n\r\n".encode(),
        431,
        "headers_too_large",
    ),
    (
        "many-headers-then-a-100kib-line",
        lambda u: (
            f"GET http://{u}/a HTTP/1.1\r\nHost: {u}\r\n".encode()
            + b"X-Many: c\r\n" * 50
            + b"X-Long: "
            + b"d" * (100 << 10)
            + b"\r\n\r\n"
        ),
        431,
        "headers_too_large",
    ),
]


@pytest.mark.parametrize(("name", "build", "status", "code"), REFUSED, ids=[c[0] for c in REFUSED])
async def test_refused_with_exact_status_and_close(env: Env, name: str, build, status: int, code: str) -> None:
    resp, closed = await talk(env.p.port, build(env.u))
    assert status_of(resp) == status, f"{name}: {resp[:300]!r}"
    assert error_code(resp) == code
    assert closed, f"{name}: the connection stayed open after {status}"
    assert b"connection: close" in head_and_body(resp)[0].lower()
    env.p.bodies.append(head_and_body(resp)[1].decode("latin-1"))
    env.smuggle_free()
    assert env.up.seen == [], f"{name}: the upstream saw {[s['path'] for s in env.up.seen]}"
    await env.still_serving()
    env.no_internal_errors()


LOGGED = [
    "cl-then-te",
    "duplicate-differing-content-length",
    "nul-in-header-value",
    "obs-fold-at-start-of-headers",
    "header-line-1mib",
]


@pytest.mark.parametrize("name", LOGGED)
async def test_every_refusal_gets_a_log_line(env: Env, name: str) -> None:
    """One access line per request (docs/behaviour.md, "Logs"); each exceeded limit gets its status and a log line."""
    _, build, status, code = next(c for c in REFUSED if c[0] == name)
    resp, _ = await talk(env.p.port, build(env.u))
    assert status_of(resp) == status
    assert await env.logged(f"status={status}"), f"{name}: answered {status} but nothing was logged: {env.p.lines()}"
    assert await env.logged(f"error={code}")


async def test_408_gets_a_log_line(make_proxy, upstream, secret_env) -> None:
    e = await _start(make_proxy, upstream, secret_env, "timeouts: {client_header: 0.5}")
    resp, closed = await talk(e.p.port, f"GET http://{e.u}/x HTTP/1.1\r\nHost: {e.u}\r\n".encode())
    assert status_of(resp) == 408 and closed
    assert await e.logged("status=408"), f"answered 408 but nothing was logged: {e.p.lines()}"


async def test_userinfo_password_is_not_logged(env: Env) -> None:
    resp, _ = await talk(
        env.p.port, f"GET http://bob:{USERINFO_PW}@{env.u}/x?q=1 HTTP/1.1\r\nHost: {env.u}\r\n\r\n".encode()
    )
    assert status_of(resp) == 400
    assert USERINFO_PW.encode() not in resp
    leaked = [line for line in env.p.lines() if USERINFO_PW in line]
    assert not leaked, f"the userinfo password is in the log: {leaked}"


# -- framing that is legal: forwarded once, the body stays a body --------------

# (id, request bytes, expected body the upstream must see)
ACCEPTED: list[tuple[str, Callable[[str], bytes], Callable[[str], bytes]]] = [
    (
        "content-length-body-holds-a-request",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: {len(smuggled(u))}\r\nConnection: close\r\n\r\n".encode()
            + smuggled(u)
        ),
        smuggled,
    ),
    (
        "identical-duplicate-content-length-merged",
        lambda u: (
            (
                f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: {len(smuggled(u))}\r\n"
                f"Content-Length: {len(smuggled(u))}\r\nConnection: close\r\n\r\n"
            ).encode()
            + smuggled(u)
        ),
        smuggled,
    ),
    (
        "chunked-body-holds-a-request",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        smuggled,
    ),
    (
        # Coding names and field names are case-insensitive (RFC 9112 §7, RFC 9110 §5.1).
        "te-odd-casing",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\ntRANSFER-eNCODING: ChUnKeD\r\nConnection: close\r\n\r\n".encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        smuggled,
    ),
    (
        # HTAB is optional whitespace before a field value.
        "te-tab-before-value",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding:\tchunked\t\r\nConnection: close\r\n\r\n".encode()
            + _chunk(smuggled(u))
            + b"0\r\n\r\n"
        ),
        smuggled,
    ),
    (
        "chunk-extensions-and-trailers",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
            + b"%x;ext=1\r\n" % len(smuggled(u))
            + smuggled(u)
            + b"\r\n0\r\nX-Trailer: Content-Length: 0\r\n\r\n"
        ),
        smuggled,
    ),
    (
        # docs/behaviour.md, "Framing": obs-fold is replaced by a space (RFC 9112 §5.2 allows that or a 400);
        # the folded `Transfer-Encoding` is then part of X-Note's value, not a header.
        "obs-fold-hides-nothing",
        lambda u: (
            (
                f"POST http://{u}/a HTTP/1.1\r\nHost: {u}\r\nContent-Length: {len(smuggled(u))}\r\nX-Note: a\r\n"
                " Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            ).encode()
            + smuggled(u)
        ),
        smuggled,
    ),
    (
        # RFC 9112 §2.2: a recipient MAY take a bare LF as a line end; the proxy re-frames with CRLF.
        "bare-lf-line-endings",
        lambda u: (
            f"POST http://{u}/a HTTP/1.1\nHost: {u}\nContent-Length: {len(smuggled(u))}\nConnection: close\n\n".encode()
            + smuggled(u)
        ),
        smuggled,
    ),
]


@pytest.mark.parametrize(("name", "build", "body"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
async def test_legal_framing_forwards_exactly_one_request(env: Env, name: str, build, body) -> None:
    resp, closed = await talk(env.p.port, build(env.u))
    assert status_of(resp) == 200, f"{name}: {resp[:300]!r}"
    assert closed
    env.smuggle_free()
    assert len(env.up.seen) == 1
    seen = env.up.seen[0]
    expected = body(env.u)
    assert (seen["method"], seen["path"]) == ("POST", "/a")
    assert seen["body_size"] == len(expected)
    assert seen["body_sha256"] == hashlib.sha256(expected).hexdigest()
    names = [k.lower() for k, _ in seen["headers"]]
    assert names.count("content-length") + names.count("transfer-encoding") == 1, seen["headers"]
    if name == "obs-fold-hides-nothing":
        assert [v for k, v in seen["headers"] if k.lower() == "x-note"] == ["a Transfer-Encoding: chunked"]
    await env.still_serving()
    env.no_internal_errors()


async def test_chunk_size_beyond_64_bits_is_data_never_a_request(env: Env) -> None:
    """20 hex digits (2^80) is a legal numeral; what follows is chunk data, and the body never ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", env.p.port)
    writer.write(
        f"POST http://{env.u}/a HTTP/1.1\r\nHost: {env.u}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + b"ffffffffffffffffffff\r\n"
        + b"0\r\n\r\n"
        + smuggled(env.u)
    )
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.write_eof()  # the client gives up: the body is incomplete
    resp, closed = await _read_until_close(reader, 5)
    writer.transport.abort()
    assert closed, "the proxy held a connection whose body can never complete"
    if resp:  # RFC 9112 §8: an incomplete request may get a 400 before the close; it is not the upstream's fault
        assert status_of(resp) == 400, resp[:300]
    assert env.up.seen == [], "an incomplete body reached the upstream as a complete request"
    await env.still_serving()
    env.no_internal_errors()


# -- CONNECT -----------------------------------------------------------------

BAD_CONNECT = [
    b"example.com",  # no port
    b"example.com:",
    b":443",
    b"example.com:0",
    b"example.com:65536",
    b"example.com:99999999999999999999",
    b"example.com:+443",
    b"example.com:443/path",
    b"::1:443",  # IPv6 without brackets
    b"::1",
    b"[::1]",
    b"[::1]:",
    b"[::1:443",
    b"[::1]x:443",
    b"exa%20mple.com:443",
    b"user@example.com:443",
    b"user:pw@127.0.0.1:443",
    b"example.com:443@127.0.0.1:443",
    b"http://example.com:443",
    b"/example.com:443",
    b"*",
]


@pytest.mark.parametrize("target", BAD_CONNECT, ids=[t.decode() for t in BAD_CONNECT])
async def test_bad_connect_target_is_400(env: Env, target: bytes) -> None:
    resp, closed = await talk(env.p.port, b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(resp) == 400, f"{target!r}: {resp[:300]!r}"
    assert error_code(resp) == "bad_request"
    assert closed
    await env.still_serving()


@pytest.mark.parametrize(
    "line",
    [
        b"CONNECT exa mple.com:443 HTTP/1.1",
        b"CONNECT  example.com:443 HTTP/1.1",
        b"CONNECT example.com:443  HTTP/1.1",
        b"CONNECT\texample.com:443 HTTP/1.1",
        b"CONNECT example.com:443",
    ],
    ids=["space-in-target", "double-space-before", "double-space-after", "tab", "no-version"],
)
async def test_connect_request_line_with_bad_spacing_is_400(env: Env, line: bytes) -> None:
    resp, closed = await talk(env.p.port, line + b"\r\nHost: x\r\n\r\n")
    assert status_of(resp) == 400, resp[:300]
    assert closed
    await env.still_serving()


@pytest.fixture
async def icpt(make_proxy, upstream, tls_upstream, secret_env) -> tuple[Env, Upstream]:
    """A proxy that intercepts the TLS upstream's authority and plain-proxies the other upstream."""
    tup, ca_path = tls_upstream
    secret_env("HOSTILE_KEY", KEY)
    p = await make_proxy(
        f"""
        timeouts: {{client_header: 3, tls_handshake: 1}}
        routes:
          - name: plain
            match: {upstream.authority}
            auth: {{type: api_key, header: X-Key, value: "${{HOSTILE_KEY}}"}}
          - name: secure
            match: {tup.authority}
            ca_file: {ca_path}
            auth: {{type: api_key, header: X-Key, value: "${{HOSTILE_KEY}}"}}
        """
    )
    p.secrets.add(KEY)
    return Env(p, upstream), tup


def _connect_bytes(authority: str) -> bytes:
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()


async def _connected(p: Proxy, authority: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(_connect_bytes(authority))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    return reader, writer


_rnd = random.Random(9112)
TLS_GARBAGE = {
    "http-instead-of-tls": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "text": b"hello, this is not a ClientHello\r\n\r\n",
    "truncated-client-hello": b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
    "wrong-record-type": b"\x17\x03\x03\x00\x10" + b"\x00" * 16,
    "ssl2-hello": b"\x80\x2e\x01\x00\x02\x00\x15" + b"\x00" * 40,
    "random-4k": bytes(_rnd.getrandbits(8) for _ in range(4096)),
    "zeros-64k": b"\x00" * 65536,
}


@pytest.mark.parametrize("name", list(TLS_GARBAGE))
async def test_non_tls_bytes_after_connect_close_the_tunnel(icpt, name: str) -> None:
    env, tup = icpt
    reader, writer = await _connected(env.p, tup.authority)
    sender = asyncio.create_task(_send_all(writer, TLS_GARBAGE[name]))
    resp, closed = await _read_until_close(reader, 5)
    sender.cancel()
    writer.transport.abort()
    assert closed, f"{name}: the proxy kept a tunnel open after garbage instead of a ClientHello"
    assert b"HTTP/1.1 2" not in resp
    assert tup.seen == []
    await env.still_serving()
    env.no_internal_errors()


async def test_stalled_tls_handshake_is_cut_after_the_timeout(icpt) -> None:
    env, tup = icpt
    reader, writer = await _connected(env.p, tup.authority)
    writer.write(b"\x16\x03\x01\x40\x00\x01")  # a record header promising 16 KiB that never comes
    # A hang guard, under the 60 s that idle and asyncio's own handshake default would take: only
    # tls_handshake (1 s) applies while the handshake is under way.
    _, closed = await _read_until_close(reader, 30)
    writer.transport.abort()
    assert closed, "a stalled handshake held the connection past tls_handshake"
    assert await env.logged("error=client_tls_failed")
    await env.still_serving()


async def test_bytes_before_the_connect_200_are_400(icpt) -> None:
    env, tup = icpt
    resp, closed = await talk(env.p.port, _connect_bytes(tup.authority) + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc")
    assert status_of(resp) == 400
    assert closed
    assert tup.seen == []


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ],
    ids=["text", "binary", "conflicting-cl"],
)
async def test_non_http_inside_intercepted_tls_is_400(icpt, garbage: bytes) -> None:
    env, tup = icpt
    reader, writer = await _connected(env.p, tup.authority)
    ca = env.p.runtime.ca
    assert ca is not None
    ctx = ssl.create_default_context(cafile=str(ca.files.cert))
    await writer.start_tls(ctx, server_hostname="127.0.0.1")
    writer.write(garbage)
    await writer.drain()
    resp, closed = await _read_until_close(reader, 5)
    writer.transport.abort()
    assert status_of(resp) == 400, resp[:300]
    assert closed
    assert tup.seen == []
    await env.still_serving()


@pytest.mark.parametrize("name", ["cl-then-te", "te-then-cl", "duplicate-differing-content-length", "te-repeated"])
async def test_smuggling_inside_intercepted_tls_is_400(icpt, name: str) -> None:
    env, tup = icpt
    _, build, status, _ = next(c for c in REFUSED if c[0] == name)
    # The same bytes in origin-form, as a client inside the tunnel sends them.
    data = build(tup.authority).replace(f"http://{tup.authority}".encode(), b"")
    reader, writer = await _connected(env.p, tup.authority)
    ca = env.p.runtime.ca
    assert ca is not None
    await writer.start_tls(ssl.create_default_context(cafile=str(ca.files.cert)), server_hostname="127.0.0.1")
    writer.write(data)
    await writer.drain()
    resp, closed = await _read_until_close(reader, 5)
    writer.transport.abort()
    assert status_of(resp) == status, resp[:300]
    assert closed
    assert tup.seen == [], f"the upstream saw {[s['path'] for s in tup.seen]}"
    await env.still_serving()


# -- slow clients ------------------------------------------------------------


async def test_slowloris_gets_408_while_others_are_served(make_proxy, upstream, secret_env) -> None:
    """Clients trickling a head are answered 408 at client_header; others are served meanwhile.

    No clock is compared: the normal requests are answered while every slow
    client still holds its connection (the proxy counts them, none has had an
    answer), and each 408 comes after a timer of client_header, started before
    the first slow client connected, has fired. The other bounds are hang guards.
    """
    e = await _start(make_proxy, upstream, secret_env, "timeouts: {client_header: 3}")
    # About 140 bytes at one per 0.2 s: the head would take 28 s to arrive.
    head = f"GET http://{e.u}/loris HTTP/1.1\r\nHost: {e.u}\r\nX-Slow: {'a' * 60}\r\n\r\n".encode()
    due = asyncio.Event()
    asyncio.get_running_loop().call_later(3, due.set)  # no slow client's head is due before this fires

    async def loris() -> tuple[bytes, bool, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", e.p.port)
        trickle = asyncio.create_task(_send_all(writer, head, pace=0.2, piece=1))
        try:
            resp, closed = await _read_until_close(reader, 20)
        finally:
            trickle.cancel()
            writer.transport.abort()
        return resp, closed, due.is_set()

    lorises = [asyncio.create_task(loris()) for _ in range(30)]
    await _held_by(e.p, "127.0.0.1", 30)
    for _ in range(6):
        await e.still_serving()
    assert not any(t.done() for t in lorises), "a slow client was let go before the normal requests were served"
    for resp, closed, after_due in await asyncio.gather(*lorises):
        assert status_of(resp) == 408, resp[:200]
        assert error_code(resp) == "client_timeout"
        assert closed
        assert after_due, "a 408 came before client_header"
    assert not any(s["path"] == "/loris" for s in e.up.seen)
    assert sum("error=client_timeout" in line for line in e.p.access_lines()) == 30


async def test_idle_connection_without_a_byte_is_closed_quietly(make_proxy, upstream, secret_env) -> None:
    e = await _start(make_proxy, upstream, secret_env, "timeouts: {client_header: 1, idle: 1}")
    reader, writer = await asyncio.open_connection("127.0.0.1", e.p.port)
    resp, closed = await _read_until_close(reader, 4)
    writer.transport.abort()
    assert closed and resp == b""
    await e.still_serving()


async def _one_response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


@pytest.mark.parametrize("step", ["next request", "rest of the body"])
async def test_bytes_that_arrived_before_a_late_idle_timer_are_served(
    make_proxy, upstream, secret_env, step: str
) -> None:
    """The proxy's event loop runs late, and the client's bytes and the idle deadline come due in one turn.

    asyncio runs the read callback and then the expired timer in that turn, so
    the read's result is cancelled: the proxy used to close a keep-alive
    connection with the next request already in its buffer (the client saw
    the connection end without an answer), or drop a POST as `client_gone`
    with the rest of its body there. The soak met this whenever the proxy ran
    half a second late. Blocking the loop, which the in-process proxy shares
    with this test, puts both in one turn every time.

    The stall is counted from the write, which comes after the proxy started
    waiting (its access line for the first request is written just before;
    the body's rest is awaited once its first half is in), so the stall ends
    past the deadline however late this test runs; the write comes before
    the deadline unless this test runs ``idle`` (2 s) late.
    """
    idle = 2.0
    e = await _start(make_proxy, upstream, secret_env, f"timeouts: {{idle: {idle}}}")
    reader, writer = await asyncio.open_connection("127.0.0.1", e.p.port)
    try:
        if step == "next request":
            writer.write(f"GET http://{e.u}/first HTTP/1.1\r\nHost: {e.u}\r\n\r\n".encode())
            assert status_of(await _one_response(reader)) == 200
            assert await e.logged(" /first ")  # then, with no await between, the proxy waits for the next head
            late = f"GET http://{e.u}/second HTTP/1.1\r\nHost: {e.u}\r\n\r\n".encode()
        else:
            writer.write(
                f"POST http://{e.u}/second HTTP/1.1\r\nHost: {e.u}\r\nContent-Length: 10\r\n\r\n12345".encode()
            )
            await writer.drain()
            await asyncio.sleep(0.2)  # the proxy reads the first half and waits for the rest
            late = b"67890"
        writer.write(late)  # an empty transport buffer: sent in this call, before the deadline
        time.sleep(idle + 0.5)  # the loop (and so the proxy) stalls past the deadline
        resp = await _one_response(reader)
    finally:
        writer.transport.abort()
    assert status_of(resp) == 200, resp[:300]
    assert e.up.seen[-1]["path"] == "/second"
    assert e.up.seen[-1]["body_size"] == (10 if step == "rest of the body" else 0)


async def test_bytes_that_arrived_before_a_late_tunnel_idle_timer_are_relayed(make_proxy, upstream) -> None:
    """The same late turn inside a blind tunnel: the next request was dropped with the tunnel.

    Both directions' idle timers start before the first answer reaches this
    test (each pump reads again as soon as it has relayed), so a stall counted
    from the write ends past them.
    """
    p = await make_proxy(
        """
        timeouts: {idle: 2}
        routes:
          - name: other
            match: api.example.com
            auth: {type: api_key, value: "tunnel-test-key"}
        """
    )
    u = upstream.authority
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    try:
        writer.write(f"CONNECT {u} HTTP/1.1\r\nHost: {u}\r\n\r\n".encode())
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        writer.write(f"GET /first HTTP/1.1\r\nHost: {u}\r\n\r\n".encode())
        assert status_of(await _one_response(reader)) == 200
        writer.write(f"GET /second HTTP/1.1\r\nHost: {u}\r\n\r\n".encode())  # well before the timers' 2 s
        time.sleep(2.5)  # the loop (and so the proxy) stalls past both deadlines
        resp = await _one_response(reader)
    finally:
        writer.transport.abort()
    assert status_of(resp) == 200, resp[:300]
    assert upstream.seen[-1]["path"] == "/second"


# -- clients that vanish -----------------------------------------------------


@pytest.fixture
async def buffering(make_proxy, upstream, secret_env, tmp_path: Path) -> Env:
    """A route whose grant may retry a 401, so the proxy buffers bodies (replay_body) before sending."""
    tok = tmp_path / "token"
    tok.write_text("tok-file-value-6a5b4c\n")
    secret_env("HOSTILE_KEY", KEY)
    p = await make_proxy(
        f"""
        routes:
          - name: plain
            match: {upstream.authority}
            auth: {{type: api_key, header: X-Key, value: "${{HOSTILE_KEY}}"}}
          - name: buffered
            match: {upstream.authority}/buf
            auth: {{type: bearer, token_file: {tok}}}
        """
    )
    p.secrets.update({KEY, "tok-file-value-6a5b4c"})
    return Env(p, upstream)


def _vanish_cases(u: str) -> dict[str, bytes]:
    return {
        "content-length": f"POST http://{u}{{path}} HTTP/1.1\r\nHost: {u}\r\nContent-Length: 100000\r\n\r\n".encode()
        + b"x" * 3000,
        "chunked-mid-chunk": f"POST http://{u}{{path}} HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + b"1000\r\n"
        + b"y" * 100,
        "chunked-between-chunks": f"POST http://{u}{{path}} HTTP/1.1\r\nHost: {u}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        + _chunk(b"z" * 500),
        "expect-100-then-nothing": f"POST http://{u}{{path}} HTTP/1.1\r\nHost: {u}\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n".encode(),
    }


@pytest.mark.parametrize("how", ["reset", "half-close"])
@pytest.mark.parametrize(
    "case", ["content-length", "chunked-mid-chunk", "chunked-between-chunks", "expect-100-then-nothing"]
)
@pytest.mark.parametrize("path", ["/stream", "/buf/x"], ids=["streamed", "buffered"])
async def test_client_vanishing_mid_body(buffering: Env, case: str, how: str, path: str) -> None:
    env = buffering
    data = _vanish_cases(env.u)[case].replace(b"{path}", path.encode())
    reader, writer = await asyncio.open_connection("127.0.0.1", env.p.port)
    writer.write(data)
    await writer.drain()
    await asyncio.sleep(0.3)
    if how == "reset":
        writer.transport.abort()
    else:
        writer.write_eof()
        resp, closed = await _read_until_close(reader, 5)
        writer.transport.abort()
        assert closed, "the proxy held a half-closed connection whose body can never complete"
        body_start = re.sub(rb"^HTTP/1\.1 100[^\r]*\r\n\r\n", b"", resp)
        if body_start:  # RFC 9112 §8: an error answer before closing is allowed, never a 2xx
            assert status_of(body_start) == 400, resp[:300]
    await asyncio.sleep(0.2)
    assert env.up.seen == [], f"a truncated body reached the upstream as a whole request: {env.up.seen}"
    await env.still_serving()
    env.no_internal_errors()


async def test_client_vanishing_while_waiting_for_the_answer(env: Env) -> None:
    _reader, writer = await asyncio.open_connection("127.0.0.1", env.p.port)
    writer.write(f"GET http://{env.u}/slow?s=0.6 HTTP/1.1\r\nHost: {env.u}\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    await asyncio.sleep(0.8)  # the upstream answers into a dead connection
    await env.still_serving()
    env.no_internal_errors()


async def test_client_vanishing_mid_download(env: Env) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", env.p.port)
    writer.write(f"GET http://{env.u}/big?size={64 << 20} HTTP/1.1\r\nHost: {env.u}\r\n\r\n".encode())
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(300_000), 5)
    assert got.startswith(b"HTTP/1.1 200")
    writer.transport.abort()
    await asyncio.sleep(0.3)
    await env.still_serving()
    env.no_internal_errors()
    # The client went away, not the upstream: the log line says which side broke off.
    big = [line for line in env.p.access_lines() if " /big " in line]
    assert len(big) == 1 and "error=client_gone" in big[0], big


# -- upstreams that break ------------------------------------------------------


def _resp(*lines: str, body: bytes = b"") -> bytes:
    return "".join(line + "\r\n" for line in lines).encode() + b"\r\n" + body


# name -> (what the upstream does, the outcome the client must see)
#   outcome "502": exactly a 502 upstream_error; "cut": a response head then the connection cut
#   short of the promised length; "502|cut": either; "504": upstream_timeout.
BROKEN: dict[str, tuple[bytes | str, str]] = {
    "reset-before-head": ("RESET", "502"),
    "close-before-head": ("CLOSE", "502"),
    "silent": ("SILENT", "504"),
    "status-line-garbage": (b"HTTP/1.1 abc OK\r\n\r\n", "502"),
    "status-line-missing": (b"\x00\x01\x02 not http at all\r\n\r\n", "502"),
    "status-line-truncated-then-close": (b"HTTP/1.1 20", "502"),
    "status-code-four-digits": (_resp("HTTP/1.1 2000 OK", "Content-Length: 2", body=b"ok"), "502"),
    # RFC 9112 §6.3: an invalid Content-Length in a response: the proxy MUST discard it and send 502.
    "content-length-not-a-number": (_resp("HTTP/1.1 200 OK", "Content-Length: abc", body=b"hello"), "502"),
    "content-length-negative": (_resp("HTTP/1.1 200 OK", "Content-Length: -1", body=b"hello"), "502"),
    "content-length-duplicate-differing": (
        _resp("HTTP/1.1 200 OK", "Content-Length: 5", "Content-Length: 6", body=b"hello!"),
        "502",
    ),
    "content-length-list-differing": (_resp("HTTP/1.1 200 OK", "Content-Length: 5, 6", body=b"hello!"), "502"),
    "header-without-colon": (_resp("HTTP/1.1 200 OK", "X-Broken header", "Content-Length: 2", body=b"ok"), "502"),
    "nul-in-header": (_resp("HTTP/1.1 200 OK", "X-A: a\x00b", "Content-Length: 2", body=b"ok"), "502|cut"),
    "huge-header": (_resp("HTTP/1.1 200 OK", "X-Big: " + "h" * (200 << 10), "Content-Length: 2", body=b"ok"), "502"),
    "body-shorter-than-content-length": (_resp("HTTP/1.1 200 OK", "Content-Length: 1000", body=b"only-this"), "cut"),
    "bad-chunk-size": (
        _resp("HTTP/1.1 200 OK", "Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n"),
        "502|cut",
    ),
    "chunked-cut-mid-chunk": (_resp("HTTP/1.1 200 OK", "Transfer-Encoding: chunked", body=b"400\r\nabc"), "cut"),
    "reset-mid-body": (_resp("HTTP/1.1 200 OK", "Content-Length: 100000", body=b"x" * 5000) + b"|RESET", "cut"),
}


@dataclass
class Broken:
    """A tiny upstream that answers each request with canned (broken) bytes chosen by its path."""

    port: int
    seen: list[str] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def broken() -> AsyncIterator[Broken]:
    state = Broken(0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        state.tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"\r\ncontent-length: *(\d+)", head.lower())
            if m:
                await reader.readexactly(int(m.group(1)))
            path = head.split(b" ", 2)[1].decode()
            name = path.rsplit("/", 1)[-1]
            state.seen.append(name)
            what, _ = BROKEN[name]
            if what == "RESET":
                writer.transport.abort()
                return
            if what == "CLOSE":
                writer.close()
                return
            if what == "SILENT":
                await asyncio.sleep(30)
                return
            assert isinstance(what, bytes)
            data, _, then = what.partition(b"|")
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(0.05)
            if then == b"RESET":
                writer.transport.abort()
            else:
                writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            writer.transport.abort()
        finally:
            state.tasks.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    for t in list(state.tasks):
        t.cancel()
    await asyncio.sleep(0)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("name", list(BROKEN))
async def test_broken_upstream_is_502_or_a_cut_never_a_hang(
    make_proxy, upstream, secret_env, broken: Broken, name: str, method: str
) -> None:
    secret_env("HOSTILE_KEY", KEY)
    p = await make_proxy(
        f"""
        timeouts: {{upstream_headers: 1}}
        routes:
          - name: plain
            match: {upstream.authority}
            auth: {{type: api_key, header: X-Key, value: "${{HOSTILE_KEY}}"}}
          - name: broken
            match: {broken.authority}
            auth: {{type: api_key, header: X-Key, value: "${{HOSTILE_KEY}}"}}
        """
    )
    p.secrets.add(KEY)
    env = Env(p, upstream)
    _, outcome = BROKEN[name]
    body = "Content-Length: 2\r\n\r\nhi" if method == "POST" else "\r\n"
    resp, closed = await talk(
        p.port,
        f"{method} http://{broken.authority}/case/{name} HTTP/1.1\r\nHost: {broken.authority}\r\n"
        f"Connection: close\r\n{body}".encode(),
        wait=5,  # Connection: close: the answer ends with the connection, or it hung
    )
    assert closed, f"{name}: no answer and close within 5 s (a hang): {resp[:200]!r}"
    # RFC 9112 §9.3.1: a proxy MUST NOT retry a non-idempotent request; an idempotent one may be
    # replayed once on a connection that closed before answering (aiohttp does so).
    assert broken.seen == [name] * len(broken.seen) and 1 <= len(broken.seen) <= (2 if method == "GET" else 1), (
        f"{name}: the upstream saw {broken.seen}"
    )
    got_502 = bool(resp) and status_of(resp) == 502
    if outcome == "502":
        assert got_502, f"{name}: expected 502, got {resp[:300]!r}"
    elif outcome == "504":
        assert resp and status_of(resp) == 504, resp[:300]
        assert error_code(resp) == "upstream_timeout"
    elif outcome == "cut":
        assert closed
        head, body = head_and_body(resp)
        assert head.startswith(b"HTTP/1.1 200"), resp[:300]
        if b"content-length:" in head.lower():
            declared = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            assert len(body) < declared, "a cut body was padded or completed"
        else:
            assert not body.endswith(b"0\r\n\r\n"), "a cut chunked body was terminated as if complete"
    else:
        assert got_502 or (closed and resp.startswith(b"HTTP/1.1 200")), f"{name}: {resp[:300]!r}"
    if got_502:
        assert error_code(resp) == "upstream_error"
        p.bodies.append(head_and_body(resp)[1].decode("latin-1"))
    assert b"\x00" not in head_and_body(resp)[0], "a NUL from the upstream reached the client"
    await env.still_serving()
    env.no_internal_errors()


# -- HTTP versions other than 1.x: 505, closed -----------------------------------

VERSIONS: list[tuple[str, bytes, int, str]] = [
    ("http-2.0", b"GET http://{u}/a HTTP/2.0\r\nHost: {u}\r\n\r\n", 505, "http_version_not_supported"),
    ("http-2.0-no-host", b"GET http://{u}/a HTTP/2.0\r\n\r\n", 505, "http_version_not_supported"),
    ("http-1.2", b"GET http://{u}/a HTTP/1.2\r\nHost: {u}\r\n\r\n", 505, "http_version_not_supported"),
    ("http-3.0", b"GET http://{u}/a HTTP/3.0\r\nHost: {u}\r\n\r\n", 505, "http_version_not_supported"),
    ("http-0.9", b"GET http://{u}/a HTTP/0.9\r\n\r\n", 505, "http_version_not_supported"),
    (
        "http-9.9-post",
        b"POST http://{u}/a HTTP/9.9\r\nHost: {u}\r\nContent-Length: 0\r\n\r\n",
        505,
        "http_version_not_supported",
    ),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http_version_not_supported"),
    ("gateway-http-2.0", b"GET /gw/a HTTP/2.0\r\nHost: {u}\r\n\r\n", 505, "http_version_not_supported"),
    ("connect-http-2.0", b"CONNECT {u} HTTP/2.0\r\nHost: {u}\r\n\r\n", 505, "http_version_not_supported"),
    # A version that is not `digit.digit` is a malformed request line.
    ("version-1.10", b"GET http://{u}/a HTTP/1.10\r\nHost: {u}\r\n\r\n", 400, "bad_request"),
    ("version-2", b"GET http://{u}/a HTTP/2\r\nHost: {u}\r\n\r\n", 400, "bad_request"),
    ("version-lowercase", b"GET http://{u}/a http/1.1\r\nHost: {u}\r\n\r\n", 400, "bad_request"),
    ("version-garbage", b"GET http://{u}/a HTTP/x.y\r\nHost: {u}\r\n\r\n", 400, "bad_request"),
]


@pytest.mark.parametrize(("name", "raw", "status", "code"), VERSIONS, ids=[v[0] for v in VERSIONS])
async def test_http_version_other_than_1x_is_505(env: Env, name: str, raw: bytes, status: int, code: str) -> None:
    resp, closed = await talk(env.p.port, raw.replace(b"{u}", env.u.encode()))
    assert status_of(resp) == status, f"{name}: {resp[:300]!r}"
    assert error_code(resp) == code
    assert closed and b"connection: close" in head_and_body(resp)[0].lower()
    assert env.up.seen == []
    await env.still_serving()
    env.no_internal_errors()


# -- allow lists and path prefixes: what a Tomcat or Spring upstream reads --------

# Under `paths: [/v1/]` each of these would reach something outside /v1 on a server
# that cuts `;` parameters before removing dot segments, or is an encoded `/`, `.` or `\`.
TRAVERSALS = [
    "/v1/..;/admin",
    "/v1/..;x=1/admin",
    "/v1/..;/",
    "/v1/..;",
    "/v1/.;/x",
    "/v1/.;x=1/x",
    "/v1/x/..;/..;/admin",
    "/v1//..;/admin",
    "/v1/..;;/admin",
    "/v1/%2e%2e;/admin",
    "/v1/%2E%2E;/admin",
    "/v1/%2e.;/admin",
    "/v1/.%2E;/admin",
    "/v1/..%3b/admin",
    "/v1/..%3B/admin",
    "/v1/..%3bx=1/admin",
    "/v1/.%3b/x",
    "/v1/;/../admin",
    "/v1/;x=1/../admin",
    "/v1/%3b/../admin",
    "/v1/%2e%2e/v2/x",
    "/v1/%2E%2E/admin",
    "/v1/%2fadmin",
    "/v1%2F..%2Fadmin",
    "/v1/..%5cadmin",
]
# Parameters that change no segment, and `..;` in the query: forwarded as sent.
PARAMETERS_PASS = [
    "/v1/items;jsessionid=1",
    "/v1/items%3bjsessionid=1",
    "/v1/a;b=c/items",
    "/v1/;jsessionid=1",
    "/v1/...;/x",
    "/v1/x?next=/v1/..;/admin",
]


@pytest.fixture
async def ruled(make_proxy, upstream, secret_env) -> Env:
    """Plain and gateway routes whose credential may only GET or HEAD under /v1/."""
    secret_env("HOSTILE_KEY", KEY)
    u = upstream.authority
    p = await make_proxy(
        f"""
        routes:
          - name: ro
            match: {u}
            auth: {{type: api_key, header: X-Key, value: "${{HOSTILE_KEY}}"}}
            allow: [{{methods: [GET, HEAD], paths: [/v1/]}}]
          - name: gw
            gateway: /gw
            upstream: http://{u}/v1
            auth: {{type: api_key, header: X-Key, value: "${{HOSTILE_KEY}}"}}
            allow: [{{methods: [GET, HEAD], paths: [/v1/]}}]
          - name: open
            gateway: /open
            upstream: http://{u}
            auth: {{type: api_key, header: X-Key, value: "${{HOSTILE_KEY}}"}}
        """
    )
    p.secrets.add(KEY)
    return Env(p, upstream)


def _get(target: str, u: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {u}\r\n{extra}Connection: close\r\n\r\n".encode()


@pytest.mark.parametrize("path", TRAVERSALS)
@pytest.mark.parametrize("mode", ["plain", "gateway"])
async def test_path_servers_read_otherwise_is_400_under_an_allow_rule(ruled: Env, mode: str, path: str) -> None:
    target = f"http://{ruled.u}{path}" if mode == "plain" else "/gw" + path.removeprefix("/v1")
    resp, closed = await talk(ruled.p.port, _get(target, ruled.u))
    assert status_of(resp) == 400, f"{target}: {resp[:300]!r}"
    assert error_code(resp) == "bad_request" and closed
    assert ruled.up.seen == [], f"{target} reached the upstream with the credential"
    ruled.p.bodies.append(head_and_body(resp)[1].decode("latin-1"))


@pytest.mark.parametrize("path", PARAMETERS_PASS)
@pytest.mark.parametrize("mode", ["plain", "gateway"])
async def test_other_path_parameters_pass_an_allow_rule(ruled: Env, mode: str, path: str) -> None:
    target = f"http://{ruled.u}{path}" if mode == "plain" else "/gw" + path.removeprefix("/v1")
    resp, _ = await talk(ruled.p.port, _get(target, ruled.u))
    assert status_of(resp) == 200, f"{target}: {resp[:300]!r}"
    assert [s["raw_path"] for s in ruled.up.seen] == [path]


async def test_dot_segments_without_parameters_still_leave_the_allow_list(ruled: Env) -> None:
    resp, _ = await talk(ruled.p.port, _get(f"http://{ruled.u}/v1/../admin", ruled.u))
    assert status_of(resp) == 403 and error_code(resp) == "denied"
    assert ruled.up.seen == []


# Each of these asks a GET-only credential for another method in a header the upstream may obey.
OVERRIDES_REFUSED = [
    "X-HTTP-Method-Override: DELETE",
    "X-HTTP-Method: DELETE",
    "X-Method-Override: DELETE",
    "x-http-method-override: delete",
    "X-HTTP-METHOD-OVERRIDE:    DELETE   ",
    "X-HTTP-Method-Override:\tPATCH",
    "X-HTTP-Method-Override: POST",
    "X-HTTP-Method-Override: GET, DELETE",
    "X-HTTP-Method-Override: DELETE,GET",
    "X-HTTP-Method-Override: ,DELETE",
    "X-HTTP-Method-Override: GET\r\nX-HTTP-Method-Override: DELETE",
    "X-HTTP-Method-Override: GET\r\nX-Method-Override: PUT",
    "X_HTTP_Method_Override: DELETE",
    "X-HTTP-Method-Override: DEL ETE",
    # The path, where IIS URL Rewrite and older Symfony take it from a header.
    "X-Original-URL: /admin",
    "X-Rewrite-URL: /admin?x=1",
    "x_original_url: /v2/x",
    "X-Original-URL: http://elsewhere.example/admin",
    "X-Original-URL: /v1/x\r\nX-Original-URL: /admin",
    "X-Original-URL: /v1/x\r\nX-HTTP-Method-Override: DELETE",
]
OVERRIDES_PASS = [
    "X-HTTP-Method-Override: GET",
    "X-HTTP-Method-Override: head",
    "X-HTTP-Method: GET, HEAD",
    "X-HTTP-Method-Override:",
    "X-Not-A-Method-Override: DELETE",
    "X-Original-URL: /v1/other?q=..;",
    "X-Rewrite-URL: /v1/y\r\nX-HTTP-Method-Override: HEAD",
]


@pytest.mark.parametrize("header", OVERRIDES_REFUSED)
@pytest.mark.parametrize("mode", ["plain", "gateway"])
async def test_method_override_outside_the_allow_list_is_403(ruled: Env, mode: str, header: str) -> None:
    target = f"http://{ruled.u}/v1/x" if mode == "plain" else "/gw/x"
    resp, _ = await talk(ruled.p.port, _get(target, ruled.u, header + "\r\n"))
    assert status_of(resp) == 403, f"{header!r}: {resp[:300]!r}"
    assert error_code(resp) == "denied"
    detail = json.loads(head_and_body(resp)[1])["detail"].lower()
    assert any(h in detail for h in ("override", "x-http-method", "url")), detail  # it names the header
    assert ruled.up.seen == [], f"{header!r} reached the upstream with the credential"


@pytest.mark.parametrize("header", OVERRIDES_PASS)
async def test_method_override_inside_the_allow_list_passes(ruled: Env, header: str) -> None:
    resp, _ = await talk(ruled.p.port, _get(f"http://{ruled.u}/v1/x", ruled.u, header + "\r\n"))
    assert status_of(resp) == 200, f"{header!r}: {resp[:300]!r}"
    assert len(ruled.up.seen) == 1


async def test_path_header_no_rule_can_judge_is_400(ruled: Env) -> None:
    extra = "X-Original-URL: /v1/..;/admin\r\n"
    resp, _ = await talk(ruled.p.port, _get(f"http://{ruled.u}/v1/x", ruled.u, extra))
    assert status_of(resp) == 400 and error_code(resp) == "bad_request"
    assert ruled.up.seen == []


async def test_method_override_without_an_allow_list_is_forwarded(ruled: Env) -> None:
    resp, _ = await talk(ruled.p.port, _get("/open/x", ruled.u, "X-HTTP-Method-Override: DELETE\r\n"))
    assert status_of(resp) == 200
    assert [v for k, v in ruled.up.seen[0]["headers"] if k.lower() == "x-http-method-override"] == ["DELETE"]


async def test_path_and_override_rules_hold_inside_an_intercepted_connect(make_proxy, tls_upstream, secret_env) -> None:
    """The same judgement on a prefix route with an allow list, reached through interception."""
    tup, ca_path = tls_upstream
    secret_env("HOSTILE_KEY", KEY)
    p = await make_proxy(
        f"""
        routes:
          - name: secure
            match: {tup.authority}/v1
            ca_file: {ca_path}
            auth: {{type: api_key, header: X-Key, value: "${{HOSTILE_KEY}}"}}
            allow: [{{methods: [GET, HEAD], paths: [/v1/]}}]
        """
    )
    p.secrets.add(KEY)
    ca = p.runtime.ca
    assert ca is not None
    ctx = ssl.create_default_context(cafile=str(ca.files.cert))

    async def inside(data: bytes) -> bytes:
        reader, writer = await _connected(p, tup.authority)
        try:
            await writer.start_tls(ctx, server_hostname="127.0.0.1")
            writer.write(data)
            await writer.drain()
            resp, _ = await _read_until_close(reader, 5)
            return resp
        finally:
            writer.transport.abort()

    for path in TRAVERSALS:
        resp = await inside(_get(path, tup.authority))
        assert status_of(resp) == 400, f"{path}: {resp[:300]!r}"
    for header in OVERRIDES_REFUSED:
        resp = await inside(_get("/v1/x", tup.authority, header + "\r\n"))
        assert status_of(resp) == 403, f"{header!r}: {resp[:300]!r}"
    resp = await inside(b"GET /v1/x HTTP/2.0\r\nHost: %s\r\n\r\n" % tup.authority.encode())
    assert status_of(resp) == 505 and error_code(resp) == "http_version_not_supported"
    assert tup.seen == [], f"the upstream saw {[s['raw_path'] for s in tup.seen]}"
    resp = await inside(_get("/v1/items;jsessionid=1", tup.authority, "X-HTTP-Method-Override: HEAD\r\n"))
    assert status_of(resp) == 200
    assert [s["raw_path"] for s in tup.seen] == ["/v1/items;jsessionid=1"]


# -- one client cannot lock the others out ---------------------------------------


async def _silent(port: int, local: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))


async def _held_by(p: Proxy, addr: str, n: int) -> None:
    for _ in range(100):
        if p.server.per_client.get(addr, 0) == n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the proxy counts {p.server.per_client.get(addr)} connections from {addr}, not {n}")


async def test_one_address_is_held_to_its_connection_limit(make_proxy, upstream, secret_env) -> None:
    e = await _start(
        make_proxy,
        upstream,
        secret_env,
        "limits: {max_connections_per_client: 5}\n        timeouts: {client_header: 30}",
    )
    silent = [await _silent(e.p.port) for _ in range(5)]
    try:
        await _held_by(e.p, "127.0.0.1", 5)
        resp, closed = await talk(e.p.port, _get(f"http://{e.u}/sixth", e.u))
        assert status_of(resp) == 503 and error_code(resp) == "too_many_connections", resp[:300]
        assert closed
        assert e.up.seen == []
        assert await e.logged("error=too_many_connections")
        assert any("127.0.0.1" in line and "max_connections_per_client" in line for line in e.p.lines())
        # Another address (loopback too, but another client) is served meanwhile.
        reader, writer = await _silent(e.p.port, "127.0.0.2")
        writer.write(_get(f"http://{e.u}/other", e.u))
        resp, _ = await _read_until_close(reader, 5)
        writer.transport.abort()
        assert status_of(resp) == 200, resp[:300]
        assert [s["path"] for s in e.up.seen] == ["/other"]
        # A slot given back is a slot to use again.
        silent.pop()[1].transport.abort()
        await _held_by(e.p, "127.0.0.1", 4)
        await e.still_serving()
    finally:
        for _, w in silent:
            w.transport.abort()
    env_ok = Env(e.p, e.up)
    env_ok.no_internal_errors()


async def test_silent_sockets_are_closed_after_client_header_not_idle(make_proxy, upstream, secret_env) -> None:
    """Sockets that never send a byte hold every slot only for timeouts.client_header."""
    e = await _start(
        make_proxy,
        upstream,
        secret_env,
        "limits: {max_connections: 20, max_connections_per_client: 20}\n"
        "        timeouts: {client_header: 0.5, idle: 30}",
    )
    silent = [await _silent(e.p.port) for _ in range(20)]
    try:
        results = await asyncio.gather(*(_read_until_close(r, 10) for r, _ in silent))
    finally:
        for _, w in silent:
            w.transport.abort()
    # Closed well before the idle timeout, quietly: no request came to answer.
    assert all(closed and resp == b"" for resp, closed in results), results
    await _held_by(e.p, "127.0.0.1", 0)  # each slot given back
    await e.still_serving()
    e.no_internal_errors()


async def test_keep_alive_connection_keeps_the_idle_timeout(make_proxy, upstream, secret_env) -> None:
    e = await _start(make_proxy, upstream, secret_env, "timeouts: {client_header: 0.3, idle: 30}")
    reader, writer = await asyncio.open_connection("127.0.0.1", e.p.port)
    try:
        writer.write(f"GET http://{e.u}/first HTTP/1.1\r\nHost: {e.u}\r\n\r\n".encode())
        assert status_of(await _one_response(reader)) == 200
        await asyncio.sleep(1.0)  # past client_header, well within idle
        writer.write(f"GET http://{e.u}/second HTTP/1.1\r\nHost: {e.u}\r\n\r\n".encode())
        assert status_of(await _one_response(reader)) == 200
    finally:
        writer.transport.abort()
    assert [s["path"] for s in e.up.seen] == ["/first", "/second"]


async def test_silent_client_inside_an_intercepted_connect_is_closed_after_client_header(icpt) -> None:
    env, tup = icpt  # client_header 3, idle the default 60
    reader, writer = await _connected(env.p, tup.authority)
    ca = env.p.runtime.ca
    assert ca is not None
    await writer.start_tls(ssl.create_default_context(cafile=str(ca.files.cert)), server_hostname="127.0.0.1")
    resp, closed = await _read_until_close(reader, 10)
    writer.transport.abort()
    assert closed and resp == b"", resp[:300]
    await env.still_serving()


# -- proxy passwords bcrypt cannot take ------------------------------------------


async def test_proxy_password_over_72_bytes_is_407_and_the_proxy_keeps_serving(
    make_proxy, upstream, secret_env
) -> None:
    import base64

    import bcrypt

    good = "p" * 72  # the longest password bcrypt checks whole
    e = await _start(
        make_proxy,
        upstream,
        secret_env,
        f'proxy_auth: {{users: {{alice: "{bcrypt.hashpw(good.encode(), bcrypt.gensalt(4)).decode()}"}}}}',
    )
    e.p.secrets.add(good)

    def basic(pw: str) -> str:
        return "Proxy-Authorization: Basic " + base64.b64encode(f"alice:{pw}".encode()).decode() + "\r\n"

    for pw in ["p" * 100, "p" * 73, good + "x", "é" * 37, "q" * 4096]:
        resp, _ = await talk(e.p.port, _get(f"http://{e.u}/x", e.u, basic(pw)))
        assert status_of(resp) == 407, resp[:300]
        assert error_code(resp) == "proxy_auth_required"
        assert b"proxy-authenticate: basic" in head_and_body(resp)[0].lower()
    resp, _ = await talk(e.p.port, _get(f"http://{e.u}/x", e.u, basic("p" * 71 + "q")))
    assert status_of(resp) == 407
    assert e.up.seen == []
    resp, _ = await talk(e.p.port, _get(f"http://{e.u}/ok", e.u, basic(good)))
    assert status_of(resp) == 200
    e.no_internal_errors()
