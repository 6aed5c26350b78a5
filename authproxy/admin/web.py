"""The admin listener: health, readiness, Prometheus metrics and a status page.

Off unless ``admin: HOST:PORT`` is set (the caller decides). Everything it
shows comes from three places only: the config's non-secret fields (route
name, mode, match, gateway prefix, upstream origin, grant type),
``TokenManager.status`` (states and times, never a value) and the metrics
registry (whose labels are route names, modes, status and error codes). No
header, token or request-derived value reaches any page.

Reload problems are shown without the values they quote (see
``statusview.quoted_values_elided``).

``AdminBase`` is the listener and its five paths; what they show comes from
a subclass: ``AdminServer`` for one proxy process, ``fleetadmin.FleetAdmin``
for the supervisor of ``run --workers``. Rates are computed in ``rates.py``.
Before any path answers, ``admingate`` judges the ``Host:`` (every path) and
the token (every path but the probes), so both listeners hold the same rules.
The page's HTML is ``page``'s; the ``authproxy status`` client is ``statusclient``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from authproxy import __version__
from authproxy.admin.gate import HostRule, TokenRule, challenges, check_host
from authproxy.admin.page import render_page
from authproxy.admin.statusview import runtime_view, url_host
from authproxy.compiled import fully_compiled
from authproxy.errors import AdminHostRefused, AdminTokenRequired, ProxyError, render
from authproxy.ops.rates import UNMATCHED, Rates
from authproxy.secrecy.secrets import Secret

if TYPE_CHECKING:
    from authproxy.runtime import Runtime

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_NO_TRAFFIC = {"requests": 0, "errors": 0, "req_rate": 0.0, "err_rate": 0.0, "latency_ms": None}


class AdminBase:
    """The admin listener's pages over a metrics registry; subclasses say what is ready and what runs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rates = Rates(registry)
        self.host = ""
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.host_rule: HostRule | None = None  # set once bound (``listen_admin``)
        self.token_rule: TokenRule | None = None

    def is_ready(self) -> bool:
        raise NotImplementedError

    async def current_status(self) -> dict[str, Any]:
        """What ``/status.json`` serves and the page shows."""
        raise NotImplementedError

    def build_status(
        self,
        *,
        routes: list[dict[str, Any]],
        reloads: list[dict[str, Any]],
        started_at: float,
        listen: str,
        config_file: str,
    ) -> dict[str, Any]:
        """The status document: ``routes`` (route fields and ``token``) with their traffic, and the totals."""
        now = time.time()
        traffic, span = self.rates.traffic()
        by_status = self.rates.status_counts()
        reg = self.rates.registry
        tunnels = {
            kind: int(reg.get_sample_value("authproxy_active_tunnels", {"kind": kind}) or 0)
            for kind in ("tunnel", "intercept")
        }
        return {
            "version": __version__,
            "compiled": fully_compiled(),
            "now": round(now, 3),
            "started_at": round(started_at, 3),
            "uptime": round(now - started_at, 1),
            "ready": self.is_ready(),
            "listen": listen,
            "admin": f"{url_host(self.host)}:{self.port}",
            "config_file": config_file,
            "rate_window": round(span, 1),
            "connections": int(reg.get_sample_value("authproxy_active_connections") or 0),
            "tunnels": tunnels,
            "certificates_cached": int(reg.get_sample_value("authproxy_certificates_cached") or 0),
            "routes": [
                {**r, **traffic.get(r["name"], _NO_TRAFFIC), "statuses": by_status.get(r["name"], {})} for r in routes
            ],
            "unmatched": {**traffic.get(UNMATCHED, _NO_TRAFFIC), "statuses": by_status.get(UNMATCHED, {})},
            "reloads": reloads,
        }

    # -- handlers ----------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.is_ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.rates.registry), headers={"Content-Type": content_type})

    async def status_json(self, request: web.Request) -> web.Response:
        return web.Response(
            text=json.dumps(await self.current_status(), indent=2) + "\n",
            content_type="application/json",
        )

    async def page(self, request: web.Request) -> web.Response:
        resp = web.Response(text=render_page(await self.current_status()), content_type="text/html")
        resp.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        return resp

    async def close(self) -> None:
        await self.rates.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class AdminServer(AdminBase):
    """The admin pages of one proxy process; ``status()`` is what ``/status.json`` serves."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt.metrics.registry)
        self.rt = rt

    def is_ready(self) -> bool:
        return self.rt.ready

    async def current_status(self) -> dict[str, Any]:
        await self.rt.store.probe()  # the store's health as of now, not as of the last fetch
        return self.status()

    def status(self) -> dict[str, Any]:
        rt = self.rt
        cfg = rt.snapshot.config
        routes, reloads = runtime_view(rt)
        listen = f"{url_host(rt.bound[0])}:{rt.bound[1]}" if rt.bound is not None else cfg.listen
        status = self.build_status(
            routes=routes, reloads=reloads, started_at=rt.started_at, listen=listen, config_file=str(cfg.file)
        )
        status["token_store"] = rt.store.health()
        return status


@web.middleware
async def _headers(request: web.Request, handler: _Handler) -> web.StreamResponse:
    resp = await handler(request)
    resp.headers.setdefault("Cache-Control", "no-store")
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "no-referrer")
    return resp


def _gate(admin: AdminBase) -> Middleware:
    """The middleware that holds every request to ``admingate``'s two rules before any path answers."""

    @web.middleware
    async def gate(request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            if admin.host_rule is None:  # not bound yet: nothing to compare with, so nothing passes
                raise AdminHostRefused("the admin listener is starting.")
            check_host(request.headers.getall("Host", []), request.host, admin.host_rule)
            if admin.token_rule is not None:
                admin.token_rule.check(request.path, request.headers.getall("Authorization", []))
        except ProxyError as err:
            return _refusal(err)
        return await handler(request)

    return gate


def _refusal(err: ProxyError) -> web.Response:
    """The proxy's JSON error shape (``errors.render``), with the 401's challenges."""
    status, headers, body = render(err)
    resp = web.Response(status=status, body=body)
    for name, value in headers:
        if name != b"content-length":
            resp.headers[name.decode()] = value.decode()
    if isinstance(err, AdminTokenRequired):
        for challenge in challenges(err):
            resp.headers.add("WWW-Authenticate", challenge)
    return resp


async def start_admin(rt: Runtime, host: str, port: int) -> AdminServer:
    """Listen on ``host:port`` (0: any free port) in the running loop; ``.port`` is the port bound.

    The token and the extra ``Host:`` names are the config's at start (a change needs a restart).
    """
    admin = AdminServer(rt)
    cfg = rt.snapshot.config
    await listen_admin(admin, host, port, cfg.admin_token, cfg.admin_hosts)
    return admin


async def listen_admin(
    admin: AdminBase, host: str, port: int, token: Secret | None = None, names: tuple[str, ...] = ()
) -> None:
    """Serve ``admin``'s paths on ``host:port``, behind the Host check and, if given, the token."""
    admin.token_rule = None if token is None else TokenRule.of(token.reveal())
    app = web.Application(middlewares=[_headers, _gate(admin)])
    app.router.add_get("/", admin.page)
    app.router.add_get("/healthz", admin.healthz)
    app.router.add_get("/readyz", admin.readyz)
    app.router.add_get("/metrics", admin.metrics)
    app.router.add_get("/status.json", admin.status_json)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    admin._runner = runner
    # Known only now: what an unspecified bind or a name bound to.
    admin.host_rule = HostRule.of(host, [str(a[0]) for a in runner.addresses], names)
    bound = runner.addresses[0]
    admin.host, admin.port = host, int(bound[1])
    admin.rates.start()
