"""Reload: SIGHUP and file changes swap the table atomically, a broken file changes nothing."""

from __future__ import annotations

import asyncio
import signal
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from authproxy.run.reload import Reloader
from tests.support.oauth_server import OAuthServer
from tests.support.proc import start_proxy

from .conftest import Upstream, assert_no_secrets

CC_SECRET = "reload-cc-secret-31"


def _write(cfg: Path, upstream: Upstream, server: OAuthServer, header: str, broken: bool = False) -> None:
    text = textwrap.dedent(
        f"""
        state_dir: {cfg.parent / "state"}
        routes:
          - name: oauth
            match: {upstream.authority}/oauth
            auth: {{type: client_credentials, token_url: {server.token_url}, client_id: svc,
                    client_secret: "${{RL_SECRET}}"}}
          - name: keyed
            match: {upstream.authority}/keyed
            auth: {{type: api_key, header: {header}, value: "${{RL_KEY}}"}}
        """
    )
    if broken:
        text += '  - name: broken\n    match: "bad*.example"\n    auth: {type: nope}\n'
    tmp = cfg.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(cfg)  # as editors do: a new file in place of the old


async def test_reload_under_load_never_fails_a_request(
    tmp_path: Path, upstream: Upstream, oauth_server: OAuthServer
) -> None:
    oauth_server.add_client("svc", CC_SECRET)
    # The OAuth route must bring a valid token; the keyed route sends none at all.
    upstream.check_auth = lambda h: h is None or (h.startswith("Bearer ") and oauth_server.is_valid(h[7:]))
    cfg = tmp_path / "routes.yaml"
    _write(cfg, upstream, oauth_server, "X-Key-One")
    p = start_proxy(cfg, env={"RL_SECRET": CC_SECRET, "RL_KEY": "reload-key-value-9"})
    failures: list[str] = []
    done = asyncio.Event()
    count = 0

    async def loop(client: httpx.AsyncClient) -> None:
        nonlocal count
        while not done.is_set():
            r = await client.get(f"{upstream.url}/oauth/x")
            count += 1
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:200]}")

    try:
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            workers = [asyncio.create_task(loop(client)) for _ in range(8)]
            await asyncio.sleep(1.0)
            _write(cfg, upstream, oauth_server, "X-Key-Two")  # picked up by the file watch
            for _ in range(100):
                await asyncio.sleep(0.1)
                r = await client.get(f"{upstream.url}/keyed/y")
                if [v for k, v in r.json()["headers"] if k == "X-Key-Two"]:
                    break
            else:
                raise AssertionError("the file change was not picked up")
            _write(cfg, upstream, oauth_server, "X-Key-Three", broken=True)
            p.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.5)
            r = await client.get(f"{upstream.url}/keyed/z")
            names = [k for k, _ in r.json()["headers"]]
            assert "X-Key-Two" in names and "X-Key-Three" not in names  # the old table stayed
            done.set()
            await asyncio.gather(*workers)
    finally:
        assert p.stop() == 0
    assert failures == []
    assert count > 50
    # The unchanged OAuth route kept its token through both reloads.
    assert oauth_server.token_requests() == 1
    log = p.stderr_text()
    assert "reloaded (file changed): 2 routes" in log
    assert "reload (SIGHUP) failed:" in log and f"{cfg}:" in log and "routes[2].match" in log
    assert "the previous route table stays in force" in log
    assert_no_secrets([log], [CC_SECRET, "reload-key-value-9", *oauth_server.issued()])


async def test_changed_grant_drops_its_token(tmp_path: Path, upstream: Upstream, oauth_server: OAuthServer) -> None:
    oauth_server.add_client("svc", CC_SECRET, scope="a b")
    cfg = tmp_path / "routes.yaml"

    def write(scope: str) -> None:
        cfg.write_text(
            textwrap.dedent(f"""
            state_dir: {tmp_path / "state"}
            routes:
              - name: oauth
                match: {upstream.authority}
                auth: {{type: client_credentials, token_url: {oauth_server.token_url}, client_id: svc,
                        client_secret: "${{RL_SECRET}}", scope: {scope}}}
            """)
        )

    write("a")
    p = start_proxy(cfg, env={"RL_SECRET": CC_SECRET})
    try:
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            assert (await client.get(f"{upstream.url}/1")).status_code == 200
            write("b")
            p.proc.send_signal(signal.SIGHUP)
            for _ in range(50):
                await asyncio.sleep(0.1)
                if "reloaded (SIGHUP)" in p.stderr_text():
                    break
            assert (await client.get(f"{upstream.url}/2")).status_code == 200
    finally:
        p.stop()
    assert oauth_server.token_requests() == 2
    assert oauth_server.last_request()["params"]["scope"] == "b"


@asynccontextmanager
async def _held_upstream() -> AsyncIterator[tuple[int, list[asyncio.Event], asyncio.Event]]:
    """A real aiohttp upstream that answers only when told: (port, one event per request arrived, release)."""
    arrived = [asyncio.Event() for _ in range(4)]
    release = asyncio.Event()
    count = 0

    async def held(request: web.Request) -> web.Response:
        nonlocal count
        await request.read()
        arrived[count].set()
        count += 1
        await release.wait()
        return web.Response(text="answered late")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", held)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, arrived, release
    finally:
        release.set()
        await runner.cleanup()


async def _read_until(reader: asyncio.StreamReader, mark: bytes) -> bytes:
    return await asyncio.wait_for(reader.readuntil(mark), 30)  # a hang guard only


async def test_a_reload_mid_request_keeps_the_requests_timeouts(
    make_proxy: Callable[[str], Any], tmp_path: Path
) -> None:
    """A request keeps the snapshot it started with; the next one takes the reloaded timeouts.

    Request A is held inside the proxy (its head read, its body awaited for a
    possible 401 retry, the ``100 Continue`` saying so) while the file is
    reloaded with a short ``upstream_headers``. Request B, sent after A reached
    the upstream, gets the new timeout's 504; A, whose wait began earlier, is
    still waiting then and gets the upstream's late answer.
    """
    token = tmp_path / "token"
    token.write_text("reload-bearer-token-77\n")
    async with _held_upstream() as (port, arrived, release):

        def config(upstream_headers: float) -> str:
            return textwrap.dedent(f"""
                state_dir: {tmp_path / "state"}
                timeouts: {{upstream_headers: {upstream_headers}}}
                routes:
                  - name: held
                    match: 127.0.0.1:{port}
                    auth: {{type: bearer, token_file: {token}}}
                """)

        p = await make_proxy(config(60))
        p.secrets.add("reload-bearer-token-77")
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(
            f"POST http://127.0.0.1:{port}/a HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert b" 100 " in await _read_until(reader, b"\r\n\r\n")  # A has its snapshot and waits for its body

        p.config_path.write_text(config(0.3))
        assert await Reloader(p.runtime, p.config_path).reload("test")
        writer.write(b"hello")
        await asyncio.wait_for(arrived[0].wait(), 30)

        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            b = await client.get(f"http://127.0.0.1:{port}/b")
        assert b.status_code == 504 and b.json()["error"] == "upstream_timeout"

        release.set()
        head = await _read_until(reader, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"answered late" in await asyncio.wait_for(reader.read(1000), 30)
        writer.close()
    b_line, a_line = p.access_lines()  # in the order they ended: B's 504 first, A answered after it
    assert " /b " in b_line and "status=504" in b_line and "error=upstream_timeout" in b_line, b_line
    assert " /a " in a_line and "status=200" in a_line and "error=" not in a_line, a_line
