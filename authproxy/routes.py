"""Which route a request belongs to.

A match without a port means 443 for CONNECT and https, 80 for plain http
and for a CONNECT to port 80. Precedence (PRODUCT.md): exact host over
wildcard (and a longer wildcard suffix over a shorter one), a route with a
port over one without, a longer path prefix over a shorter one, then file
order. The candidates for a host are computed once and cached, so the
per-request work is a dict lookup and a prefix scan of a short list.
"""

from __future__ import annotations

from collections.abc import Sequence

from authproxy.config import Route
from authproxy.net.hosts import prefix_matches, rule_path

_CANDIDATES_MAX = 4096


def connect_default(port: int) -> int:
    """The port a portless match means for a CONNECT to ``port`` (and the requests inside it).

    443, as for https; but a tunnel to port 80 carries what an ``http://``
    URL means, in plain HTTP or TLS (clients that tunnel every URL), so
    there a portless match means 80.
    """
    return 80 if port == 80 else 443


def _rank(route: Route) -> tuple[int, int, int, int, int]:
    m = route.match
    assert m is not None
    return (
        0 if not m.wildcard else 1,
        -len(m.host) if m.wildcard else 0,
        0 if (m.port is not None and not m.any_port) else 1,
        -len(m.path),
        route.index,
    )


class RouteTable:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        matched = sorted((r for r in routes if r.match is not None), key=_rank)
        self._exact: dict[str, list[Route]] = {}
        self._wild: list[Route] = []
        for r in matched:
            assert r.match is not None
            if r.match.wildcard:
                self._wild.append(r)
            else:
                self._exact.setdefault(r.match.host, []).append(r)
        self._gateways = sorted(
            (r for r in routes if r.gateway is not None),
            key=lambda r: -len(r.gateway or ""),
        )
        self._by_name = {r.name: r for r in routes}
        # Per (host, port): the candidates, and whether any of them matches on a path. A plain
        # dict read on every request; emptied when full (hosts beyond 4096 come from a scan or a
        # hostile client, and recomputing them is cheap), where an LRU would pay on every read.
        self._candidates: dict[tuple[str, int, int], tuple[tuple[Route, ...], bool]] = {}

    def get(self, name: str) -> Route | None:
        return self._by_name.get(name)

    def candidates(self, host: str, port: int, default_port: int) -> tuple[Route, ...]:
        """Routes whose host and port match, best first (path not yet considered)."""
        return self._lookup(host, port, default_port)[0]

    def _lookup(self, host: str, port: int, default_port: int) -> tuple[tuple[Route, ...], bool]:
        key = (host, port, default_port)
        found = self._candidates.get(key)
        if found is None:
            routes = tuple(self._compute(host, port, default_port))
            found = (routes, any(r.match is not None and r.match.path for r in routes))
            if len(self._candidates) >= _CANDIDATES_MAX:
                self._candidates.clear()
            self._candidates[key] = found
        return found

    def _compute(self, host: str, port: int, default_port: int) -> list[Route]:
        out = [r for r in self._exact.get(host, ()) if r.match and r.match.port_matches(port, default_port)]
        for r in self._wild:
            m = r.match
            assert m is not None
            # `*.h` matches one or more labels in front of h, never h itself.
            if host.endswith("." + m.host) and m.port_matches(port, default_port):
                out.append(r)
        return out

    def host_matched(self, host: str, port: int, default_port: int) -> bool:
        return bool(self.candidates(host, port, default_port))

    def match(self, host: str, port: int, default_port: int, path: str) -> Route | None:
        """The route for a request to ``host:port`` with ``path`` (no query)."""
        routes, by_path = self._lookup(host, port, default_port)
        if not routes:
            return None
        if not by_path:
            return routes[0]
        norm = rule_path(path)
        for r in routes:
            assert r.match is not None
            if prefix_matches(r.match.path, norm):
                return r
        return None

    def gateway(self, path: str) -> tuple[Route, str] | None:
        """The gateway route whose prefix starts ``path``, and the rest of the path."""
        if not self._gateways:
            return None
        norm = rule_path(path)
        for r in self._gateways:
            assert r.gateway is not None
            if prefix_matches(r.gateway, norm):
                return r, norm[len(r.gateway) :] or "/"
        return None
