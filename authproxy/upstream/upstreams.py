"""The upstream side: the connection pool, TLS contexts, and header filtering."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from authproxy.config import Limits, Route, Timeouts
from authproxy.credentials.tlsclient import ClientCertError, Contexts
from authproxy.errors import UpstreamTLSError
from authproxy.net.egress import Egress
from authproxy.upstream.pool import Pool

if TYPE_CHECKING:
    import aiohttp

# RFC 9110 §7.6.1, plus headers only a proxy hop uses.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


# Connection options that name no header (RFC 9112 §9.6); the common case skips a second pass.
OWN_TOKENS = frozenset({b"close", b"keep-alive"})


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names listed in ``Connection`` are hop-by-hop too (RFC 9110 §7.6.1)."""
    out: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            out.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return out


def without_hop_by_hop(
    raw: Iterable[tuple[bytes, bytes]],
    drop: frozenset[bytes] = HOP_BY_HOP,
    via: Callable[[bytes], None] | None = None,
) -> list[tuple[bytes, bytes]]:
    """``raw`` minus the names in ``drop`` and those its Connection header lists, in one pass.

    ``via``: when ``drop`` names ``via``, each Via value is handed to it (it may
    raise) and kept, so that looking at Via costs the common header nothing.
    """
    out: list[tuple[bytes, bytes]] = []
    forward_into(out, raw, drop, via)
    return out


def forward_into(
    out: list[tuple[bytes, bytes]],
    raw: Iterable[tuple[bytes, bytes]],
    drop: frozenset[bytes],
    via: Callable[[bytes], None] | None = None,
) -> bytes | None:
    """Append to ``out`` what ``without_hop_by_hop`` keeps of ``raw``; return the Upgrade asked for, if any.

    The same pass reads the upgrade a client asks for (RFC 9110 §7.8: an
    ``Upgrade`` header, and ``upgrade`` among the Connection options), as
    ``upgrade.is_upgrade`` does, when ``drop`` names both headers (hop-by-hop
    ones always do). What ``out`` held before is left as it was.
    """
    start = len(out)
    listed: set[bytes] | None = None
    upgrade: bytes | None = None
    for pair in raw:
        low = pair[0].lower()
        if low in drop:
            if low == b"connection":
                if listed is None:
                    listed = set()
                listed.update(t.strip().lower() for t in pair[1].split(b",") if t.strip())
            elif low == b"upgrade":
                upgrade = pair[1].strip()
            elif low == b"via" and via is not None:
                via(pair[1])
                out.append(pair)
            continue
        out.append(pair)
    if listed is None:
        return None
    if not listed <= OWN_TOKENS:
        out[start:] = [p for p in out[start:] if p[0].lower() not in listed]
    return upgrade if upgrade and b"upgrade" in listed else None


def filter_response_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A response's headers minus the hop-by-hop ones (RFC 9110 §7.6.1)."""
    out: list[tuple[bytes, bytes]] = []
    listed: set[bytes] | None = None
    for pair in raw:
        low = pair[0].lower()
        if low not in HOP_BY_HOP:
            out.append(pair)
        elif low == b"connection":
            if listed is None:
                listed = set()
            listed.update(t.strip().lower() for t in pair[1].split(b",") if t.strip())
    if listed and not listed <= OWN_TOKENS:
        out = [p for p in out if p[0].lower() not in listed]
    return out


class Upstreams:
    """The connection pool and the TLS contexts upstream connections are made with (tlsclient.py)."""

    def __init__(
        self, limits: Limits, timeouts: Timeouts, extra_ca_file: Path | None = None, egress: Egress | None = None
    ) -> None:
        self._timeouts = timeouts
        # Shared with the token endpoints' fetches: one rule of trust for every plane.
        self.tls = Contexts(extra_ca_file)
        self._contexts: dict[tuple[Path | None, bool], ssl.SSLContext] = {}
        self._by_route: dict[int, tuple[Route, ssl.SSLContext]] = {}
        # No connection limit of its own: the proxy's max_connections bounds the load.
        # An upstream's head is held to the bound a client's is.
        self.pool = Pool(timeouts, limits.max_header_bytes, egress)

    def ssl_context(self, route: Route | None) -> ssl.SSLContext:
        """Contexts are built once: creating one reads the CA store from disk.

        A route with a client certificate stats its two files on each request
        and gets a new context when they changed (a rotation); a new context is
        a new pool key, so new connections present the new certificate while
        requests in flight finish on theirs.
        """
        if route is None:
            return self._context(None, True)
        if route.client_cert is not None:
            return self._with_cert(route)
        # By the route object (kept, so its id is not reused): hashing its ``ca_file``, a Path,
        # is a Python call on every request.
        known = self._by_route.get(id(route))
        if known is not None and known[0] is route:
            return known[1]
        ctx = self._context(route.ca_file, route.verify)
        if len(self._by_route) >= 1024:
            self._by_route.clear()  # routes of reloads long gone
        self._by_route[id(route)] = (route, ctx)
        return ctx

    def _context(self, ca_file: Path | None, verify: bool) -> ssl.SSLContext:
        ctx = self._contexts.get((ca_file, verify))
        if ctx is None:
            ctx = self._contexts[(ca_file, verify)] = self.tls.get(self.tls.trust(ca_file, verify))
        return ctx

    def _with_cert(self, route: Route) -> ssl.SSLContext:
        try:
            return self.tls.get(self.tls.trust(route.ca_file, route.verify), route.client_cert, f"route {route.name}")
        except ClientCertError as exc:
            raise UpstreamTLSError(f"the client certificate of route {route.name} cannot be used: {exc}.") from None

    async def close(self) -> None:
        await self.pool.close()


class TokenSession:
    """The session for token endpoints: no proxy, its own pool, made on first use.

    Only fetching grants (OAuth, bws) talk to a token endpoint. A table of
    static credentials (api_key, bearer, basic, command) never calls ``get``,
    so aiohttp's client (some 13 MB of the proxy's memory) is never imported.
    """

    def __init__(self, timeouts: Timeouts) -> None:
        self._connect = timeouts.connect
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def prepare(self, routes: Iterable[Route]) -> None:
        """Import the client now when a route will fetch, not on the first fetch.

        A cold import of aiohttp takes ~0.2 s: paid inside a fetch, every
        request waiting on it (the first one, or a whole burst of 401s waiting
        on a refresh) waited that much longer; with ``--workers`` it hit each
        worker's first fetch, so a refresh was three times slower on the worker
        that had not fetched yet.
        """
        # A route whose secret is unset (``missing``) answers 502 without fetching, until a
        # reload brings its value: the shipped routes.yaml, before its variables are set.
        if self._session is None and any(r.auth.fetches and not r.missing for r in routes):
            import aiohttp  # noqa: F401

    def get(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._closed:
                # As a closed aiohttp session would: a fetch that starts during shutdown
                # must not leave behind a new session that nothing closes.
                raise RuntimeError("the token endpoint session is closed")
            import aiohttp

            self._session = aiohttp.ClientSession(
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect),
            )
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
