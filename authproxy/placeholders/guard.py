"""What a request's placeholders mean for it: swapped on their route, refused anywhere else.

A placeholder stands for a secret only on its own route. Seen in a request
that does not match that route (another host, or a path of its host the
route does not cover), it is refused (403 ``placeholder_misdirected``),
logged by route name and counted: a workload that sends one elsewhere is
trying to carry it off, or was told to. A route with ``require:
placeholder`` refuses (403 ``placeholder_required``) a request without its
own, so a key the workload found cannot be used through it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from authproxy.config import Route
from authproxy.errors import PlaceholderMisdirected, PlaceholderRequired
from authproxy.messages import ProxyRequest, Reply
from authproxy.net.hosts import HostError, format_authority, normalize_host
from authproxy.ops.accesslog import AccessRecord
from authproxy.ops.metrics import Metrics
from authproxy.placeholders.index import Placeholders

log = logging.getLogger("authproxy.placeholders")

SWAPPED, ABSENT = "swapped", "absent"
# What a stubbed token endpoint says of the placeholder token's life: it never
# expires at the proxy, but an SDK caches a token only for as long as this says.
STUB_EXPIRES_IN = 3600


def check_connect(ph: Placeholders, target: str, rec: AccessRecord, metrics: Metrics) -> None:
    """A CONNECT to a host named with a placeholder (``PH.attacker.example``): its DNS lookup would carry it off."""
    name = ph.first_in(target.encode("latin-1"))
    if name is not None:
        _refuse(name, rec, metrics)


def _refuse(name: str, rec: AccessRecord, metrics: Metrics) -> None:
    metrics.placeholder_misdirected.labels(name, rec.mode).inc()
    log.warning("refused the placeholder of route %s in a %s request to %s", name, rec.mode, rec.host)
    raise PlaceholderMisdirected(f"the request carries the placeholder of route {name}, which does not go there.")


def check(ph: Placeholders, req: ProxyRequest, route: Route | None, rec: AccessRecord, metrics: Metrics) -> str | None:
    """Refuse a misdirected or missing placeholder; else say what the route's request carries (or None)."""
    hits = ph.found(req.target, req.headers)
    own = route.name if route is not None and route.name in ph.values else None
    stray = hits - {own} if own is not None else hits
    if stray:
        _refuse(min(stray), rec, metrics)
    if own is None:
        return None
    assert route is not None and route.placeholder is not None
    if own in hits:
        return SWAPPED
    if route.placeholder.required:
        raise PlaceholderRequired(f"route {own} takes only its placeholder, and the request does not carry it.")
    return ABSENT


def stub_reply(ph: Placeholders, req: ProxyRequest, rec: AccessRecord) -> Reply | None:
    """A stubbed token endpoint's answer: the route's placeholder as the access token (RFC 6749 §5.1)."""
    found = _authority_path(req)
    if found is None:
        return None
    route = ph.stub_for(*found)
    if route is None:
        return None
    rec.host, rec.path, rec.route, rec.note = found[0], found[1], route, "token-stub"
    if req.method != "POST":
        # RFC 6749 §3.2: the token endpoint takes POST only.
        return _json(405, b"Method Not Allowed", b'{"error":"invalid_request"}', [(b"allow", b"POST")])
    body = b'{"access_token":"%s","token_type":"Bearer","expires_in":%d}' % (ph.raw[route], STUB_EXPIRES_IN)
    return _json(200, b"OK", body, [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")])


def _authority_path(req: ProxyRequest) -> tuple[str, str] | None:
    t = req.target
    if req.tunnel is not None:
        return req.tunnel.authority, t.partition("?")[0] if t.startswith("/") else (urlsplit(t).path or "/")
    if t.startswith("/"):
        return None
    try:
        parts = urlsplit(t)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        return format_authority(normalize_host(parts.hostname or ""), port), parts.path or "/"
    except (HostError, ValueError):
        return None


def _json(status: int, reason: bytes, body: bytes, extra: list[tuple[bytes, bytes]]) -> Reply:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    return Reply(status, reason, headers, _once(body))


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body
