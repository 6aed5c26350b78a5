"""What the status page shows of a running proxy's routes and reloads, without the web server.

Apart from ``admin/web.py`` so that a worker of ``run --workers`` can answer its
supervisor's status questions (``worker.worker_status``) without importing
aiohttp.web, which only the process serving the admin listener needs.

Everything it returns has been through the redactor of the process that holds
the tokens (a worker's, under ``run --workers``): ``last_error`` may quote a
token endpoint, and reload details a value of the file.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from authproxy.credentials.tlsclient import Trust, tls_view
from authproxy.secrecy.redact import redact_data

if TYPE_CHECKING:
    from pathlib import Path

    from authproxy.config import Route
    from authproxy.runtime import Runtime


def runtime_view(rt: Runtime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The routes (fields and token state, no traffic) and recent reloads of a running proxy, newest first."""
    extra = rt.snapshot.config.extra_ca_file
    routes = [
        {**route_fields(r), "tls": route_tls(r, extra), "token": rt.tokens.status(r)} for r in rt.snapshot.config.routes
    ]
    reloads = [
        {"at": round(ev.at, 3), "ok": ev.ok, "detail": quoted_values_elided(ev.detail)} for ev in reversed(rt.reloads)
    ]
    return redact_data(routes), redact_data(reloads)


def quoted_values_elided(detail: str) -> str:
    """A reload problem without the values it quotes.

    Config problems quote the offending value (`...`), and a value may be an
    expanded ``${VAR}`` that holds a secret (``verify: ${API_KEY}`` by
    mistake). The location and the sentence stay; ``authproxy check`` and
    the log have the whole message for whoever runs the proxy.
    """
    return re.sub(r"`[^`]*`", "`…`", detail)


def url_host(host: str) -> str:
    """``host`` as it goes in a URL: an IPv6 literal in brackets."""
    return f"[{host}]" if ":" in host else host


def route_tls(r: Route, extra_ca: Path | None) -> dict[str, str | None]:
    """The route's trust store and the client certificates it presents (subject and expiry, never the key)."""
    return tls_view(Trust(extra_ca, r.ca_file, r.verify), r.client_cert, r.auth.client_cert())


def route_fields(r: Route) -> dict[str, Any]:
    up = None
    if r.upstream is not None:
        u = r.upstream
        # The origin only: a base path can hold a secret (webhook URLs do).
        up = f"{u.scheme}://{url_host(u.host)}" + ("" if u.port == u.default_port else f":{u.port}")
    allow = None
    if r.allow is not None:
        allow = [
            {"methods": sorted(a.methods) if a.methods is not None else None, "paths": list(a.paths or ()) or None}
            for a in r.allow
        ]
    return {
        "name": r.name,
        "mode": r.mode,
        "match": r.match.text if r.match is not None else None,
        "gateway": r.gateway,
        "upstream": up,
        "grant": r.auth.type_name,
        "allow": allow,
    }
