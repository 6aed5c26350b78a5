"""A bounded soak against a real `authproxy run` process: no leak, no hang.

Three hundred client connections at once (httpx pools) mix plain absolute-form
requests, gateway requests, intercepted HTTPS and blind tunnels; small GETs,
POST bodies up to 128 KiB and downloads up to 512 KiB; against an aiohttp
upstream (plain and TLS) that resets about 1% of its responses mid-body.

The proxy's RSS and open file descriptors are measured at rest after a
warm-up phase and again at rest after the main phase: RSS within 10 MiB and
fds within 5. Every request has a deadline; none may hit it. The resets must
reach the clients as errors (one per reset), and everything else must succeed.

`timeouts.idle` is 2 s so that pooled upstream connections expire during the
settle and both measurements see the proxy with nothing open but itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
import ssl
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trustme
from aiohttp import web

from tests.support.proc import ProxyProcess, start_proxy

from .conftest import assert_no_secrets

# Deselected from `.ci/run` (`-m 'not soak'`): it finds two open problems, see README, Tests.
pytestmark = pytest.mark.soak

KEY = "soak-key-9d8c7b6a5f"
TOKEN = "soak-token-1a2b3c4d5e"

WARM_S = 8.0
MAIN_S = 24.0
SETTLE_S = 4.5
REQUEST_DEADLINE_S = 20.0
WORKERS = {"plain": 100, "gateway": 70, "intercept": 100, "tunnel": 30}
RESET_SHARE = 0.01
BLOCK = os.urandom(512 * 1024)


# -- the upstream: echo, download, and 1% resets ----------------------------------


@dataclass
class SoakUpstream:
    port: int = 0
    tls_port: int = 0  # intercepted by a route
    tunnel_port: int = 0  # the same TLS app on a port no route matches: a blind tunnel
    ca_path: Path | None = None
    requests: int = 0
    unauthorized: int = 0
    seen: set[str] = field(default_factory=set)  # request ids that arrived
    reset: set[str] = field(default_factory=set)  # request ids whose response was reset
    rng: random.Random = field(default_factory=lambda: random.Random(20261123))

    @property
    def resets(self) -> int:
        return len(self.reset)

    def arrived(self, request: web.Request) -> str:
        rid = request.query.get("rid", "")
        self.requests += 1
        self.seen.add(rid)
        return rid

    def reset_now(self, rid: str) -> bool:
        if self.rng.random() < RESET_SHARE:
            self.reset.add(rid)
            return True
        return False


def _app(up: SoakUpstream, *, tunnel: bool) -> web.Application:
    def authorized(request: web.Request) -> bool:
        if tunnel:  # a blind tunnel carries no credential, by design
            return "x-key" not in request.headers and "authorization" not in request.headers
        return request.headers.get("X-Key") == KEY or request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def abort_mid_body(request: web.Request, total: int, sent: bytes) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = total
        await resp.prepare(request)
        await resp.write(sent)
        await asyncio.sleep(0)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def echo(request: web.Request) -> web.StreamResponse:
        rid = up.arrived(request)
        h = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            size += len(chunk)
        if not authorized(request):
            up.unauthorized += 1
            return web.json_response({"error": "unauthorized"}, status=401)
        if up.reset_now(rid):
            return await abort_mid_body(request, 1000, b"partial")
        return web.json_response({"size": size, "sha": h.hexdigest()})

    async def big(request: web.Request) -> web.StreamResponse:
        rid = up.arrived(request)
        size = int(request.query["size"])
        if not authorized(request):
            up.unauthorized += 1
            return web.json_response({"error": "unauthorized"}, status=401)
        if up.reset_now(rid):
            return await abort_mid_body(request, size, BLOCK[: size // 2])
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        for i in range(0, size, 65536):
            await resp.write(BLOCK[i : min(size, i + 65536)])
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=1 << 24)
    app.router.add_get("/big/{rid}", big)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


@pytest.fixture
async def soak_upstream(tmp_path: Path) -> AsyncIterator[SoakUpstream]:
    up = SoakUpstream()
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    up.ca_path = tmp_path / "soak-upstream-ca.pem"
    ca.cert_pem.write_to_path(str(up.ca_path))
    runners = []
    for name, tls, tunnel in (("port", None, False), ("tls_port", ctx, False), ("tunnel_port", ctx, True)):
        runner = web.AppRunner(_app(up, tunnel=tunnel), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls, backlog=1024)
        await site.start()
        setattr(up, name, site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        runners.append(runner)
    yield up
    for r in runners:
        await r.cleanup()


# -- measuring the proxy process -----------------------------------------------------


def _fds(p: ProxyProcess) -> int:
    return len(os.listdir(f"/proc/{p.proc.pid}/fd"))


@dataclass
class Sample:
    rss_kib: int
    fds: int


def _sample(p: ProxyProcess) -> Sample:
    return Sample(p.rss_kib(), _fds(p))


# -- the load ------------------------------------------------------------------------


@dataclass
class Stats:
    ok: Counter[str] = field(default_factory=Counter)
    cut: Counter[str] = field(default_factory=Counter)  # the response broke off because the upstream reset it
    cut_rids: set[str] = field(default_factory=set)
    bad_gateway: Counter[str] = field(default_factory=Counter)  # a 502 upstream_error for a reset request
    # RFC 9112 §9.3.1: a keep-alive connection the proxy closed (idle) just as the client reused it;
    # the upstream never saw the request, and a client retries it on a new connection.
    idle_races: int = 0
    # Cut by a reset before the proxy read the request (see `_never_arrived`): judged at the end.
    unseen_cuts: list[str] = field(default_factory=list)
    timeouts: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return (
            sum(self.ok.values()) + self.reset_visible + len(self.timeouts) + len(self.failures) + len(self.unseen_cuts)
        )

    @property
    def reset_visible(self) -> int:
        return sum(self.cut.values()) + sum(self.bad_gateway.values())


_rids = itertools.count()


async def _one(
    client: httpx.AsyncClient, base: str, mode: str, rng: random.Random, stats: Stats, up: SoakUpstream
) -> None:
    kind = rng.choices(["get", "post", "big"], weights=[60, 25, 15])[0]
    headers = {"Connection": "close"} if rng.random() < 0.05 else {}
    label = f"{mode}/{kind}"
    off, n, size = rng.randrange(0, 4096), rng.randrange(0, 128 * 1024), rng.randrange(1, 512 * 1024)
    for attempt in (1, 2):
        rid = f"{mode}-{next(_rids)}"
        try:
            async with asyncio.timeout(REQUEST_DEADLINE_S):
                if kind == "get":
                    r = await client.get(f"{base}/echo/{rid}?rid={rid}", headers=headers)
                    good = r.status_code == 200 and r.json()["size"] == 0
                elif kind == "post":
                    body = BLOCK[off : off + n]
                    r = await client.post(f"{base}/echo/{rid}?rid={rid}", content=body, headers=headers)
                    good = r.status_code == 200 and r.json() == {"size": n, "sha": hashlib.sha256(body).hexdigest()}
                else:
                    r = await client.get(f"{base}/big/{rid}?size={size}&rid={rid}", headers=headers)
                    good = r.status_code == 200 and r.content == BLOCK[:size]
            if good:
                stats.ok[label] += 1
            elif r.status_code == 502 and r.headers.get("x-authproxy-error") == "upstream_error" and rid in up.reset:
                stats.bad_gateway[label] += 1
                stats.cut_rids.add(rid)
            else:
                stats.failures.append(f"{label} {rid}: status {r.status_code} {r.text[:200]}")
        except (TimeoutError, httpx.TimeoutException) as exc:
            stats.timeouts.append(f"{label} {rid}: {type(exc).__name__}")
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if rid in up.reset:
                stats.cut[label] += 1
                stats.cut_rids.add(rid)
            elif rid not in up.seen and attempt == 1 and "without sending a response" in str(exc):
                stats.idle_races += 1
                continue
            elif rid not in up.seen and isinstance(exc, httpx.ReadError):
                stats.unseen_cuts.append(f"{label} {rid}")
            else:
                seen = "seen" if rid in up.seen else "never seen"
                stats.failures.append(
                    f"{label} {rid} ({seen} upstream): cut without an upstream reset: {type(exc).__name__}: {exc!s:.150}"
                )
        except Exception as exc:
            stats.failures.append(f"{label} {rid}: {type(exc).__name__}: {exc!s:.200}")
        return


def _clients(
    p: ProxyProcess, up: SoakUpstream, proxy_ca: ssl.SSLContext, up_ca: ssl.SSLContext
) -> dict[str, tuple[httpx.AsyncClient, str]]:
    def limits(n: int) -> httpx.Limits:
        # keepalive_expiry well under the proxy's 2 s idle: a client reuses a connection the proxy is
        # closing only when its event loop stalls for more than 1.7 s (the idle race, see `_never_arrived`).
        return httpx.Limits(max_connections=n, max_keepalive_connections=n, keepalive_expiry=0.3)

    timeout = httpx.Timeout(REQUEST_DEADLINE_S - 2)
    return {
        "plain": (
            httpx.AsyncClient(proxy=p.url, limits=limits(WORKERS["plain"]), timeout=timeout, trust_env=False),
            f"http://127.0.0.1:{up.port}",
        ),
        "gateway": (
            httpx.AsyncClient(limits=limits(WORKERS["gateway"]), timeout=timeout, trust_env=False),
            f"{p.url}/gw",
        ),
        "intercept": (
            httpx.AsyncClient(
                proxy=p.url, verify=proxy_ca, limits=limits(WORKERS["intercept"]), timeout=timeout, trust_env=False
            ),
            f"https://127.0.0.1:{up.tls_port}",
        ),
        "tunnel": (
            httpx.AsyncClient(
                proxy=p.url, verify=up_ca, limits=limits(WORKERS["tunnel"]), timeout=timeout, trust_env=False
            ),
            f"https://127.0.0.1:{up.tunnel_port}",
        ),
    }


async def _phase(
    p: ProxyProcess, up: SoakUpstream, proxy_ca: ssl.SSLContext, up_ca: ssl.SSLContext, seconds: float, seed: int
) -> tuple[Stats, int]:
    """Run every worker for ``seconds``; return the stats and the peak fd count seen meanwhile."""
    stats = Stats()
    stop = asyncio.Event()
    clients = _clients(p, up, proxy_ca, up_ca)
    peak = 0

    async def worker(mode: str, i: int) -> None:
        client, base = clients[mode]
        rng = random.Random(seed * 100_000 + list(WORKERS).index(mode) * 1000 + i)
        while not stop.is_set():
            await _one(client, base, mode, rng, stats, up)

    async def sampler() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _fds(p))
            await asyncio.sleep(0.25)

    try:
        tasks = [asyncio.create_task(worker(mode, i)) for mode, n in WORKERS.items() for i in range(n)]
        tasks.append(asyncio.create_task(sampler()))
        await asyncio.sleep(seconds)
        stop.set()
        # Each worker finishes its current request, which has its own deadline.
        done, pending = await asyncio.wait(tasks, timeout=REQUEST_DEADLINE_S + 5)
        for t in pending:
            t.cancel()
        assert not pending, f"{len(pending)} workers did not finish their last request"
        for t in done:
            t.result()
    finally:
        for client, _ in clients.values():
            await client.aclose()
    return stats, peak


async def _settle(p: ProxyProcess) -> Sample:
    await asyncio.sleep(SETTLE_S)
    return _sample(p)


def _never_arrived(stats: Stats, proxy_lines: list[str]) -> None:
    """Sort out requests cut by a reset that neither the proxy nor the upstream ever saw.

    The idle race again, seen from a client whose event loop stalled between
    picking a pooled connection and writing to it: by then the proxy had
    closed the idle connection (FIN, then a bounded wait), so the late request
    meets a closed socket and a reset. The proxy logs every request it reads;
    one it never logged never arrived. A cut of a request it did log is a
    failure. Judged after the proxy stopped, when its log is complete.
    """
    for cut in stats.unseen_cuts:
        rid = cut.split()[1]
        logged = [line for line in proxy_lines if f"/{rid} " in line]
        if logged:
            stats.failures.append(f"{cut}: cut without an upstream reset after the proxy read it: {logged}")
        else:
            stats.idle_races += 1
    stats.unseen_cuts.clear()


async def test_soak_no_leak_no_hang(tmp_path: Path, soak_upstream: SoakUpstream) -> None:
    up = soak_upstream
    state = tmp_path / "state"
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            state_dir: {state}
            timeouts: {{idle: 2, upstream_headers: 15}}
            routes:
              - name: soak-plain
                match: 127.0.0.1:{up.port}
                auth: {{type: api_key, header: X-Key, value: "${{SOAK_KEY}}"}}
              - name: soak-gw
                gateway: /gw
                upstream: http://127.0.0.1:{up.port}
                auth: {{type: bearer, token: "${{SOAK_TOKEN}}"}}
              - name: soak-tls
                match: 127.0.0.1:{up.tls_port}
                ca_file: {up.ca_path}
                auth: {{type: api_key, header: X-Key, value: "${{SOAK_KEY}}"}}
            """
        )
    )
    p = start_proxy(cfg, env={"SOAK_KEY": KEY, "SOAK_TOKEN": TOKEN})
    try:
        ca_pem = state / "ca.pem"
        for _ in range(100):
            if ca_pem.exists():
                break
            await asyncio.sleep(0.05)
        proxy_ca = ssl.create_default_context(cafile=str(ca_pem))
        up_ca = ssl.create_default_context(cafile=str(up.ca_path))
        t0 = time.monotonic()

        warm, warm_peak = await _phase(p, up, proxy_ca, up_ca, WARM_S, seed=1)
        base = await _settle(p)
        main, main_peak = await _phase(p, up, proxy_ca, up_ca, MAIN_S, seed=2)
        end = await _settle(p)
        elapsed = time.monotonic() - t0
    finally:
        rc = p.stop()

    for stats in (warm, main):
        _never_arrived(stats, p.err_lines)
    report = (
        f"elapsed {elapsed:.1f} s; warm-up {warm.total} requests, peak fds {warm_peak}; main {main.total} requests "
        f"({main.total / MAIN_S:.0f}/s), peak fds {main_peak}; at rest after warm-up: RSS {base.rss_kib} KiB, "
        f"{base.fds} fds; at the end: RSS {end.rss_kib} KiB, {end.fds} fds; upstream: {up.requests} requests, "
        f"{up.resets} resets, {up.unauthorized} unauthorized; clients saw {warm.reset_visible + main.reset_visible} "
        f"resets ({dict(warm.cut + main.cut)} cut, {dict(warm.bad_gateway + main.bad_gateway)} as 502); "
        f"idle keep-alive races retried: {warm.idle_races + main.idle_races}; ok by kind {dict(main.ok)}"
    )
    print(report)
    for stats in (warm, main):
        assert not stats.timeouts, f"requests hung: {stats.timeouts[:10]}\n{report}"
        logged = [line for f in stats.failures for line in p.err_lines if f"/{f.split()[1]} " in line]
        assert not stats.failures, f"requests failed: {stats.failures[:10]}\nthe proxy logged: {logged}\n{report}"
    assert up.unauthorized == 0, report
    # Several hundred connections at once, really.
    assert main_peak >= 250, f"peak of {main_peak} open fds: the load was not concurrent\n{report}"
    assert all(main.ok[f"{mode}/{kind}"] > 0 for mode in WORKERS for kind in ("get", "post", "big")), report
    # Every reset reached its own client as an error, and nothing else broke (failures are empty).
    assert up.resets > 0, report
    assert warm.cut_rids | main.cut_rids == up.reset, report
    share = up.resets / max(1, up.requests)
    assert 0.004 <= share <= 0.02, f"reset share {share:.3%}\n{report}"
    assert warm.idle_races + main.idle_races <= 10, report
    # No leak: at rest, the end looks like the end of the warm-up.
    assert end.rss_kib - base.rss_kib <= 10 * 1024, (
        f"RSS grew by {(end.rss_kib - base.rss_kib) / 1024:.1f} MiB\n{report}"
    )
    assert abs(end.fds - base.fds) <= 5, f"open fds went from {base.fds} to {end.fds}\n{report}"
    assert rc == 0, f"the proxy exited {rc} on SIGTERM"
    assert_no_secrets(p.err_lines, {KEY, TOKEN})
    internal = [line for line in p.err_lines if "internal error" in line or "Traceback" in line]
    assert not internal, "\n".join(internal[:10])
