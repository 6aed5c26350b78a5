"""``authproxy status``'s half: fetch ``/status.json`` from an admin listener and show it as text.

Apart from ``web`` so that the command needs no ``aiohttp.web`` server code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from typing import Any

from authproxy.admin.humanize import ago, clock, expiry, rate, span, store_health, workers_ready
from authproxy.admin.statusview import url_host
from authproxy.errors import one_line
from authproxy.net import control


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
    fleet = workers_ready(workers).replace(" ready", " workers ready") + "; " if workers else ""
    head = (
        f"authproxy {one_line(data.get('version', '?'))} on {one_line(data.get('listen', '?'))}, "
        f"up {span(float(data.get('uptime') or 0))}, {'ready' if data.get('ready') else 'NOT READY'}; "
        f"{int(data.get('connections') or 0)} connections, "
        f"{int(tunnels.get('tunnel', 0)) + int(tunnels.get('intercept', 0))} tunnels; "
        f"{fleet}rates over {span(float(data.get('rate_window') or 0))}"
    )
    rows = []
    for r in data.get("routes") or []:
        tok = r.get("token") or {}
        err = tok.get("last_error")
        err_text = "-"
        if err:
            err_text = one_line(err)
            if tok.get("last_error_at") is not None:
                err_text += f" ({ago(float(tok['last_error_at']), now)})"
        rows.append(
            [
                one_line(r.get("name", "?")),
                one_line(r.get("mode", "?")),
                one_line(r.get("grant", "?")),
                one_line(tok.get("state", "?")),
                expiry(tok),
                rate(float(r.get("req_rate") or 0)),
                rate(float(r.get("err_rate") or 0)),
                err_text,
            ]
        )
    header = ["ROUTE", "MODE", "GRANT", "TOKEN", "EXPIRES", "REQ/S", "ERR/S", "LAST ERROR"]
    lines = [head]
    if data.get("token_store"):
        lines.append(one_line(f"token store: {store_health(data['token_store'], now)}"))
    lines.append("")
    lines += _table(header, rows, right={5, 6})
    um = data.get("unmatched") or {}
    if um.get("requests"):
        lines.append(
            f"(no route matched: {rate(float(um.get('req_rate') or 0))} req/s, "
            f"{rate(float(um.get('err_rate') or 0))} err/s)"
        )
    lines.append("")
    reloads = data.get("reloads") or []
    if reloads:
        lines.append("RECENT RELOADS")
        lines += _table(
            ["WHEN", "OUTCOME", "DETAIL"],
            [
                [clock(float(ev["at"])), "ok" if ev.get("ok") else "FAILED", one_line(ev.get("detail", ""))]
                for ev in reloads
            ],
        )
    else:
        lines.append("No reload since the proxy started.")
    return "\n".join(lines) + "\n"
