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
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from authproxy import __version__
from authproxy.admin.gate import HostRule, TokenRule, challenges, check_host
from authproxy.admin.statusview import runtime_view, url_host
from authproxy.errors import AdminHostRefused, AdminTokenRequired, ProxyError, one_line, render
from authproxy.net import control
from authproxy.ops.rates import UNMATCHED, Rates
from authproxy.secrecy.secrets import Secret

if TYPE_CHECKING:
    from authproxy.runtime import Runtime

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATE_HINT = {
    "fresh": "a valid credential is cached",
    "refreshing": "a fetch is running now",
    "due": "valid; the next request starts a refresh ahead of expiry",
    "expired": "fetched before, expired since; the next request fetches anew",
    "failing": "the last fetch failed (a cached credential, if still valid, keeps serving)",
    "unavailable": "the route has no credential (its secret is not set)",
    "none yet": "no request has needed it yet",
}
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
        return self.status()

    def status(self) -> dict[str, Any]:
        rt = self.rt
        cfg = rt.snapshot.config
        routes, reloads = runtime_view(rt)
        listen = f"{url_host(rt.bound[0])}:{rt.bound[1]}" if rt.bound is not None else cfg.listen
        return self.build_status(
            routes=routes, reloads=reloads, started_at=rt.started_at, listen=listen, config_file=str(cfg.file)
        )


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


# -- formatting shared by the page and the table ------------------------------


