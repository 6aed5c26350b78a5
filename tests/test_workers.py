"""`authproxy run --workers 2`: real supervisor and worker processes, a real Authlib server.

What is observed, never asked of the proxy: which process holds each client
connection (``/proc/PID/fd`` against ``/proc/net/tcp``), each worker's own
counters (its prometheus multiprocess files, read per PID), the token
requests the authorization server saw, the admin listener's answers, and
every line the processes wrote, grepped for every secret used.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.support.oauth_server import OAuthServer
from tests.support.proc import ProxyProcess, start_proxy

from .conftest import Upstream, assert_no_secrets

KEY = "wk-api-key-5e0b7c1d-never-shown"
CC_SECRET = "wk-cc-s3cret-Qz71&y"
CMD_TOKEN = "wk-cmd-token-8f2a9d"
CONNS = 40  # connections per burst: all on one worker would be a 2^-39 chance


def _config(tmp_path: Path, routes: str, admin: bool = True) -> Path:
    path = tmp_path / "routes.yaml"
    text = f"state_dir: {tmp_path / 'state'}\n" + ("admin: 127.0.0.1:0\n" if admin else "") + "routes:\n"
    path.write_text(text + textwrap.indent(textwrap.dedent(routes).strip() + "\n", "  "))
    return path


def _key_route(upstream: Upstream, header: str = "X-Key") -> str:
    return f"""
    - name: keyed
      match: {upstream.authority}
      scrub: false  # the test reads the injected value back from the echo
      auth: {{type: api_key, header: {header}, value: "${{WK_KEY}}"}}
    """


def _cc_route(upstream: Upstream, server: OAuthServer) -> str:
    return f"""
    - name: billing
      match: {upstream.authority}
      auth: {{type: client_credentials, token_url: {server.token_url}, client_id: svc,
              client_secret: "${{WK_CC_SECRET}}", scope: read}}
    """


def _guard(upstream: Upstream, server: OAuthServer) -> None:
    """The upstream takes only tokens the authorization server says are valid (or the command's)."""
    upstream.check_auth = lambda h: (
        h is not None and (h == f"Bearer {CMD_TOKEN}" or (h.startswith("Bearer ") and server.is_valid(h[7:])))
    )


ENV = {"WK_KEY": KEY, "WK_CC_SECRET": CC_SECRET}


async def _until(what: str, check: Callable[[], Any], p: ProxyProcess, within: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen:\n{p.stderr_text()}")


async def _admin(p: ProxyProcess) -> str:
    def found() -> str | None:
        m = re.search(r"admin listener on (127\.0\.0\.1:\d+)", p.stderr_text())
        return m.group(1) if m else None

    return "http://" + await _until("the admin listener", found, p)


def _children(pid: int) -> set[int]:
    """Processes whose parent is ``pid``, from /proc."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry))
    return out


def _spawned(pid: int) -> bool:
    """Started as a new interpreter with the worker flags, not forked from the supervisor (run/forking.py)."""
    return b"--worker-index" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def _connections_by_pid(port: int, pids: set[int], peers: set[int]) -> dict[int, int]:
    """Our clients' established connections to the proxy's port (``peers``: their local ports), by the
    process holding the proxy's end. Only ours: once in ~9 runs a 41st connection was counted."""
    inodes: dict[str, int] = {}
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    counts = dict.fromkeys(pids, 0)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port, remote_port = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        state, inode = fields[3], fields[9]
        if local_port == port and remote_port in peers and state == "01" and inode in inodes:
            counts[inodes[inode]] += 1
    return counts


def _worker_values(state: Path, pid: int, sample: str) -> dict[tuple[tuple[str, str], ...], float]:
    """One worker's own samples named ``sample``, from its multiprocess files."""
    (mdir,) = state.glob("metrics-*")
    files = [str(f) for f in mdir.glob(f"*_{pid}.db")]
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in MultiProcessCollector.merge(files, accumulate=True):
        for s in family.samples:
            if s.name == sample:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def _total(values: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    return sum(v for k, v in values.items() if set(labels.items()) <= set(k))


async def _burst(p: ProxyProcess, url: str, n: int = CONNS) -> list[httpx.Response]:
    """``n`` requests at once, on ``n`` new connections (a request in flight holds its connection)."""
    async with httpx.AsyncClient(proxy=p.url, timeout=30, limits=httpx.Limits(max_connections=n)) as client:
        return list(await asyncio.gather(*(client.get(f"{url}?i={i}") for i in range(n))))


def _status(admin: str) -> dict[str, Any]:
    return httpx.get(f"{admin}/status.json", timeout=10).json()


async def test_the_kernel_spreads_connections_over_both_workers(tmp_path: Path, upstream: Upstream) -> None:
    stale = tmp_path / "state" / "metrics-left-by-a-kill"  # a supervisor killed with SIGKILL leaves its folder
    stale.mkdir(parents=True)
    (stale / ".supervisor.lock").touch()
    (stale / "counter_1.db").write_bytes(b"old")
    p = start_proxy(_config(tmp_path, _key_route(upstream), admin=False), "--workers", "2", env=ENV)
    assert not stale.exists()
    held: list[asyncio.StreamWriter] = []
    try:
        workers = await _until("two workers", lambda: len(_children(p.proc.pid)) == 2 and _children(p.proc.pid), p)
        for i in range(CONNS):  # each connection sends one request and stays open
            reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
            held.append(writer)
            writer.write(f"GET {upstream.url}/held{i} HTTP/1.1\r\nHost: {upstream.authority}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            body = await reader.readexactly(int(re.search(rb"(?i)content-length: (\d+)", head).group(1)))
            assert ["X-Key", KEY] in json.loads(body)["headers"]
        peers = {w.get_extra_info("sockname")[1] for w in held}
        by_pid = _connections_by_pid(p.port, workers | {p.proc.pid}, peers)
        assert by_pid[p.proc.pid] == 0  # the supervisor only holds the port, it serves nothing
        assert sum(by_pid[w] for w in workers) == CONNS
        assert all(by_pid[w] > 0 for w in workers), by_pid
        for w in workers:  # and each worker counted what it served
            assert _total(_worker_values(tmp_path / "state", w, "authproxy_requests_total")) == by_pid[w]
        # SO_REUSEPORT would let a second proxy of the same user share the port: it is refused as without workers.
        other = await asyncio.to_thread(
            _run, "-c", str(tmp_path / "routes.yaml"), "--listen", f"127.0.0.1:{p.port}", "--workers", "2"
        )
        assert other.returncode == 1 and "Address already in use" in other.stderr
    finally:
        for w in held:
            w.close()
        assert p.stop() == 0, p.stderr_text()
    assert p.stderr_text().count("listening on") == 1
    assert_no_secrets(p.err_lines, [KEY])


async def test_cold_start_one_token_fetch_per_route_across_workers(
    tmp_path: Path, upstream: Upstream, oauth_server: OAuthServer
) -> None:
    oauth_server.add_client("svc", CC_SECRET)
    oauth_server.add_client("crm", CC_SECRET, grant_types=("refresh_token",))
    seed = oauth_server.issue_refresh_token("crm")
    _guard(upstream, oauth_server)
    runs = tmp_path / "runs"
    helper = tmp_path / "helper.py"
    helper.write_text(f"import sys\nopen(sys.argv[1], 'a').write('run\\n')\nprint('{CMD_TOKEN}')\n")
    routes = _cc_route(upstream, oauth_server).replace(
        "match: " + upstream.authority, f"match: {upstream.authority}/cc"
    )
    routes += f"""
    - name: helper
      match: {upstream.authority}/cmd
      auth: {{type: command, argv: [{sys.executable}, {helper}, {runs}]}}
    - name: rotating
      match: {upstream.authority}/rt
      auth: {{type: refresh_token, token_url: {oauth_server.token_url}, client_id: crm,
              client_secret: "${{WK_CC_SECRET}}", refresh_token: "${{WK_SEED}}"}}
    """
    p = start_proxy(_config(tmp_path, routes), "--workers", "2", env={**ENV, "WK_SEED": seed})
    status: dict[str, Any] = {}
    try:
        admin = await _admin(p)
        bursts = await asyncio.gather(*(_burst(p, f"{upstream.url}/{path}") for path in ("cc", "cmd", "rt")))
        assert [r.status_code for burst in bursts for r in burst] == [200] * (3 * CONNS)
        # One fetch per route, however the requests fell on the workers.
        assert oauth_server.token_requests("client_credentials") == 1
        assert oauth_server.token_requests("refresh_token") == 1 and oauth_server.reuse_detected() == 0
        assert runs.read_text().count("run") == 1
        workers = _children(p.proc.pid)
        per = {w: _worker_values(tmp_path / "state", w, "authproxy_token_fetches_total") for w in workers}
        served = {w: _total(_worker_values(tmp_path / "state", w, "authproxy_requests_total")) for w in workers}
        assert all(served[w] > 0 for w in workers), served
        for route in ("billing", "helper", "rotating"):
            # Both workers needed the token: one fetched it, the other took it from the store.
            assert sum(_total(v, route=route, outcome="ok") for v in per.values()) == 1
            assert sum(_total(v, route=route, outcome="stored") for v in per.values()) == 1
        # The token is on disk as refresh tokens are: 0600 in a 0700 folder.
        tokens = tmp_path / "state" / "tokens"
        assert tokens.stat().st_mode & 0o777 == 0o700
        assert (tokens / "billing.json").stat().st_mode & 0o777 == 0o600
        stored = json.loads((tokens / "billing.json").read_text())["data"]["shared"]
        # The client_credentials and refresh_token fetches race: billing's token need not be the first issued.
        [[name, value]] = stored["headers"]
        assert name == "Authorization" and value.removeprefix("Bearer ") in oauth_server.issued()
        status = _status(admin)
        billing = next(r for r in status["routes"] if r["name"] == "billing")
        assert billing["token"]["state"] == "fresh" and billing["token"]["fetches"] == 1
        assert billing["requests"] == CONNS
    finally:
        assert p.stop() == 0, p.stderr_text()
    secrets = [CC_SECRET, CMD_TOKEN, *oauth_server.issued(), *oauth_server.issued_refresh_tokens()]
    assert_no_secrets([*p.err_lines, json.dumps(status)], secrets)


async def test_a_burst_of_401s_on_both_workers_makes_one_refresh(
    tmp_path: Path, upstream: Upstream, oauth_server: OAuthServer
) -> None:
    oauth_server.add_client("svc", CC_SECRET)
    _guard(upstream, oauth_server)
    p = start_proxy(_config(tmp_path, _cc_route(upstream, oauth_server)), "--workers", "2", env=ENV)
    try:
        assert {r.status_code for r in await _burst(p, upstream.url)} == {200}  # both workers hold the token
        oauth_server.revoke_all()
        rs = await _burst(p, upstream.url)
        assert [r.status_code for r in rs] == [200] * CONNS
        assert oauth_server.token_requests() == 2  # the first fetch, and one refresh
        for w in _children(p.proc.pid):  # every worker saw the 401s, and retried with the one new token
            retries = _worker_values(tmp_path / "state", w, "authproxy_401_retries_total")
            assert _total(retries, outcome="done") > 0, retries
    finally:
        assert p.stop() == 0, p.stderr_text()
    assert_no_secrets(p.err_lines, [CC_SECRET, *oauth_server.issued()])


async def test_sighup_reaches_every_worker(tmp_path: Path, upstream: Upstream) -> None:
    cfg = _config(tmp_path, _key_route(upstream, "X-Key-One"))
    p = start_proxy(cfg, "--workers", "2", env=ENV)
    try:
        admin = await _admin(p)
        new = cfg.with_suffix(".new")
        new.write_text(cfg.read_text().replace("X-Key-One", "X-Key-Two"))
        new.replace(cfg)
        p.proc.send_signal(signal.SIGHUP)
        for i in (1, 2):
            await _until(f"worker {i}'s reload", lambda i=i: f"worker {i}: reloaded (SIGHUP)" in p.stderr_text(), p)
        for r in await _burst(p, upstream.url):  # whichever worker answers, it has the new table
            names = [k for k, _ in r.json()["headers"]]
            assert "X-Key-Two" in names and "X-Key-One" not in names
        reloads = _status(admin)["reloads"]
        assert any(ev["ok"] and ev["detail"].endswith("(workers 1, 2)") for ev in reloads), reloads
    finally:
        assert p.stop() == 0, p.stderr_text()
    assert_no_secrets(p.err_lines, [KEY])


async def test_sigterm_lets_a_slow_request_finish_then_exits_0(tmp_path: Path) -> None:
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(1.5)
        return web.Response(text="slow done")

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    p = start_proxy(
        _config(tmp_path, _key_route(Upstream(f"http://127.0.0.1:{port}", port))), "--workers", "2", env=ENV
    )
    workers = _children(p.proc.pid)
    try:
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            slow_request = asyncio.create_task(client.get(f"http://127.0.0.1:{port}/slow"))
            await asyncio.wait_for(arrived.wait(), 30)  # in flight, upstream
            p.proc.send_signal(signal.SIGTERM)
            r = await slow_request
        assert (r.status_code, r.text) == (200, "slow done")
        assert await asyncio.to_thread(p.proc.wait, 60) == 0, p.stderr_text()
    finally:
        p.stop()
        await runner.cleanup()
    assert not any(Path(f"/proc/{w}").exists() for w in workers)  # no worker outlives the supervisor
    assert not list((tmp_path / "state").glob("metrics-*"))  # the private metrics folder is gone
    assert "worker 1: draining" in p.stderr_text() and "worker 2: draining" in p.stderr_text()
    assert_no_secrets(p.err_lines, [KEY])


async def test_a_killed_worker_is_started_again(tmp_path: Path, upstream: Upstream) -> None:
    p = start_proxy(_config(tmp_path, _key_route(upstream)), "--workers", "2", env=ENV)
    try:
        admin = await _admin(p)
        before = _children(p.proc.pid)
        victim = min(before)
        assert not _spawned(victim)  # forked from the supervisor at start
        os.kill(victim, signal.SIGKILL)
        await _until(
            "the kill noticed", lambda: f"(pid {victim}) exited unexpectedly (killed by SIGKILL)" in p.stderr_text(), p
        )
        after = await _until("a new worker", lambda: len(c := _children(p.proc.pid)) == 2 and victim not in c and c, p)
        (new,) = after - before
        await _until("the new worker ready", lambda: f"(pid {new}) ready" in p.stderr_text(), p)
        assert _spawned(new)  # the supervisor's loop runs now: forking is not safe, a new interpreter is started
        assert httpx.get(f"{admin}/readyz").status_code == 200
        assert {r.status_code for r in await _burst(p, upstream.url)} == {200}
        status = _status(admin)
        assert sorted(w["pid"] for w in status["workers"]) == sorted(after)
        assert sum(w["restarts"] for w in status["workers"]) == 1 and status["ready"] is True
        metrics = httpx.get(f"{admin}/metrics").text
        assert "authproxy_worker_restarts_total 1.0" in metrics and "authproxy_workers 2.0" in metrics
    finally:
        assert p.stop() == 0, p.stderr_text()
    assert_no_secrets(p.err_lines, [KEY])


async def test_admin_listener_adds_up_every_worker(tmp_path: Path, upstream: Upstream) -> None:
    p = start_proxy(_config(tmp_path, _key_route(upstream)), "--workers", "2", env=ENV)
    seen: list[str] = []
    try:
        admin = await _admin(p)
        assert httpx.get(f"{admin}/readyz").status_code == 200
        assert httpx.get(f"{admin}/healthz").text == "ok\n"
        ok = await _burst(p, upstream.url)
        bad = await _burst(p, f"{upstream.url}/status/503", 10)
        assert [r.status_code for r in ok] == [200] * CONNS and [r.status_code for r in bad] == [503] * 10
        served = [
            _total(_worker_values(tmp_path / "state", w, "authproxy_requests_total")) for w in _children(p.proc.pid)
        ]
        assert all(served) and sum(served) == CONNS + 10
        metrics = httpx.get(f"{admin}/metrics").text
        seen.append(metrics)
        families = list(text_string_to_metric_families(metrics))
        names = [f.name for f in families]
        assert len(names) == len(set(names))  # one exposition: each family once
        by_name = {f.name: f for f in families}
        requests = {
            s.labels["status"]: s.value for s in by_name["authproxy_requests"].samples if s.name.endswith("_total")
        }
        assert requests == {"200": CONNS, "503": 10}
        latency = by_name["authproxy_request_duration_seconds"].samples
        assert sum(s.value for s in latency if s.name.endswith("_count")) == CONNS + 10
        assert [s.value for s in by_name["authproxy_routes"].samples] == [1.0]
        assert [s.value for s in by_name["authproxy_workers"].samples] == [2.0]
        status = _status(admin)
        seen.append(json.dumps(status))
        keyed = status["routes"][0]
        assert (keyed["requests"], keyed["statuses"]) == (CONNS + 10, {"2xx": CONNS, "5xx": 10})
        assert [w["state"] for w in status["workers"]] == ["ready", "ready"] and status["ready"] is True
        page = httpx.get(f"{admin}/").text
        seen.append(page)
        assert "Workers" in page and "2 of 2 ready" in page
        table = subprocess.run(
            [sys.executable, "-m", "authproxy", "status", "--admin", admin.removeprefix("http://")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        seen.append(table.stdout + table.stderr)
        assert table.returncode == 0 and "2 of 2 workers ready" in table.stdout and "keyed" in table.stdout
        (mdir,) = (tmp_path / "state").glob("metrics-*")
        assert mdir.stat().st_mode & 0o777 == 0o700
        seen += [f.read_bytes().decode("latin-1") for f in mdir.glob("*.db")]  # labels only: no secret there either
    finally:
        assert p.stop() == 0, p.stderr_text()
    assert_no_secrets(p.err_lines + seen, [KEY])


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authproxy", "run", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_config_and_usage_errors_as_without_workers(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"state_dir: {tmp_path / 'st'}\nroutes:\n  - name: x\n    match: a.example\n    auth: {{type: nope}}\n"
    )
    one, two = _run("-c", str(bad)), _run("-c", str(bad), "--workers", "2")
    assert one.returncode == two.returncode == 2
    assert two.stderr == one.stderr and "bad.yaml:" in two.stderr
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    ca = tmp_path / "ca.yaml"
    ca.write_text(
        f"state_dir: {tmp_path / 'st'}\nca_cert: {tmp_path / 'ca.pem'}\nca_key: {tmp_path / 'ca.pem'}\nroutes: []\n"
    )
    one, two = _run("-c", str(ca)), _run("-c", str(ca), "--workers", "2")
    assert one.returncode == two.returncode == 2
    assert two.stderr == one.stderr and "cannot read the CA certificate" in two.stderr
    good = tmp_path / "good.yaml"
    good.write_text(f"state_dir: {tmp_path / 'st'}\nroutes: []\n")
    for value in ("0", "-1", "two"):
        r = _run("-c", str(good), "--workers", value)
        assert r.returncode == 2 and f"error: --workers: `{value}` is not a number" in r.stderr
    with socket.socket() as taken:  # a port that something else holds
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _run("-c", str(good), "--listen", f"127.0.0.1:{port}", "--workers", "2")
    assert r.returncode == 1 and f"error: cannot listen on 127.0.0.1:{port}: Address already in use." in r.stderr
    assert not list((tmp_path / "st").glob("metrics-*"))


async def test_workers_on_uvloop(tmp_path: Path, upstream: Upstream) -> None:
    p = start_proxy(_config(tmp_path, _key_route(upstream), admin=False), "--workers", "2", "--loop", "uvloop", env=ENV)
    try:
        assert {r.status_code for r in await _burst(p, upstream.url)} == {200}
        served = [
            _total(_worker_values(tmp_path / "state", w, "authproxy_requests_total")) for w in _children(p.proc.pid)
        ]
        assert len(served) == 2 and all(served) and sum(served) == CONNS
    finally:
        assert p.stop() == 0, p.stderr_text()
    assert_no_secrets(p.err_lines, [KEY])


async def test_a_worker_started_while_the_file_is_broken_waits_for_a_good_one(
    tmp_path: Path, upstream: Upstream
) -> None:
    cfg = _config(tmp_path, _key_route(upstream))
    good = cfg.read_text()
    p = start_proxy(cfg, "--workers", "2", env=ENV)
    try:
        admin = await _admin(p)
        cfg.write_text(good + "  - name: broken\n    match: b.example\n    auth: {type: nope}\n")
        victim = min(_children(p.proc.pid))
        os.kill(victim, signal.SIGKILL)
        # The new worker cannot load the file: it says why, and is tried again later, with a backoff.
        await _until("a failed start", lambda: "exited unexpectedly (exit status 2)" in p.stderr_text(), p)
        assert "auth.type: unknown grant type" in p.stderr_text()
        assert httpx.get(f"{admin}/readyz").status_code == 503
        # The other worker keeps serving the table it has.
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            assert (await client.get(f"{upstream.url}/meanwhile")).status_code == 200
        cfg.write_text(good)
        await _until("two workers ready again", lambda: httpx.get(f"{admin}/readyz").status_code == 200, p)
        assert {r.status_code for r in await _burst(p, upstream.url)} == {200}
    finally:
        assert p.stop() == 0, p.stderr_text()
    assert_no_secrets(p.err_lines, [KEY])


async def test_a_token_refused_without_a_retry_is_not_taken_back_from_the_store(
    make_proxy: Any, upstream: Upstream, oauth_server: OAuthServer, secret_env: Any
) -> None:
    """The store keeps a route's token for every process; one an upstream refused must not come back from it."""
    oauth_server.add_client("crm", CC_SECRET, grant_types=("refresh_token",))
    seed = secret_env("WK_SEED", oauth_server.issue_refresh_token("crm"))
    secret_env("WK_CC_SECRET", CC_SECRET)
    _guard(upstream, oauth_server)
    p = await make_proxy(
        f"""
        limits: {{replay_body: 1KiB}}
        routes:
          - name: rotating
            match: {upstream.authority}
            auth: {{type: refresh_token, token_url: {oauth_server.token_url}, client_id: crm,
                    client_secret: "${{WK_CC_SECRET}}", refresh_token: "${{WK_SEED}}"}}
        """
    )
    async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
        assert (await client.get(f"{upstream.url}/warm")).status_code == 200
        oauth_server.revoke_all()  # the access token only: the refresh token stays good
        r = await client.post(f"{upstream.url}/upload", content=b"z" * 4096)  # over replay_body: no retry
        assert r.status_code == 401 and "retry=skipped" in p.access_lines()[-1]
        assert (await client.get(f"{upstream.url}/after")).status_code == 200
    after = p.access_lines()[-1]
    assert "token=refreshed" in after and "retry=" not in after  # a new token at once, not the refused one
    assert oauth_server.token_requests("refresh_token") == 2
    p.secrets.update({seed, CC_SECRET, *oauth_server.issued(), *oauth_server.issued_refresh_tokens()})


async def test_workers_auto_is_one_forked_worker_per_usable_cpu(tmp_path: Path, upstream: Upstream) -> None:
    """`--workers auto`: as many workers as CPUs this process may run on (its affinity), each serving.

    The workers are forked from the supervisor, which imported the data plane first, so
    each shares its pages; and each still writes its own metrics files (compat.py).
    """
    cpus = len(os.sched_getaffinity(0))
    p = start_proxy(_config(tmp_path, _key_route(upstream)), "--workers", "auto", env=ENV)
    try:
        if cpus == 1:  # one CPU: `auto` is the single process, no supervisor
            assert not _children(p.proc.pid) and " workers" not in p.stderr_text()
            assert {r.status_code for r in await _burst(p, upstream.url)} == {200}
            return
        admin = await _admin(p)
        # "(N workers)", or "(N workers, compiled)" when the build compiled the hot modules.
        assert re.search(rf"\({cpus} workers[,)]", p.stderr_text())
        workers = _children(p.proc.pid)
        assert len(workers) == cpus and not any(_spawned(w) for w in workers)
        assert {r.status_code for r in await _burst(p, upstream.url)} == {200}
        served = [_total(_worker_values(tmp_path / "state", w, "authproxy_requests_total")) for w in workers]
        assert sum(served) == CONNS and all(served)
        status = _status(admin)
        assert sorted(w["pid"] for w in status["workers"]) == sorted(workers) and status["ready"] is True
    finally:
        assert p.stop() == 0, p.stderr_text()
    assert_no_secrets(p.err_lines, [KEY])
