"""Full duplex: a request body keeps flowing upstream while the response streams back.

HTTP/1.1 lets a server answer before it has read the whole request and keep
reading (RFC 9112 §9.3, RFC 9110 §15): an echo, a transcoder, a streaming API.
A real aiohttp server here echoes each chunk as it reads it, 20 MiB both ways,
through the proxy's three modes with Content-Length and chunked uploads, sent by
aiohttp's client (it writes the body in a task of its own while it reads the
answer) and by curl. A proxy that stopped sending the body at the response head
would stall here until ``timeouts.idle`` (short in these configs) and cut the
client.

Early final answers (a 413 with ``Connection: close``, a 401, a 403, sent
before the body was read) still reach the client at once, while it is still
sending or holding the rest of its body back, and the proxy serves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import random
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from authproxy.config import Timeouts
from authproxy.messages import Origin
from authproxy.upstream.h1client import H1Connection
from authproxy.upstream.pool import Pool
from tests.support.liveness import alive
from tests.support.proc import start_proxy

from .conftest import Proxy, assert_no_secrets

KEY = "duplex-key-7e6d5c4b3a29"
SIZE = 20 * 1024 * 1024
PIECE = 64 * 1024
MIB = 1024 * 1024
TOKENS = ("duplex-token-one-0b1c2d", "duplex-token-two-3e4f5a")
IDLE = 5  # timeouts.idle: a stalled exchange fails within seconds, not a minute


@pytest.fixture(scope="module")
def payload() -> bytes:
    """20 MiB that differ all the way through: a reordered or repeated block changes the hash."""
    return random.Random(1337).randbytes(SIZE)


@dataclass
class Echo:
    """An aiohttp server that answers at once and then echoes each chunk of the body as it reads it."""

    port: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"


def _echo_app(echo: Echo) -> web.Application:
    """``/reset`` cuts the connection after 1 MiB; ``/half`` answers in full after echoing 1 MiB of a longer body."""

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        info: dict[str, Any] = {
            "path": request.path_qs,
            "peer": request.transport.get_extra_info("peername")[1],
            "key": request.headers.get("X-Key") == KEY,
            "length": request.headers.get("Content-Length"),
            "chunked": request.headers.get("Transfer-Encoding", "").lower() == "chunked",
            "size": 0,
            "complete": False,
        }
        echo.seen.append(info)
        stop = MIB if request.path in ("/reset", "/half") else None
        resp = web.StreamResponse(headers={"X-Key-Seen": "yes" if info["key"] else "no"})
        if request.path == "/half":
            resp.content_length = MIB
        elif request.content_length is not None:
            resp.content_length = request.content_length
        await resp.prepare(request)  # the answer starts before a byte of the body was read
        try:
            while chunk := await request.content.read(PIECE if stop is None else min(PIECE, stop - info["size"])):
                info["size"] += len(chunk)
                await resp.write(chunk)
                if info["size"] == stop:
                    break
            else:
                info["complete"] = True
        except Exception as exc:
            info["error"] = type(exc).__name__
            raise
        if request.path == "/reset":
            request.transport.abort()
            return resp
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def _serve(app: web.Application, ctx: ssl.SSLContext | None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    return runner, runner.addresses[0][1]


@dataclass
class Env:
    p: Proxy
    plain: Echo
    tls: Echo
    client_ctx: ssl.SSLContext  # trusts the proxy's CA, for the intercepted requests


@pytest.fixture
async def env(make_proxy, secret_env, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Env]:
    plain, tls = Echo(), Echo()
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_path = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    plain_runner, plain.port = await _serve(_echo_app(plain), None)
    tls_runner, tls.port = await _serve(_echo_app(tls), server_ctx)
    secret_env("DUPLEX_KEY", KEY)
    auth = '{type: api_key, header: X-Key, value: "${DUPLEX_KEY}"}'
    p = await make_proxy(
        f"""
        timeouts: {{idle: {IDLE}}}
        routes:
          - name: plain
            match: {plain.authority}
            auth: {auth}
          - name: secure
            match: {tls.authority}
            ca_file: {ca_path}
            auth: {auth}
          - name: gw
            gateway: /gw
            upstream: http://{plain.authority}
            auth: {auth}
        """
    )
    p.secrets.add(KEY)
    assert p.runtime.ca is not None
    client_ctx = ssl.create_default_context(cafile=str(p.runtime.ca.files.cert))
    try:
        yield Env(p, plain, tls, client_ctx)
    finally:
        await plain_runner.cleanup()
        await tls_runner.cleanup()
    # A sender task left failing or pending would be reported by asyncio once collected.
    gc.collect()
    records = [*caplog.get_records("call"), *caplog.records]
    assert not [r.getMessage() for r in records if r.name == "asyncio" and r.levelno >= logging.ERROR]


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), PIECE):
        yield data[i : i + PIECE]


async def _round_trip(url: str, data: bytes, chunked: bool, **kw: Any) -> tuple[int, str, int, str]:
    """POST ``data`` and read the answer while it is being sent: status, SHA-256 and size of the answer."""
    digest, size = hashlib.sha256(), 0
    async with asyncio.timeout(120), aiohttp.ClientSession() as session:
        body = _pieces(data) if chunked else data
        async with session.post(url, data=body, **kw) as r:
            async for chunk in r.content.iter_chunked(PIECE):
                digest.update(chunk)
                size += len(chunk)
            return r.status, digest.hexdigest(), size, r.headers.get("X-Key-Seen", "")


MODES = ["plain", "intercept", "gateway"]


def _request(env: Env, mode: str, path: str) -> tuple[str, Echo, dict[str, Any]]:
    if mode == "plain":
        return f"http://{env.plain.authority}{path}", env.plain, {"proxy": env.p.url}
    if mode == "intercept":
        return f"https://{env.tls.authority}{path}", env.tls, {"proxy": env.p.url, "ssl": env.client_ctx}
    return f"{env.p.url}/gw{path}", env.plain, {}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("mode", MODES)
async def test_20mb_echoed_while_it_is_uploaded(env: Env, payload: bytes, mode: str, chunked: bool) -> None:
    url, echo, kw = _request(env, mode, "/echo")
    status, sha, size, key_seen = await _round_trip(url, payload, chunked, **kw)
    assert status == 200
    assert size == SIZE and sha == hashlib.sha256(payload).hexdigest()
    assert key_seen == "yes"
    seen = echo.seen[0]
    assert seen["size"] == SIZE and seen["complete"]
    # The client's framing is kept: a length when it gave one, chunked when it did not.
    assert seen["chunked"] is chunked and seen["length"] == (None if chunked else str(SIZE))
    line = await _access_line(env.p, "/gw/echo" if mode == "gateway" else "/echo")
    assert "status=200" in line and f"in={SIZE} out={SIZE}" in line and "error=" not in line
    # The proxy serves on, and the exchange left nothing broken behind it.
    status, _, size, _ = await _round_trip(url.replace("/echo", "/again"), b"x" * 1000, False, **kw)
    assert (status, size) == (200, 1000)
    # Both the request and the response were complete: the upstream connection was reused.
    assert [s["peer"] for s in echo.seen] == [seen["peer"]] * 2


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response's head and body, framed by Content-Length or chunked."""
    async with asyncio.timeout(30):
        head = await reader.readuntil(b"\r\n\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in head.split(b"\r\n")[1:])}
        if b"content-length" in fields:
            return head, await reader.readexactly(int(fields[b"content-length"]))
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
        return head, body


async def test_bodies_at_hand_leave_with_the_head_and_keep_the_connection(env: Env, payload: bytes) -> None:
    """Bodies that arrived with their head, in both framings and every size class, on one kept connection each way."""
    big = payload[:300_000]  # more than goes with the head in one write
    cases = [
        ("Content-Length: 5", b"hello", b"hello"),
        ("Transfer-Encoding: chunked", b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
        ("Transfer-Encoding: chunked", b"0\r\n\r\n", b""),
        (f"Content-Length: {len(big)}", big, big),
        ("Transfer-Encoding: chunked", b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big), big),
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", env.p.port)
    try:
        for framing, wire, expected in cases:
            writer.write(_head(env.plain.port, "/at-hand", framing) + wire)
            await writer.drain()
            head, body = await _read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 ") and body == expected, (framing, head[:200])
    finally:
        writer.transport.abort()
    assert [s["size"] for s in env.plain.seen] == [len(e) for _, _, e in cases]
    assert all(s["complete"] for s in env.plain.seen)
    assert len({s["peer"] for s in env.plain.seen}) == 1, "a complete exchange did not leave its connection reusable"


async def test_curl_upload_echoed_through_the_proxy(env: Env, payload: bytes, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is installed by the test command (apt) and must be on PATH"
    src, out = tmp_path / "up.bin", tmp_path / "down.bin"
    src.write_bytes(payload)
    proc = await asyncio.create_subprocess_exec(
        curl, "-sS", "--fail", "-x", env.p.url, "--data-binary", f"@{src}", "-o", str(out),
        f"http://{env.plain.authority}/curl",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(payload).hexdigest()


async def test_an_upstream_reset_mid_exchange_cuts_only_that_client(env: Env, payload: bytes) -> None:
    url, echo, kw = _request(env, "plain", "/reset")
    with pytest.raises(aiohttp.ClientError):
        await _round_trip(url, payload, False, **kw)
    assert echo.seen[0]["size"] == MIB
    line = await _access_line(env.p, "/reset")
    assert "status=200" in line and "error=upstream_broke_off" in line, line
    status, sha, size, _ = await _round_trip(url.replace("/reset", "/after"), payload[:MIB], True, **kw)
    assert (status, size, sha) == (200, MIB, hashlib.sha256(payload[:MIB]).hexdigest())


@pytest.mark.parametrize("how", ["vanishes", "sends a malformed chunk"])
async def test_a_client_breaking_off_mid_exchange_never_completes_the_upstream_request(
    env: Env, payload: bytes, how: str
) -> None:
    """The client goes (or sends garbage) after 2 MiB of its 20: the upstream must see the request broken off."""
    chunked = how != "vanishes"
    first = payload[: 2 * MIB]
    if chunked:
        first = b"%x\r\n%s\r\n" % (len(first), first)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {SIZE}"
    reader, writer = await asyncio.open_connection("127.0.0.1", env.p.port)
    try:
        writer.write(_head(env.plain.port, "/broken", framing) + first)
        await writer.drain()
        async with asyncio.timeout(30):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(MIB)  # the echo is flowing
        if chunked:
            writer.write(b"zz\r\n")  # not a chunk size (RFC 9112 §7.1)
            _, closed = await _answer_then_close(reader)
            assert closed, "the proxy kept a connection whose body it cannot frame"
    finally:
        writer.transport.abort()
    line = await _access_line(env.p, "/broken")
    code = "bad_request" if chunked else "client_gone"
    assert "status=200" in line and f"error={code}" in line, line
    for _ in range(100):
        if "error" in env.plain.seen[0]:
            break
        await asyncio.sleep(0.05)
    seen = env.plain.seen[0]
    assert not seen["complete"] and seen["size"] <= 2 * MIB and seen.get("error"), seen
    status, _, size, _ = await _round_trip(f"http://{env.plain.authority}/after", b"y" * 5000, False, proxy=env.p.url)
    assert (status, size) == (200, 5000)


async def test_an_answer_complete_before_the_body_ends_is_relayed_and_the_rest_dropped(
    env: Env, payload: bytes
) -> None:
    """The upstream echoes 1 MiB of a 20 MiB body and finishes its response; the client is still sending.

    The complete answer reaches the client, the rest of the body is not sent
    on (the upstream connection is not reused, RFC 9112 §9.3), and the client
    connection closes, since a body this large is not worth reading to keep it.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", env.p.port)
    writer.write(_head(env.plain.port, "/half", f"Content-Length: {SIZE}"))

    async def push() -> None:
        for i in range(0, SIZE, PIECE):
            writer.write(payload[i : i + PIECE])
            await writer.drain()

    pusher = asyncio.create_task(push())
    try:
        answer, closed = await _answer_then_close(reader)
    finally:
        pusher.cancel()
        await asyncio.gather(pusher, return_exceptions=True)
        writer.transport.abort()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == payload[:MIB]
    assert closed
    line = await _access_line(env.p, "/half")
    assert "status=200" in line and "error=" not in line, line
    status, _, size, _ = await _round_trip(f"http://{env.plain.authority}/after", b"y" * 5000, True, proxy=env.p.url)
    assert (status, size) == (200, 5000)
    peers = [s["peer"] for s in env.plain.seen]
    assert peers[1] != peers[0], "a connection whose request was not all sent was used again"


async def test_memory_stays_flat_both_ways_while_the_client_does_not_read(tmp_path: Path, payload: bytes) -> None:
    """Backpressure both ways, on a real proxy process: a client that sends without reading is held back.

    The client pushes a 64 MiB body as fast as it can and reads nothing for
    2 s: the echo fills the way back, the upstream stops reading, and so must
    the proxy; its memory stays flat (socket buffers, not the body, hold the
    bytes in flight). Once the client reads, every byte comes back.
    """
    echo = Echo()
    runner, echo.port = await _serve(_echo_app(echo), None)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        f'''timeouts: {{idle: {IDLE}}}\nroutes:\n  - {{name: echo, match: "{echo.authority}", auth: {{type: api_key, value: "${{DUPLEX_KEY}}"}}}}\n'''
    )
    p = start_proxy(cfg, env={"DUPLEX_KEY": KEY})
    size = 64 * MIB
    body = (payload * 4)[:size]
    try:
        status, _, _, _ = await _round_trip(f"http://{echo.authority}/warm", payload[:MIB], False, proxy=p.url)
        assert status == 200
        base = p.rss_kib()
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(_head(echo.port, "/big", f"Content-Length: {size}"))
        sent = 0

        async def push() -> None:
            nonlocal sent
            for i in range(0, size, MIB):
                writer.write(body[i : i + MIB])
                await writer.drain()
                sent += MIB

        pusher = asyncio.create_task(push())
        await asyncio.sleep(2.0)
        held_at, growth = sent, p.rss_kib() - base
        digest, got = hashlib.sha256(), 0
        async with asyncio.timeout(120):
            head = await reader.readuntil(b"\r\n\r\n")
            while got < size:
                chunk = await reader.read(MIB)
                assert chunk, "the proxy closed in the middle of the answer"
                digest.update(chunk)
                got += len(chunk)
            await pusher
        writer.close()
    finally:
        await runner.cleanup()
        assert p.stop() == 0
    assert head.startswith(b"HTTP/1.1 200 ")
    assert digest.hexdigest() == hashlib.sha256(body).hexdigest()
    assert held_at < size, "the client sent its whole body while nobody read the echo"
    assert growth < 16 * 1024, f"RSS grew by {growth // 1024} MiB while the client read nothing"
    assert_no_secrets([p.stderr_text()], [KEY])


async def _access_line(p: Proxy, path: str) -> str:
    for _ in range(100):  # the line is written after the answer's last byte
        lines = [x for x in p.access_lines() if f" {path} " in x]
        if lines:
            return lines[-1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no access line for {path}")


# -- early final answers -------------------------------------------------------


@dataclass
class Refuser:
    """A raw upstream that answers each request from its head alone, never reading the body.

    ``/413`` closes the way RFC 9112 §9.6 asks of a server that will not read
    the rest: it answers with ``Connection: close``, half-closes, and reads
    (and drops) what still comes for a while, so its answer is not lost to a
    reset. ``/401`` and ``/403`` keep the connection and drop the body unread.
    """

    port: int = 0
    heads: list[bytes] = field(default_factory=list)
    token_file: Path | None = None  # rewritten at each request under /bearer/: a 401 may then be retried

    def _rotate(self, head: bytes) -> None:
        if self.token_file is not None and head.split(b" ", 2)[1].startswith(b"/bearer/"):
            old = self.token_file.read_text().strip()
            self.token_file.write_text((TOKENS[1] if old == TOKENS[0] else TOKENS[0]) + "\n")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                self._rotate(head)
                code = int(head.split(b" ", 2)[1].rsplit(b"/", 1)[1])
                body = b'{"error": "refused"}'
                close = b"Connection: close\r\n" if code == 413 else b""
                writer.write(
                    b"HTTP/1.1 %d Refused\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                    % (code, len(body), close, body)
                )
                await writer.drain()
                if code == 413:
                    writer.write_eof()
                    async with asyncio.timeout(10):
                        while await reader.read(1 << 20):
                            pass
                    return
                await _skip_body(reader, head)  # then the next request on this connection
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.transport.abort()


async def _skip_body(reader: asyncio.StreamReader, head: bytes) -> None:
    """Read and drop a request body by its framing (RFC 9112 §6.3), the way a keep-alive server must."""
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass
        return
    left = int(fields.get(b"content-length", b"0"))
    while left:
        left -= len(await reader.readexactly(min(left, 1 << 20)))


@pytest.fixture
async def refuser(make_proxy, secret_env, tmp_path: Path) -> AsyncIterator[tuple[Proxy, Refuser, Path, Echo]]:
    up, echo = Refuser(), Echo()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    up.port = server.sockets[0].getsockname()[1]
    runner, echo.port = await _serve(_echo_app(echo), None)
    token = up.token_file = tmp_path / "token"
    token.write_text(TOKENS[0] + "\n")
    secret_env("DUPLEX_KEY", KEY)
    p = await make_proxy(
        f"""
        timeouts: {{idle: {IDLE}}}
        limits: {{replay_body: 65536}}
        routes:
          - name: refuser
            match: 127.0.0.1:{up.port}
            auth: {{type: api_key, header: X-Key, value: "${{DUPLEX_KEY}}"}}
          - name: replayable
            match: 127.0.0.1:{up.port}/bearer/
            auth: {{type: bearer, token_file: {token}}}
          - name: echo
            match: {echo.authority}
            auth: {{type: api_key, header: X-Key, value: "${{DUPLEX_KEY}}"}}
        """
    )
    p.secrets.update({KEY, *TOKENS})
    try:
        yield p, up, token, echo
    finally:
        server.close()
        await runner.cleanup()


def _head(port: int, path: str, framing: str) -> bytes:
    return f"POST http://127.0.0.1:{port}{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{framing}\r\n\r\n".encode()


async def _answer_then_close(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """The proxy's answer, and whether it then closed (it must not wait for a body it will not read)."""
    out = b""
    try:
        async with asyncio.timeout(30):
            while chunk := await reader.read(65536):
                out += chunk
    except (ConnectionError, OSError):
        pass
    except TimeoutError:
        return out, False
    return out, True


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/413", "/401", "/403", "/bearer/401"])
async def test_an_early_refusal_reaches_a_client_that_holds_its_body_back(refuser, path: str, framing: str) -> None:
    """The client sends 256 KiB of a 20 MiB body, then waits for the answer before sending more."""
    p, up, _, _ = refuser
    header = f"Content-Length: {SIZE}" if framing == "content-length" else "Transfer-Encoding: chunked"
    part = b"a" * (256 * 1024)
    if framing == "chunked":
        part = b"%x\r\n%s\r\n" % (len(part), part)
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    try:
        writer.write(_head(up.port, path, header) + part)
        await writer.drain()
        answer, closed = await _answer_then_close(reader)
    finally:
        writer.transport.abort()
    status = int(path.rsplit("/", 1)[1])
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert answer.endswith(b'{"error": "refused"}')
    assert closed, "the proxy held the connection open for a body nobody will read"
    line = await _access_line(p, path)
    assert f"status={status}" in line and "error=" not in line
    if path == "/bearer/401":
        # The token changed meanwhile, so only the body stops a retry: streamed, it cannot be sent twice.
        assert "retry=skipped" in line
    await _still_serving(refuser)


async def test_an_early_413_reaches_a_client_that_keeps_sending(refuser) -> None:
    """The client pushes its 20 MiB as fast as it can while it reads; the answer must not wait for the body."""
    p, up, _, _ = refuser
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(_head(up.port, "/413", f"Content-Length: {SIZE}"))
    sent = 0

    async def push() -> None:
        nonlocal sent
        block = b"b" * PIECE
        while sent < SIZE:
            writer.write(block)
            await writer.drain()
            sent += len(block)

    pusher = asyncio.create_task(push())
    try:
        answer, _ = await _answer_then_close(reader)
    finally:
        pusher.cancel()
        await asyncio.gather(pusher, return_exceptions=True)
        writer.transport.abort()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert answer.endswith(b'{"error": "refused"}')
    await _still_serving(refuser)


async def test_a_401_for_a_buffered_body_is_retried(refuser) -> None:
    """The 401 rule: a body within limits.replay_body was kept, so it is sent again with the new token."""
    p, up, _, _ = refuser
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    try:
        writer.write(_head(up.port, "/bearer/401", "Content-Length: 10") + b"0123456789")
        await writer.drain()
        answer = await _one_response(reader)
    finally:
        writer.transport.abort()
    assert answer.startswith(b"HTTP/1.1 401 ")  # the refuser refuses the new token too
    line = await _access_line(p, "/bearer/401")
    assert "retry=done" in line and "in=10 " in line, line
    assert len(up.heads) == 2
    assert [h for h in up.heads[1].split(b"\r\n") if h.lower().startswith(b"authorization:")] == [
        f"Authorization: Bearer {TOKENS[1]}".encode()
    ]


async def _one_response(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(30):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length"
        )
        return head + await reader.readexactly(length)


async def _still_serving(refuser: tuple[Proxy, Refuser, Path, Echo]) -> None:
    p, _, _, echo = refuser
    status, sha, size, key_seen = await _round_trip(f"http://{echo.authority}/after", b"z" * 300_000, True, proxy=p.url)
    assert (status, size, key_seen) == (200, 300_000, "yes")
    assert sha == hashlib.sha256(b"z" * 300_000).hexdigest()
    assert_no_secrets(p.lines(), p.secrets)


# -- the upstream connection, used directly --------------------------------------


async def _answer_early_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A whole answer from the head alone, then a close (lingering, RFC 9112 §9.6) without reading the body."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.write_eof()
        while await reader.read(65536):
            pass
    writer.transport.abort()


async def test_a_body_still_coming_when_the_answer_ends_stops_and_frees_the_connection() -> None:
    """The client's body waits on a chunk that never comes; the answer ends: the sender stops, nothing leaks.

    Freed by reference counting alone (no cycle through the sender task), and
    the body is not read any further once the answer is complete.
    """
    server = await asyncio.start_server(_answer_early_and_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool(Timeouts(connect=5, idle=30, upstream_headers=5), 64 * 1024)
    never = asyncio.Event()
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        pulled.append(1)
        await never.wait()  # a client holding the rest back
        pulled.append(2)
        yield b"never sent"

    gc.disable()
    try:
        headers = [(b"Host", f"127.0.0.1:{port}".encode())]
        async with asyncio.timeout(10):  # the answer must not wait for the body
            resp = await pool.request(Origin("http", "127.0.0.1", port), None, "POST", "/", headers, body(), None, 5)
        conn_id = id(next(iter(pool._all)))
        assert alive(conn_id, H1Connection)
        assert resp.status == 200 and b"".join([chunk async for chunk in resp]) == b"ok"
        del resp
        for _ in range(100):  # loop turns, until the cancelled sender and connection_lost have run
            if not alive(conn_id, H1Connection):
                break
            await asyncio.sleep(0)
        assert not alive(conn_id, H1Connection), "the connection outlived its exchange (a cycle through the sender?)"
        never.set()
        await asyncio.sleep(0)
        assert pulled == [1]
    finally:
        gc.enable()
        server.close()
        await pool.close()
