"""Which parent proxy a connection goes through: ``upstream_proxy``, a route's own, and ``no_upstream_proxy``.

The choice, for a destination ``host:port`` (and the route that sends to it,
if any):

1. the route's own ``upstream_proxy`` (a parent, or ``direct``), when it
   gives one: for everything that route sends, its requests and its token
   endpoint alike;
2. else ``direct`` when no top-level ``upstream_proxy`` is set, or when a
   ``no_upstream_proxy`` pattern matches the destination (the route ``match``
   syntax and meaning: a pattern without a port means the scheme's default
   port, ``host:*`` every port);
3. else the top-level parent.

Nothing else goes direct: a parent that is down is an error, never a reason
to try without it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from authproxy.config.model import Config, Match, Route
from authproxy.config.route import parse_match
from authproxy.net.hosts import HostError, normalize_host
from authproxy.net.parent import DIRECT, Parent, parse_upstream_proxy
from authproxy.schema.yamlreader import Section

_CACHE_MAX = 4096


def parse_parents(top: Section) -> tuple[Parent | None, tuple[Match, ...]]:
    """The top-level ``upstream_proxy`` and ``no_upstream_proxy``."""
    parent = parse_upstream_proxy(top, allow_direct=False)
    items = top.str_items("no_upstream_proxy")
    bypass: list[Match] = []
    for text, path, line in items or []:
        match = parse_match(text)
        if isinstance(match, str):
            top.problems.error(path, line, top.doc.scrub(f"`{text}`: {match}"))
        elif match.path:
            why = "no path here: the choice is made per connection, not per request"
            top.problems.error(path, line, f"`{text}`: {why}")
        else:
            bypass.append(match)
    if bypass and parent is None and not top.has("upstream_proxy"):
        top.warn("no_upstream_proxy", "has no effect without a top-level `upstream_proxy`")
    return (parent if isinstance(parent, Parent) else None), tuple(bypass)


def loops_to_listener(parent: Parent, listen_host: str, listen_port: int) -> bool:
    """Whether the parent, as spelled, is this proxy's own listen address: a proxy loop.

    Only the spelling is judged here; the address it resolves to is judged
    when it is dialled (egress.py), where any other spelling of the proxy
    itself is refused with ``proxy_loop``.
    """
    if parent.port != listen_port:
        return False
    local = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}  # noqa: S104 (compared, not bound)
    return parent.host == listen_host or (parent.host in local and listen_host in local)


class Parents:
    """The choice above, for one configuration; the top level's answers remembered per destination."""

    def __init__(self, default: Parent | None, bypass: tuple[Match, ...] = (), *, routes_own: bool = True) -> None:
        self.default = default
        self._bypass = bypass
        self._chosen: dict[tuple[str, int, int], Parent | None] = {}
        # No parent anywhere: the per-request path asks this one attribute and goes direct.
        self.off = default is None and not routes_own

    @classmethod
    def of(cls, config: Config) -> Parents:
        own = any(r.upstream_proxy is not None for r in config.routes)
        return cls(config.upstream_proxy, config.no_upstream_proxy, routes_own=own)

    def choose(self, route: Route | None, host: str, port: int, default_port: int) -> Parent | None:
        """The parent for a connection to ``host:port`` (``host`` normalized) made for ``route``; None: direct."""
        if route is not None and route.upstream_proxy is not None:
            own = route.upstream_proxy
            return None if own == DIRECT else own  # type: ignore[return-value]
        if self.default is None:
            return None
        key = (host, port, default_port)
        try:
            return self._chosen[key]
        except KeyError:
            pass
        chosen = None if any(_matches(m, host, port, default_port) for m in self._bypass) else self.default
        if len(self._chosen) >= _CACHE_MAX:
            self._chosen.clear()
        self._chosen[key] = chosen
        return chosen

    def for_url(self, route: Route | None, url: str) -> Parent | None:
        """The parent for a request to ``url`` (a token endpoint, Bitwarden, discovery)."""
        if (route is None or route.upstream_proxy is None) and self.default is None:
            return None
        parts = urlsplit(url)
        default_port = 443 if parts.scheme.lower() == "https" else 80
        try:
            host, port = normalize_host(parts.hostname or ""), parts.port or default_port
        except (HostError, ValueError):
            host, port = "", 0  # matches no pattern: the parent, as for any host not listed
        return self.choose(route, host, port, default_port)


def describe(config: Config) -> str | None:
    """What ``check`` says of the parent proxies (credentials by their source only); None when there are none."""
    own = [r for r in config.routes if r.upstream_proxy is not None]
    if config.upstream_proxy is None and not own:
        return None
    top = config.upstream_proxy
    out = f"parent proxy: {top.shown}" if top is not None else "parent proxy: none (direct)"
    if top is not None and config.no_upstream_proxy:
        out += "; direct for " + ", ".join(m.text for m in config.no_upstream_proxy)
    for r in own:
        p = r.upstream_proxy
        out += f"; route {r.name}: " + (p.shown if isinstance(p, Parent) else "direct")
    return out + "."


def _matches(m: Match, host: str, port: int, default_port: int) -> bool:
    if m.wildcard:
        # `*.h` matches one or more labels in front of h, never h itself (as a route's match).
        if not host.endswith("." + m.host):
            return False
    elif host != m.host:
        return False
    return m.port_matches(port, default_port)
