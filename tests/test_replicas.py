"""Three `authproxy run` replicas sharing one token store on a real redis-server.

Each replica has its own state directory, so whatever they share goes through
Redis. What is observed, never asked of the proxy: the token requests the
Authlib server saw (with its reuse detection, which revokes the whole grant),
what the clients got, the records in Redis (opened with the test's copy of
the key), Redis's own command counters, and every line the replicas wrote.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from authproxy.secrecy.sealing import Sealer
from tests.support.forms import secret_forms
from tests.support.oauth_server import OAuthServer
from tests.support.proc import ProxyProcess, start_proxy
from tests.support.redisd import RedisServer, redis_server

from .conftest import Upstream, assert_no_secrets

__all__ = ["redis_server"]

KEY = base64.b64encode(os.urandom(32)).decode()
SEALER = Sealer(base64.b64decode(KEY))
CC_SECRET = "rep-cc-s3cret-7Hq2Lw"
RT_SECRET = "rep-rt-client-s3cret-91xk"


def _key(kind: str, route: str) -> str:
    return "authproxy:" + SEALER.name(kind, route)


def _record(server: RedisServer, route: str) -> dict[str, Any] | None:
    blob = server.client().get(_key("record", route))
    return None if blob is None else SEALER.open(blob, _key("record", route))


class Fleet:
    def __init__(self, tmp_path: Path, redis: RedisServer, upstream: Upstream, oauth: OAuthServer) -> None:
        self.tmp, self.redis, self.upstream, self.oauth = tmp_path, redis, upstream, oauth
        oauth.add_client("svc", CC_SECRET, grant_types=("client_credentials",))
        oauth.add_client("crm", RT_SECRET, grant_types=("refresh_token",))
        oauth.add_client("erp", RT_SECRET, grant_types=("refresh_token",))
        self.env = {
            "STORE_KEY": KEY,
            "CC_SECRET": CC_SECRET,
            "RT_SECRET": RT_SECRET,
            "RT_SEED": oauth.issue_refresh_token("crm"),
            "ERP_SEED": oauth.issue_refresh_token("erp"),
        }
        upstream.check_auth = lambda h: bool(h and h.startswith("Bearer ") and oauth.is_valid(h[7:]))
        self.procs: list[ProxyProcess] = []

    def config(self, i: int, token_fetch: float, admin: bool = False) -> Path:
        up, srv = self.upstream.authority, self.oauth.token_url
        text = f"""
        state_dir: {self.tmp / f"state{i}"}
        {"admin: 127.0.0.1:0" if admin else ""}
        timeouts: {{token_fetch: {token_fetch}}}
        token_store: {{url: "{self.redis.url}", key: "${{STORE_KEY}}"}}
        routes:
          - name: billing
            match: {up}/billing/
            auth: {{type: client_credentials, token_url: {srv}, client_id: svc,
                    client_secret: "${{CC_SECRET}}", scope: read}}
          - name: crm
            match: {up}/crm/
            auth: {{type: refresh_token, token_url: {srv}, client_id: crm,
                    client_secret: "${{RT_SECRET}}", refresh_token: "${{RT_SEED}}"}}
          - name: erp
            match: {up}/erp/
            auth: {{type: refresh_token, token_url: {srv}, client_id: erp,
                    client_secret: "${{RT_SECRET}}", refresh_token: "${{ERP_SEED}}"}}
        """
        path = self.tmp / f"routes{i}.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    def start(
        self, n: int = 3, token_fetch: float = 8.0, workers: dict[int, int] | None = None, admin: bool = False
    ) -> list[ProxyProcess]:
        out = []
        for i in range(len(self.procs), len(self.procs) + n):
            extra = ("--workers", str(workers[i])) if workers and i in workers else ()
            out.append(start_proxy(self.config(i, token_fetch, admin), *extra, env=self.env))
        self.procs += out
        return out

    def stop(self) -> None:
        for p in self.procs:
            p.stop(signal.SIGKILL if p.proc.poll() is None and _stopped(p) else signal.SIGTERM)

    def refreshes(self, status: int | None = None) -> int:
        return sum(
            1
            for r in self.oauth.all_requests()
            if r["grant_type"] == "refresh_token" and (status is None or r["status"] == status)
        )

    def secrets(self) -> list[str]:
        return [
            KEY,
            CC_SECRET,
            RT_SECRET,
            *self.oauth.issued(),
            *self.oauth.issued_refresh_tokens(),
        ]

    def texts(self) -> list[str]:
        return [p.stderr_text() for p in self.procs]


async def _metric(p: ProxyProcess, name: str, **labels: str) -> float:
    """A sample from the replica's admin listener (``Fleet.start(admin=True)``), summed over other labels."""
    from prometheus_client.parser import text_string_to_metric_families

    m = await _until("the admin address", lambda: re.search(r"admin listener on (127\.0\.0\.1:\d+)", p.stderr_text()))
    text = httpx.get(f"http://{m.group(1)}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _tokens_seen(upstream: Upstream, prefix: str) -> set[str]:
    """The bearer tokens the upstream saw on paths under ``prefix``."""
    return {
        v[7:]
        for seen in upstream.seen
        if seen["path"].startswith(prefix)
        for k, v in seen["headers"]
        if k.lower() == "authorization" and v.startswith("Bearer ")
    }


def _stopped(p: ProxyProcess) -> bool:
    try:
        return Path(f"/proc/{p.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer, upstream: Upstream, oauth_server: OAuthServer) -> Iterator[Fleet]:
    redis_server.flush()
    f = Fleet(tmp_path, redis_server, upstream, oauth_server)
    try:
        yield f
    finally:
        for p in f.procs:
            if _stopped(p):
                os.kill(p.proc.pid, signal.SIGCONT)
        f.stop()


async def _get(p: ProxyProcess, url: str, timeout: float = 60) -> httpx.Response:
    async with httpx.AsyncClient(proxy=p.url, timeout=timeout) as client:
        return await client.get(url)


async def _burst(procs: list[ProxyProcess], urls: list[str]) -> list[httpx.Response]:
    """``urls`` sent at once, the i-th through replica i mod N."""
    clients = [httpx.AsyncClient(proxy=p.url, timeout=60, limits=httpx.Limits(max_connections=200)) for p in procs]
    try:
        return await asyncio.gather(*(clients[i % len(procs)].get(u) for i, u in enumerate(urls)))
    finally:
        for c in clients:
            await c.aclose()


async def _until(what: str, check: Callable[[], Any], within: float = 30.0) -> Any:
    """Poll ``check`` until it is truthy: a bound on waiting, not a timing assertion."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen")


@contextmanager
def _hold(
    oauth: OAuthServer, grant_type: str, point: str, drop: bool = False
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold the first token request of ``grant_type`` at ``point`` ("before" or "after" it is handled)."""
    arrived, release = threading.Event(), threading.Event()
    taken = threading.Lock()
    first = [True]

    def hook(at: str, params: dict[str, str]) -> None:
        if at != point or params.get("grant_type") != grant_type:
            return
        with taken:
            mine, first[0] = first[0], False
        if not mine:
            return
        arrived.set()
        release.wait(60)
        if drop:
            raise RuntimeError("dropped: the request never reached the grant")

    oauth.token_hook = hook
    try:
        yield arrived, release
    finally:
        release.set()
        oauth.token_hook = None


async def test_three_replicas_fetch_once_per_route(fleet: Fleet) -> None:
    """300 concurrent first requests over three replicas (one of them two workers): one fetch per route."""
    procs = fleet.start(3, workers={2: 2}, admin=True)
    up = fleet.upstream.url
    urls = [f"{up}/{('billing', 'crm')[i % 2]}/{i}" for i in range(300)]
    rs = await _burst(procs, urls)
    assert [r.status_code for r in rs] == [200] * 300
    assert fleet.oauth.token_requests("client_credentials") == 1
    assert fleet.oauth.token_requests("refresh_token") == 1
    assert fleet.oauth.reuse_detected() == 0
    singles = procs[:2]  # a supervisor's metrics are its workers' sum; these two are one process each
    assert sum([await _metric(p, "authproxy_token_store_seconds_count", op="acquire") for p in singles]) >= 2
    # Each replica's other fetches adopted: counted as "stored", or as a wait on the lease.
    stored = [await _metric(p, "authproxy_token_fetches_total", outcome="stored") for p in procs]
    assert sum(stored) >= 4, stored
    # A burst of 401s across the replicas: one forced refresh.
    for token in fleet.oauth.issued():
        fleet.oauth.revoke(token)
    rs = await _burst(procs, [f"{up}/{('billing', 'crm')[i % 2]}/again{i}" for i in range(60)])
    assert [r.status_code for r in rs] == [200] * 60
    assert fleet.oauth.token_requests("client_credentials") == 2
    assert fleet.oauth.token_requests("refresh_token") == 2
    assert fleet.oauth.reuse_detected() == 0
    assert_no_secrets(fleet.texts(), fleet.secrets())


async def test_rotating_refreshes_over_replicas_never_reuse(fleet: Fleet) -> None:
    procs = fleet.start(3)
    up = fleet.upstream.url
    assert (await _get(procs[0], f"{up}/crm/first")).status_code == 200
    assert fleet.refreshes() == 1
    for step in range(10):
        # The upstream refuses every token so far: the next request through replica
        # `step % 3` forces a refresh (or adopts the one another replica just made).
        for token in fleet.oauth.issued():
            fleet.oauth.revoke(token)
        p = procs[step % 3]
        for attempt in range(3):
            r = await _get(p, f"{up}/crm/{step}-{attempt}")
            if r.status_code == 200:
                break
        assert r.status_code == 200, r.text
        assert fleet.refreshes() == step + 2
    assert fleet.oauth.reuse_detected() == 0
    rec = _record(fleet.redis, "crm")
    assert rec is not None and rec["refresh_token"] == fleet.oauth.refresh_tokens_valid()[-1]
    # The positive control: a spent refresh token sent straight to the server is caught
    # as reuse, and the grant is revoked, current tokens included.
    spent = fleet.env["RT_SEED"]  # the first of the chain, spent by the first refresh
    current = fleet.oauth.issued()[-1]
    r = httpx.post(
        fleet.oauth.token_url,
        data={"grant_type": "refresh_token", "refresh_token": spent},
        auth=("crm", RT_SECRET),
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert fleet.oauth.reuse_detected() == 1
    assert not fleet.oauth.is_valid(current)
    assert_no_secrets(fleet.texts(), fleet.secrets())


async def test_holder_killed_before_sending_another_completes(fleet: Fleet) -> None:
    procs = fleet.start(3)
    up = fleet.upstream.url
    with _hold(fleet.oauth, "refresh_token", "before", drop=True) as (arrived, release):
        first = asyncio.create_task(_get(procs[0], f"{up}/crm/holder"))
        assert await asyncio.to_thread(arrived.wait, 30)
        others = asyncio.create_task(_burst(procs[1:], [f"{up}/crm/w{i}" for i in range(20)]))
        await _until("the others waiting on the lease", lambda: fleet.redis.client().get(_key("lease", "crm")))
        procs[0].proc.kill()
        procs[0].proc.wait(10)
        release.set()
        rs = await others
    with pytest.raises(httpx.HTTPError):
        await first
    assert [r.status_code for r in rs] == [200] * 20
    assert fleet.refreshes(status=200) == 1
    assert fleet.oauth.reuse_detected() == 0
    assert_no_secrets(fleet.texts(), fleet.secrets())


async def test_holder_killed_after_the_server_spent_the_token(fleet: Fleet) -> None:
    """The window no client can close: the documented 502, and nothing worse."""
    procs = fleet.start(3)
    up = fleet.upstream.url
    with _hold(fleet.oauth, "refresh_token", "after") as (arrived, release):
        first = asyncio.create_task(_get(procs[0], f"{up}/crm/holder"))
        assert await asyncio.to_thread(arrived.wait, 30)
        procs[0].proc.kill()
        procs[0].proc.wait(10)
        release.set()
    with pytest.raises(httpx.HTTPError):
        await first
    r = await _get(procs[1], f"{up}/crm/next")
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["error"] == "token_endpoint_error" and "new refresh token or login" in body["detail"]
    assert fleet.oauth.reuse_detected() == 1  # the server saw the replay and revoked the grant
    rs = await _burst(procs[1:], [f"{up}/crm/again{i}" for i in range(10)])
    assert {x.status_code for x in rs} == {502}
    assert fleet.refreshes() == 2  # the holder's and one replay: no loop of refreshes
    # Another route is not affected.
    rs = await _burst(procs[1:], [f"{up}/billing/{i}" for i in range(10)])
    assert [x.status_code for x in rs] == [200] * 10
    assert_no_secrets([*fleet.texts(), body["detail"]], fleet.secrets())


async def test_holder_paused_past_its_lease_is_fenced_off(fleet: Fleet) -> None:
    procs = fleet.start(2, token_fetch=20.0, admin=True)  # a 5 s lease within a 20 s fetch deadline
    up = fleet.upstream.url
    with _hold(fleet.oauth, "client_credentials", "before") as (arrived, release):
        paused = asyncio.create_task(_get(procs[0], f"{up}/billing/paused"))
        assert await asyncio.to_thread(arrived.wait, 30)
        os.kill(procs[0].proc.pid, signal.SIGSTOP)
        await _until(
            "the paused holder's lease to run out", lambda: not fleet.redis.client().exists(_key("lease", "billing"))
        )
        r = await _get(procs[1], f"{up}/billing/meanwhile")
        assert r.status_code == 200
        release.set()  # the paused holder's answer waits in its socket
        os.kill(procs[0].proc.pid, signal.SIGCONT)
        late = await paused
    newer, older = fleet.oauth.issued()[:2]  # the second replica's was issued first
    rec = _record(fleet.redis, "billing")
    assert rec is not None and rec["shared"]["headers"] == [["Authorization", f"Bearer {newer}"]]
    assert late.status_code == 200  # the late holder took the newer token from the store
    assert older not in str(rec)
    await _until("the refused write in the log", lambda: "write was refused" in procs[0].stderr_text())
    assert await _metric(procs[0], "authproxy_token_store_lease_losses_total", route="billing") >= 1
    assert await _metric(procs[1], "authproxy_token_store_lease_losses_total") == 0
    assert_no_secrets(fleet.texts(), fleet.secrets())


async def test_redis_restart_mid_run(fleet: Fleet) -> None:
    procs = fleet.start(3, admin=True)
    up = fleet.upstream.url
    rs = await _burst(procs, [f"{up}/{r}/warm{i}" for i in range(6) for r in ("billing", "crm")])
    assert {x.status_code for x in rs} == {200}
    before = _record(fleet.redis, "crm")
    fleet.redis.stop()
    # Cached tokens keep working; a fetch that must hold the lease cannot.
    rs = await _burst(procs, [f"{up}/{r}/down{i}" for i in range(6) for r in ("billing", "crm")])
    assert {x.status_code for x in rs} == {200}
    r = await _get(procs[0], f"{up}/erp/down")
    assert r.status_code == 503 and r.json()["error"] == "token_store_unavailable", r.text
    assert r.headers["X-Authproxy-Error"] == "token_store_unavailable"
    # A grant that rotates nothing may fetch on its own, and says so.
    for token in _tokens_seen(fleet.upstream, "/billing/"):
        fleet.oauth.revoke(token)
    assert (await _get(procs[1], f"{up}/billing/local")).status_code == 200
    assert "fetching without its lease" in procs[1].stderr_text()
    assert await _metric(procs[0], "authproxy_token_store_errors_total") >= 1
    fleet.redis.start()
    # Recovery without a restart (after a store error a route backs off one second).
    deadline = time.monotonic() + 30
    while True:
        r = await _get(procs[0], f"{up}/erp/back")
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert r.status_code == 200, r.text
    # What was written before the restart is still there (the append-only file).
    after = _record(fleet.redis, "crm")
    assert before is not None and after is not None and after["refresh_token"] == before["refresh_token"]
    # A replica that starts now adopts the stored token: no new refresh.
    count = fleet.refreshes()
    (late,) = fleet.start(1)
    assert (await _get(late, f"{up}/crm/late")).status_code == 200
    assert fleet.refreshes() == count
    assert_no_secrets(fleet.texts(), fleet.secrets())


async def test_nothing_readable_in_redis(fleet: Fleet) -> None:
    procs = fleet.start(3)
    up = fleet.upstream.url
    rs = await _burst(procs, [f"{up}/{r}/{i}" for i in range(9) for r in ("billing", "crm", "erp")])
    assert {x.status_code for x in rs} == {200}
    for token in fleet.oauth.issued():
        fleet.oauth.revoke(token)
    rs = await _burst(procs, [f"{up}/{r}/again{i}" for i in range(3) for r in ("crm", "erp")])
    items = fleet.redis.everything()
    assert len(items) >= 6  # a record and a fence counter per route (leases are gone once released)
    keys = "\n".join(k.decode("latin-1") for k, _ in items)
    everything = keys + "\n" + "\n".join(v.decode("latin-1") for _, v in items)
    for secret in fleet.secrets():
        for form in secret_forms(secret):
            assert form not in everything, f"a secret is in Redis (form {form[:3]}…)"
    for readable in ("billing", "crm", "erp", "refresh", "svc", "127.0.0.1", "token"):
        assert readable not in keys


async def test_warm_requests_do_not_touch_redis(fleet: Fleet) -> None:
    procs = fleet.start(3)
    up = fleet.upstream.url
    rs = await _burst(procs, [f"{up}/{r}/warm{i}" for i in range(6) for r in ("billing", "crm")])
    assert {x.status_code for x in rs} == {200}
    client = fleet.redis.client()
    client.ping()

    def stats() -> dict[str, Any]:
        return {k: v for k, v in client.info("commandstats").items() if k != "cmdstat_info"}

    before = stats()
    assert before, "the warm-up made no Redis calls at all"
    rs = await _burst(procs, [f"{up}/{('billing', 'crm')[i % 2]}/w{i}" for i in range(1000)])
    assert [x.status_code for x in rs] == [200] * 1000
    assert stats() == before


async def test_token_command_takes_the_same_lease(fleet: Fleet) -> None:
    procs = fleet.start(1)
    up = fleet.upstream.url
    assert (await _get(procs[0], f"{up}/crm/warm")).status_code == 200
    cli_cfg = fleet.config(9, 8.0)
    env = {**os.environ, **fleet.env}

    def token() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "authproxy", "token", "crm", "-c", str(cli_cfg)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    out = await asyncio.to_thread(token)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Authorization: Bearer ****\n"
    assert fleet.refreshes() == 1  # adopted the replica's token from Redis
    # Someone holds crm's lease and the stored access token is gone: `token` waits on the
    # lease (polling the record) and adopts what the holder writes; it spends nothing.
    rec = _record(fleet.redis, "crm")
    assert rec is not None
    c = fleet.redis.client()
    c.set(_key("lease", "crm"), b"someone-else", px=60_000)
    rec.pop("access")
    c.set(_key("record", "crm"), SEALER.seal(rec, _key("record", "crm")))
    gets = c.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
    running = asyncio.create_task(asyncio.to_thread(token))
    await _until("`token` polling the record", lambda: c.info("commandstats")["cmdstat_get"]["calls"] >= gets + 3)
    assert fleet.refreshes() == 1 and not running.done()
    rec.update(access="Bearer held-by-another-replica-0001", expires_at=time.time() + 600)
    c.set(_key("record", "crm"), SEALER.seal(rec, _key("record", "crm")))
    out = await running
    assert out.returncode == 0, out.stderr
    assert fleet.refreshes() == 1
    c.delete(_key("lease", "crm"))
    assert_no_secrets([out.stdout, out.stderr], fleet.secrets())


def test_run_refuses_to_start_without_its_store(tmp_path: Path) -> None:
    from tests.support.redisd import free_port

    path = tmp_path / "routes.yaml"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f'token_store: {{url: "redis://:${{PW}}@127.0.0.1:{free_port()}/0", key: "${{STORE_KEY}}"}}\nroutes: []\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "authproxy", "run", "-c", str(path), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STORE_KEY": KEY, "PW": "redis-password-0f9e8d"},
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "token store at redis://127.0.0.1:" in lines[0] and "cannot be reached" in lines[0], (
        out.stderr
    )
    assert_no_secrets([out.stderr], ["redis-password-0f9e8d", KEY])


async def test_status_shows_the_store_health(fleet: Fleet) -> None:
    """`authproxy status` and the page, of one process and of `--workers 2`, while Redis is up and down."""
    procs = fleet.start(2, workers={1: 2}, admin=True)
    up = fleet.upstream.url
    assert {(await _get(p, f"{up}/crm/s")).status_code for p in procs} == {200}
    admins = []
    for p in procs:
        m = await _until(
            "the admin address", lambda p=p: re.search(r"admin listener on (127\.0\.0\.1:\d+)", p.stderr_text())
        )
        admins.append(m.group(1))

    def status(admin: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "authproxy", "status", "--admin", admin, "-c", "/nonexistent.yaml"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    where = f"redis://127.0.0.1:{fleet.redis.port}/0"
    for admin in admins:
        text = await asyncio.to_thread(status, admin)
        assert f"token store: redis {where}: ok (" in text, text
        page = httpx.get(f"http://{admin}/").text
        assert "Token store" in page and where in page
    fleet.redis.stop()
    try:
        for admin in admins:
            text = await asyncio.to_thread(status, admin)
            assert f"token store: redis {where}: unreachable; last error" in text, text
    finally:
        fleet.redis.start()
    text = await asyncio.to_thread(status, admins[0])
    assert f"token store: redis {where}: ok (" in text, text
    assert_no_secrets([*fleet.texts(), text], fleet.secrets())


async def test_login_writes_to_the_shared_store(fleet: Fleet, tmp_path: Path) -> None:
    """`authproxy login` on one host; a replica elsewhere (its own state dir) adopts the refresh token."""
    from .test_refresh_login import _browser, _login

    oauth = fleet.oauth
    oauth.add_client(
        "app",
        None,
        auth_method="none",
        grant_types=("authorization_code", "refresh_token"),
        redirect_uris=("http://127.0.0.1/callback",),
    )
    oauth.add_user("erin", "erin-password-42")

    def config(i: int) -> Path:
        path = tmp_path / f"login{i}.yaml"
        path.write_text(
            textwrap.dedent(
                f"""
                state_dir: {tmp_path / f"login-state{i}"}
                token_store: {{url: "{fleet.redis.url}", key: "{KEY}"}}
                routes:
                  - name: app
                    match: {fleet.upstream.authority}/app/
                    auth: {{type: authorization_code, issuer: "{oauth.issuer}", client_id: app, scope: read}}
                """
            )
        )
        return path

    proc, url = await _login(config(0))
    resp = await asyncio.to_thread(_browser, url, "erin", "erin-password-42")
    assert resp.status_code == 200, resp.text
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    assert f"stored in the shared token store at redis://127.0.0.1:{fleet.redis.port}/0" in out
    assert not (tmp_path / "login-state0" / "tokens" / "app.json").exists()
    rec = _record(fleet.redis, "app")
    assert rec is not None and rec["refresh_token"] in oauth.issued_refresh_tokens()
    replica = start_proxy(config(1))
    fleet.procs.append(replica)
    assert (await _get(replica, f"{fleet.upstream.url}/app/me")).status_code == 200
    assert fleet.oauth.reuse_detected() == 0
    assert_no_secrets([out, err, *fleet.texts()], fleet.secrets())
