"""The status page: one self-contained HTML document built from the status document.

Every value is HTML-escaped on its way in (``_e``); the page has inline CSS, no
script, and refreshes itself. What the document holds is ``web``'s business.
"""

from __future__ import annotations

import html
from typing import Any

from authproxy.admin.humanize import ago, clock, expiry, rate, span, store_health, workers_ready

_STATE_HINT = {
    "fresh": "a valid credential is cached",
    "refreshing": "a fetch is running now",
    "due": "valid; the next request starts a refresh ahead of expiry",
    "expired": "fetched before, expired since; the next request fetches anew",
    "failing": "the last fetch failed (a cached credential, if still valid, keeps serving)",
    "unavailable": "the route has no credential (its secret is not set)",
    "none yet": "no request has needed it yet",
}

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
    tls = r.get("tls") or {}
    if tls.get("trust"):
        certs = [f"presents {_e(tls[k])}" for k in ("client_cert",) if tls.get(k)]
        if tls.get("token_client_cert") and tls.get("token_client_cert") != tls.get("client_cert"):
            certs.append(f"token endpoint: presents {_e(tls['token_client_cert'])}")
        lines.append(" · ".join([f"TLS trusts {_e(tls['trust'])}", *certs]))
    about = "".join(f'<div class="small">{line}</div>' for line in lines)
    last_fetch = ago(tok.get("last_fetch_at"), now)
    fetches = int(tok.get("fetches") or 0)
    err = tok.get("last_error")
    err_html = '<span class="small">-</span>'
    if err:
        err_html = f'<div class="error-text">{_e(err)}</div>'
        if tok.get("last_error_at") is not None:
            err_html += f'<div class="small">{_e(ago(tok.get("last_error_at"), now))}</div>'

    err_rate = float(r.get("err_rate") or 0)
    lat = r.get("latency_ms")
    return (
        "<tr>"
        f'<td class="route"><div class="name">{_e(r["name"])}</div>{about}</td>'
        f"<td>{_pill(str(r['mode']), 'mode')}</td>"
        f"<td><code>{_e(r['grant'])}</code></td>"
        f"<td>{_pill(state, state.replace(' ', '-'), _STATE_HINT.get(state, ''))}</td>"
        f'<td class="num">{_e(expiry(tok))}</td>'
        f'<td class="num">{_e(last_fetch)}<div class="small">{fetches} fetch{"es" if fetches != 1 else ""}</div></td>'
        f'<td class="num">{_e(rate(float(r.get("req_rate") or 0)))}'
        f'<div class="small">{int(r.get("requests") or 0)} total</div></td>'
        f'<td class="num{" err" if err_rate > 0 else ""}">{_e(rate(err_rate))}'
        f'<div class="small">{int(r.get("errors") or 0)} total</div></td>'
        f'<td class="num">{_e("-" if lat is None else f"{lat:.1f} ms")}</td>'
        f"<td>{err_html}</td>"
        "</tr>"
    )


def _reload_row(ev: dict[str, Any], now: float) -> str:
    at = float(ev["at"])
    ok = bool(ev.get("ok"))
    return (
        f'<tr><td class="num">{_e(clock(at))}<div class="small">{_e(ago(at, now))}</div></td>'
        f"<td>{_pill('ok', 'ok') if ok else _pill('failed', 'failed')}</td>"
        f'<td class="{"detail" if ok else "detail error-text"}">{_e(ev.get("detail", ""))}</td></tr>'
    )


def render_page(data: dict[str, Any]) -> str:
    """The status page: one self-contained HTML document (inline CSS, no script, refreshes itself).

    Longer than a screen on purpose: one template that reads in the order of the page it
    renders; its rows are ``_route_row`` and ``_reload_row``.
    """
    now = float(data["now"])
    ready = bool(data.get("ready"))
    tunnels = data.get("tunnels") or {}
    cards = [
        ("Listening", data.get("listen", "-")),
        ("Uptime", span(float(data.get("uptime") or 0))),
        ("Routes", len(data.get("routes") or [])),
        ("Connections", data.get("connections", 0)),
        ("Tunnels", tunnels.get("tunnel", 0)),
        ("Intercepted", tunnels.get("intercept", 0)),
        ("Certificates cached", data.get("certificates_cached", 0)),
    ]
    if data.get("workers"):
        cards.insert(1, ("Workers", workers_ready(data["workers"])))
    if data.get("token_store"):
        cards.append(("Token store", store_health(data["token_store"], now)))
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
        f'<p class="small">Requests that matched no route: {_e(rate(float(um.get("req_rate") or 0)))}/s '
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
        f"<footer>Rates over the last {_e(span(float(data.get('rate_window') or 0)))}. "
        f"Generated {_e(clock(now))}; refreshes every 5 s. "
        'Machine-readable: <a href="status.json">status.json</a> · <a href="metrics">metrics</a>.'
        "</footer></main></body></html>\n"
    )
