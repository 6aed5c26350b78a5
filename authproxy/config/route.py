"""One ``routes:`` entry → a ``Route``: its match, gateway prefix, upstream URL and grant."""

from __future__ import annotations

from urllib.parse import urlsplit

from authproxy.access import parse_allow
from authproxy.config.chains import check_route_refs
from authproxy.config.model import Match, Route, Upstream
from authproxy.config.placeholder import PlaceholderSpec, check_unique, parse_placeholder
from authproxy.credentials.grants import REGISTRY, Grant
from authproxy.credentials.tlsclient import parse_client_cert
from authproxy.net.hosts import HostError, normalize_host, normalize_path, parse_port, split_hostport
from authproxy.net.parent import parse_upstream_proxy
from authproxy.schema.files import readable_file
from authproxy.schema.yamlreader import Section


def parse_routes(top: Section) -> tuple[Route, ...]:
    """The `routes:` list; a name, and a gateway prefix, may each be used once."""
    routes: list[Route] = []
    names: dict[str, str] = {}
    gateways: dict[str, str] = {}
    for i, sec in enumerate(top.sections("routes")):
        route = _route(sec, i)
        if route is None:
            continue
        if route.name in names:
            sec.error("name", f"the name `{route.name}` is already used by {names[route.name]}")
        names[route.name] = sec.path
        if route.gateway is not None:
            if route.gateway in gateways:
                sec.error("gateway", f"`{route.gateway}` is already used by {gateways[route.gateway]}")
            gateways[route.gateway] = sec.path
        routes.append(route)
    check_unique(top, [(r.name, r.placeholder) for r in routes])
    if not top.has("routes"):
        top.error(None, "`routes` is required (a list of routes)")
    check_route_refs(routes, top.problems)
    return tuple(routes)


def _route(sec: Section, index: int) -> Route | None:
    name = sec.text("name", required=True)
    if name is not None and not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        sec.error("name", "use letters, digits, `-`, `_` and `.` only")
    match = _match(sec)
    gateway = _gateway(sec)
    upstream = _upstream(sec, gateway is not None)
    if match is None and gateway is None and not sec.has("match"):
        sec.error(None, "a route needs `match`, `gateway`, or both")
    if gateway is not None and upstream is None and not sec.has("upstream"):
        sec.error("gateway", "a gateway route needs `upstream` (where to send its requests)")
    ca_file = readable_file(sec, "ca_file")
    verify = sec.boolean("verify", True)
    if not verify:
        sec.warn("verify", "upstream certificates are NOT verified for this route")
    client_cert = parse_client_cert(sec)
    if client_cert is not None and not verify:
        sec.warn("client_cert", "presented to whoever answers: with `verify: false` the upstream is not authenticated")
    allow = parse_allow(sec)
    parent = parse_upstream_proxy(sec, allow_direct=True)
    auth, placeholder = _auth(sec)
    # On for a standing secret (Grant.scrubs_by_default) and wherever the workload holds a placeholder.
    scrub = sec.boolean("scrub", auth is not None and (auth.scrubs_by_default() or placeholder is not None))
    sec.finish()
    if name is None or auth is None:
        return None
    return Route(
        name=name,
        index=index,
        line=sec.line,
        match=match,
        gateway=gateway,
        upstream=upstream,
        ca_file=ca_file,
        verify=verify,
        auth=auth,
        missing=tuple(sec.missing),
        allow=allow,
        upstream_proxy=parent,
        client_cert=client_cert or auth.client_cert(),
        placeholder=placeholder,
        scrub=scrub,
    )


def _match(sec: Section) -> Match | None:
    text = sec.text("match")
    if text is None:
        return None
    match = parse_match(text)
    if isinstance(match, str):
        sec.error("match", match)
        return None
    return match


def parse_match(text: str) -> Match | str:
    """``host``, ``*.host``, ``host:port``, ``host:*``, each with an optional path prefix; or why ``text`` is none."""
    raw = text.strip()
    authority, slash, path = raw.partition("/")
    try:
        host, port_text = split_hostport(authority)
        wildcard = host.startswith("*.")
        if wildcard:
            host = host[2:]
        if "*" in host:
            raise HostError("`*` may only stand as the first label (`*.example.com`)")
        host = normalize_host(host)
        any_port = port_text == "*"
        port = None if port_text is None or any_port else parse_port(port_text)
        prefix = normalize_path("/" + path) if slash else ""
    except (HostError, ValueError) as exc:
        return str(exc)
    return Match(host, wildcard, port, any_port, prefix.rstrip("/") if prefix != "/" else "", raw)


def _gateway(sec: Section) -> str | None:
    text = sec.text("gateway")
    if text is None:
        return None
    try:
        prefix = normalize_path(text).rstrip("/") if text.startswith("/") else ""
    except ValueError as exc:
        sec.error("gateway", str(exc))
        return None
    if not prefix:
        sec.error("gateway", "must be a path prefix such as `/reports` (not `/`)")
        return None
    return prefix


def _upstream(sec: Section, gateway: bool) -> Upstream | None:
    text = sec.text("upstream")
    if text is None:
        return None
    try:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HostError("must be an http:// or https:// URL")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise HostError("must not carry a query, fragment or user info")
        host = normalize_host(parts.hostname)
        port = parts.port
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        elif not 0 < port < 65536:
            raise HostError(f"`{port}` is not a port number (1-65535)")
    except ValueError as exc:  # HostError, and urlsplit's own complaints
        sec.error("upstream", str(exc))
        return None
    path = parts.path.rstrip("/")
    if path and not gateway:
        sec.error("upstream", "a base path in `upstream` is only used with `gateway`")
    return Upstream(parts.scheme, host, port, path)


def _auth(sec: Section) -> tuple[Grant | None, PlaceholderSpec | None]:
    auth = sec.section("auth", required=True)
    if auth is None:
        return None, None
    kind = auth.text("type", required=True)
    if kind is None:
        return None, None  # without a type, no key can be judged known or unknown
    cls = REGISTRY.get(kind)
    if cls is None:
        known = ", ".join(sorted(REGISTRY))
        auth.error("type", f"unknown grant type `{kind}` (known: {known})")
        return None, None
    grant = cls.parse(auth)
    placeholder = parse_placeholder(auth, grant)
    auth.finish()
    return grant, placeholder
