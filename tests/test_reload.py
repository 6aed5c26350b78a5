"""Reload: SIGHUP and file changes swap the table atomically, a broken file changes nothing."""

from __future__ import annotations

import asyncio
import signal
import textwrap
from pathlib import Path

import httpx

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