def _span(seconds: float) -> str:
    """3 s, 4 min 10 s, 2 h 5 min, 3 d 4 h."""
    s = round(abs(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, s = divmod(s, 60)
        return f"{m} min {s} s" if s else f"{m} min"
    if s < 86400:
        h, rem = divmod(s, 3600)
        m = rem // 60
        return f"{h} h {m} min" if m else f"{h} h"
    d, rem = divmod(s, 86400)
    h = rem // 3600
    return f"{d} d {h} h" if h else f"{d} d"


def _ago(at: float | None, now: float) -> str:
    return "-" if at is None else f"{_span(now - at)} ago"


def _expires(token: dict[str, Any]) -> str:
    exp = token.get("expires_in")
    if exp is None:
        return "never" if token.get("state") in ("fresh", "refreshing", "due") else "-"
    return f"in {_span(exp)}" if exp > 0 else "expired"


def _rate(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def _workers_ready(workers: list[dict[str, Any]]) -> str:
    """``2 of 2 ready``: the workers of ``run --workers`` accepting connections."""
    return f"{sum(w.get('state') == 'ready' for w in workers)} of {len(workers)} ready"


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


# -- the page -----------------------------------------------------------------

_CSS = """
:root { color-scheme: light; --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --bg:#f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--fg); background: var(--bg); }
header { background: #24292f; color: #fff; padding: 14px 28px; display: flex; align-items: baseline; gap: 14px; }
header h1 { font-size: 18px; margin: 0; font-weight: 600; }
header .sub { color: #afb8c1; font-size: 13px; }
header .ready { margin-left: auto; }
main { padding: 20px 28px 28px; max-width: 1400px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-bottom: 20px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 130px; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 18px; font-weight: 600; font-variant-numeric: tabular-nums; }
h2 { font-size: 15px; margin: 22px 0 8px; }
table { width: 100%; border-collapse: collapse; background: #fff; border: 1px solid var(--line);
  border-radius: 8px; overflow: hidden; }
th, td { text-align: left; padding: 8px 12px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f6f8fa; color: var(--muted); font-size: 12px; font-weight: 600; text-transform: uppercase;
  letter-spacing: .04em; white-space: nowrap; }
tr:last-child td { border-bottom: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th.num { text-align: right; }
.name { font-weight: 600; }
td.route { min-width: 220px; }
.small { color: var(--muted); font-size: 12px; }
code { font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; background: #eff2f5; padding: 1px 5px;
  border-radius: 4px; }
.pill { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600;
  white-space: nowrap; border: 1px solid transparent; }
.fresh, .ok { color: #1a7f37; background: #dafbe1; border-color: #aceebb; }
.refreshing, .due, .expired { color: #9a6700; background: #fff8c5; border-color: #f5e0a0; }
.failing, .unavailable, .failed { color: #cf222e; background: #ffebe9; border-color: #ffcecb; }
.none-yet { color: #57606a; background: #eaeef2; border-color: #d0d7de; }
.mode { color: #0969da; background: #ddf4ff; border-color: #b6e3ff; font-weight: 500; }
.err { color: #cf222e; }
.error-text { color: #cf222e; max-width: 420px; overflow-wrap: anywhere; }
td.detail { max-width: none; overflow-wrap: anywhere; }
.empty { color: var(--muted); padding: 14px 12px; background: #fff; border: 1px solid var(--line);
  border-radius: 8px; }
footer { color: var(--muted); font-size: 12px; margin-top: 22px; }
footer a { color: #0969da; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _pill(text: str, cls: str, title: str = "") -> str:
    t = f' title="{_e(title)}"' if title else ""
    return f'<span class="pill {_e(cls)}"{t}>{_e(text)}</span>'


def _route_row(r: dict[str, Any], now: float) -> str:
    tok = r["token"]
    state = str(tok.get("state", "none yet"))
    where = []
    if r.get("match"):
        where.append(f"<code>{_e(r['match'])}</code>")
    if r.get("gateway"):
        where.append(f"gateway <code>{_e(r['gateway'])}</code>")
    if r.get("allow"):
        where.append('<span title="an allow list limits methods and paths">restricted</span>')
    lines = [" · ".join(where)] if where else []
    if r.get("upstream"):
        lines.append(f"→ {_e(r['upstream'])}")
    about = "".join(f'<div class="small">{line}</div>' for line in lines)
    last_fetch = _ago(tok.get("last_fetch_at"), now)
    fetches = int(tok.get("fetches") or 0)
    err = tok.get("last_error")
    err_html = '<span class="small">-</span>'
    if err:
        err_html = f'<div class="error-text">{_e(err)}</div>'
        if tok.get("last_error_at") is not None:
            err_html += f'<div class="small">{_e(_ago(tok.get("last_error_at"), now))}</div>'

    err_rate = float(r.get("err_rate") or 0)
    lat = r.get("latency_ms")
    return (
        "<tr>"
        f'<td class="route"><div class="name">{_e(r["name"])}</div>{about}</td>'
        f"<td>{_pill(str(r['mode']), 'mode')}</td>"
        f"<td><code>{_e(r['grant'])}</code></td>"
        f"<td>{_pill(state, state.replace(' ', '-'), _STATE_HINT.get(state, ''))}</td>"
        f'<td class="num">{_e(_expires(tok))}</td>'
        f'<td class="num">{_e(last_fetch)}<div class="small">{fetches} fetch{"es" if fetches != 1 else ""}</div></td>'
        f'<td class="num">{_e(_rate(float(r.get("req_rate") or 0)))}'
        f'<div class="small">{int(r.get("requests") or 0)} total</div></td>'
        f'<td class="num{" err" if err_rate > 0 else ""}">{_e(_rate(err_rate))}'
        f'<div class="small">{int(r.get("errors") or 0)} total</div></td>'
        f'<td class="num">{_e("-" if lat is None else f"{lat:.1f} ms")}</td>'
        f"<td>{err_html}</td>"
        "</tr>"
    )


def _reload_row(ev: dict[str, Any], now: float) -> str:
    at = float(ev["at"])
    ok = bool(ev.get("ok"))
    return (
        f'<tr><td class="num">{_e(_clock(at))}<div class="small">{_e(_ago(at, now))}</div></td>'
        f"<td>{_pill('ok', 'ok') if ok else _pill('failed', 'failed')}</td>"
        f'<td class="{"detail" if ok else "detail error-text"}">{_e(ev.get("detail", ""))}</td></tr>'
    )


def render_page(data: dict[str, Any]) -> str:
    """The status page: one self-contained HTML document (inline CSS, no script, refreshes itself)."""
    now = float(data["now"])
    ready = bool(data.get("ready"))
    tunnels = data.get("tunnels") or {}
    cards = [
        ("Listening", data.get("listen", "-")),
        ("Uptime", _span(float(data.get("uptime") or 0))),
        ("Routes", len(data.get("routes") or [])),
        ("Connections", data.get("connections", 0)),
        ("Tunnels", tunnels.get("tunnel", 0)),
        ("Intercepted", tunnels.get("intercept", 0)),
        ("Certificates cached", data.get("certificates_cached", 0)),
    ]
    if data.get("workers"):
        cards.insert(1, ("Workers", _workers_ready(data["workers"])))
    card_html = "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>' for k, v in cards
    )
    routes = data.get("routes") or []
    if routes:
        rows = "".join(_route_row(r, now) for r in routes)
        routes_html = (
            "<table><thead><tr>"
            "<th>Route</th><th>Mode</th><th>Grant</th><th>Token</th><th class=num>Expires</th>"
            "<th class=num>Last fetch</th><th class=num>Req/s</th><th class=num>Err/s</th>"
            "<th class=num>Latency</th><th>Last error</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>"
        )
    else:
        routes_html = '<div class="empty">No routes in the table.</div>'
    um = data.get("unmatched") or {}
    unmatched_html = (
        f'<p class="small">Requests that matched no route: {_e(_rate(float(um.get("req_rate") or 0)))}/s '
        f"({int(um.get('requests') or 0)} total, {int(um.get('errors') or 0)} errors).</p>"
    )
    reloads = data.get("reloads") or []
    if reloads:
        rl_rows = "".join(_reload_row(ev, now) for ev in reloads)
        reloads_html = (
            "<table><thead><tr><th class=num>When</th><th>Outcome</th><th>Detail</th></tr></thead>"
            f"<tbody>{rl_rows}</tbody></table>"
        )
    else:
        reloads_html = '<div class="empty">No reload since the proxy started.</div>'
    ready_pill = _pill("ready", "ok") if ready else _pill("not ready", "failed")
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="refresh" content="5">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>authproxy status · {_e(data.get('listen', ''))}</title>"
        f"<style>{_CSS}</style></head><body>"
        f'<header><h1>authproxy</h1><span class="sub">{_e(data.get("version", ""))}'
        f" · {_e(data.get('config_file', ''))}</span>"
        f'<span class="ready">{ready_pill}</span></header>'
        f'<main><div class="cards">{card_html}</div>'
        f"<h2>Routes</h2>{routes_html}{unmatched_html}"
        f"<h2>Recent reloads</h2>{reloads_html}"
        f"<footer>Rates over the last {_e(_span(float(data.get('rate_window') or 0)))}. "
        f"Generated {_e(_clock(now))}; refreshes every 5 s. "
        'Machine-readable: <a href="status.json">status.json</a> · <a href="metrics">metrics</a>.'
        "</footer></main></body></html>\n"
    )


# -- `authproxy status` ---------------------------------------------------------


class StatusRefused(Exception):
    """The admin listener answered ``/status.json`` with something other than 200."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the admin listener answered {status}")
        self.status = status


def fetch_status(host: str, port: int, timeout: float = 5, token: str | None = None) -> dict[str, Any]:
    """GET ``/status.json`` from an admin listener (never through a proxy), with ``token`` if given.

    A refusal raises ``StatusRefused`` (401: the token; 421: the Host); no answer, an ``OSError``.
    """
    if host in ("0.0.0.0", ""):  # noqa: S104 - a wildcard listener is reached on loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    url = f"http://{url_host(host)}:{port}/status.json"
    status, body = control.request("GET", url, timeout=timeout, headers=headers)
    if status != 200:
        raise StatusRefused(status)
    data = json.loads(body.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("the admin listener's /status.json is not a JSON object")
    return data


def _table(header: list[str], rows: list[list[str]], right: Collection[int] = ()) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = []
    for row in [header, *rows]:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return lines


def status_table(data: dict[str, Any]) -> str:
    """The status page as text for a terminal: a line about the proxy, the routes, the recent reloads."""
    now = float(data.get("now") or time.time())
    tunnels = data.get("tunnels") or {}
    workers = data.get("workers")
    fleet = _workers_ready(workers).replace(" ready", " workers ready") + "; " if workers else ""
    head = (
        f"authproxy {one_line(data.get('version', '?'))} on {one_line(data.get('listen', '?'))}, "
        f"up {_span(float(data.get('uptime') or 0))}, {'ready' if data.get('ready') else 'NOT READY'}; "
        f"{int(data.get('connections') or 0)} connections, "
        f"{int(tunnels.get('tunnel', 0)) + int(tunnels.get('intercept', 0))} tunnels; "
        f"{fleet}rates over {_span(float(data.get('rate_window') or 0))}"
    )
    rows = []
    for r in data.get("routes") or []:
        tok = r.get("token") or {}
        err = tok.get("last_error")
        err_text = "-"
        if err:
            err_text = one_line(err)
            if tok.get("last_error_at") is not None:
                err_text += f" ({_ago(float(tok['last_error_at']), now)})"
        rows.append(
            [
                one_line(r.get("name", "?")),
                one_line(r.get("mode", "?")),
                one_line(r.get("grant", "?")),
                one_line(tok.get("state", "?")),
                _expires(tok),
                _rate(float(r.get("req_rate") or 0)),
                _rate(float(r.get("err_rate") or 0)),
                err_text,
            ]
        )
    header = ["ROUTE", "MODE", "GRANT", "TOKEN", "EXPIRES", "REQ/S", "ERR/S", "LAST ERROR"]
    lines = [head, ""]
    lines += _table(header, rows, right={5, 6})
    um = data.get("unmatched") or {}
    if um.get("requests"):
        lines.append(
            f"(no route matched: {_rate(float(um.get('req_rate') or 0))} req/s, "
            f"{_rate(float(um.get('err_rate') or 0))} err/s)"
        )
    lines.append("")
    reloads = data.get("reloads") or []
    if reloads:
        lines.append("RECENT RELOADS")
        lines += _table(
            ["WHEN", "OUTCOME", "DETAIL"],
            [
                [_clock(float(ev["at"])), "ok" if ev.get("ok") else "FAILED", one_line(ev.get("detail", ""))]
                for ev in reloads
            ],
        )
    else:
        lines.append("No reload since the proxy started.")
    return "\n".join(lines) + "\n"
