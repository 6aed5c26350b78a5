"""A stubbed token endpoint (``stub_token_endpoint: true``): the route's placeholder handed out as an access token.

An SDK that insists on doing OAuth itself POSTs to the route's ``token_url``
through the proxy; the proxy answers, never forwarding the request, so the
SDK needs no real client secret and gets a token that is worth something
only through the proxy, which swaps it for the real one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from authproxy.messages import ProxyRequest, Reply
from authproxy.net.hosts import HostError, format_authority, normalize_host
from authproxy.ops.accesslog import AccessRecord
from authproxy.placeholders.index import Placeholders

# What the stub says of the placeholder token's life: it never expires at the
# proxy, but an SDK caches a token only for as long as this says.
STUB_EXPIRES_IN = 3600


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
