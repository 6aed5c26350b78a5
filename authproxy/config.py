"""routes.yaml → typed, immutable objects, parsed once.

Nothing after ``load()`` reads YAML: the proxy works on ``Config`` and its
``Route``s. Every problem is collected (``problems.Problems``) so that one
run of ``authproxy check`` shows them all.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from authproxy.access import AllowRule, ProxyAuth, parse_allow, parse_proxy_auth
from authproxy.credentials.grants import REGISTRY, Grant
from authproxy.credentials.grants.bws import check_access_token, parse_endpoints
from authproxy.net.destinations import Destinations, parse_destinations
from authproxy.net.hosts import HostError, normalize_host, normalize_path, parse_port, split_hostport
from authproxy.schema.problems import ConfigError, Problem, Problems
from authproxy.schema.yamlreader import Document, Section
from authproxy.secrecy.redact import REDACTOR
from authproxy.secrecy.secrets import Secret, secrets_in

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_STATE_DIR = "~/.local/state/authproxy"


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = 64 * 1024
    max_connections: int = 1024
    # Connections one client address may hold at once; unset, half of max_connections
    # (see _limits): one address can never take every slot, while a lone local client
    # (on a laptop every client is 127.0.0.1) still has hundreds. Per process under --workers.
    max_connections_per_client: int = 512
    replay_body: int = 1024 * 1024
    max_body_chunk: int = 256 * 1024  # read size per chunk when streaming bodies
    max_headers: int = 100  # header fields in a request
    max_request_line: int = 8 * 1024  # the request line (method, target, version)


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    client_header: float = 30.0
    idle: float = 60.0
    upstream_headers: float = 60.0
    token_fetch: float = 30.0
    drain: float = 30.0
    tls_handshake: float = 10.0  # a client's TLS handshake inside an intercepted CONNECT


@dataclass(frozen=True, slots=True)
class BwsSettings:
    """The top-level ``bws:`` block: the account ``${bws:SECRET_ID}`` values come from."""

    access_token: Secret
    identity_url: str
    api_url: str


@dataclass(frozen=True, slots=True)
class Match:
    """``host``, ``*.host``, ``host:port``, ``host:*``, each with an optional path prefix."""

    host: str  # normalized; for a wildcard, the suffix without `*.`
    wildcard: bool
    port: int | None  # None: the scheme's default port
    any_port: bool
    path: str  # "" for no prefix
    text: str

    def port_matches(self, port: int, default_port: int) -> bool:
        if self.any_port:
            return True
        return port == (self.port if self.port is not None else default_port)


@dataclass(frozen=True, slots=True)
class Upstream:
    scheme: str
    host: str
    port: int
    path: str  # base path, without a trailing slash

    @property
    def default_port(self) -> int:
        return 443 if self.scheme == "https" else 80


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    index: int
    line: int
    match: Match | None
    gateway: str | None
    upstream: Upstream | None
    ca_file: Path | None
    verify: bool
    auth: Grant
    # Why the credential cannot be had ("environment variable X is not set").
    missing: tuple[str, ...] = ()
    allow: tuple[AllowRule, ...] | None = None  # None: any method and path

    @property
    def mode(self) -> str:
        if self.gateway is not None:
            return "gateway"
        if self.upstream is not None and self.upstream.scheme == "http":
            return "plain"
        return "intercept"


@dataclass(frozen=True, slots=True)
class Config:
    file: Path
    listen_host: str
    listen_port: int
    state_dir: Path
    unmatched: str
    limits: Limits
    timeouts: Timeouts
    routes: tuple[Route, ...]
    ca_cert: Path | None = None
    ca_key: Path | None = None
    extra_ca_file: Path | None = None
    bws: BwsSettings | None = None
    admin: tuple[str, int] | None = None
    proxy_auth: ProxyAuth | None = None
    warnings: tuple[Problem, ...] = field(default=())
    admin_token: Secret | None = None  # `admin.token`: what every admin path but the probes requires
    admin_hosts: tuple[str, ...] = ()  # `admin.hosts`: names accepted in `Host:` besides its own address
    destinations: Destinations | None = None  # None: the defaults (destinations.py)

    @property
    def listen(self) -> str:
        h = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{h}:{self.listen_port}"


def parse_listen(text: str) -> tuple[str, int]:
    host, port = split_hostport(text.strip())
    if port is None:
        raise HostError(f"`{text}` needs a port (HOST:PORT)")
    return normalize_host(host or "127.0.0.1"), int(port) if port == "0" else parse_port(port)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate ``path``; raise ``ConfigError`` listing every error."""
    p = Path(path)
    problems = Problems(str(p))
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        problems.error("", None, f"cannot read the file ({exc.strerror or exc}).")
        raise ConfigError(problems.items) from None
    except UnicodeDecodeError as exc:
        line = text_line(p, exc.start)
        problems.error("", line, "the file is not valid UTF-8.")
        raise ConfigError(problems.items) from None
    doc = Document(problems, p.parent.resolve())
    try:
        node = yaml.compose(doc.protect(text), Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or "not valid YAML"
        hint = ""
        if "alphabetic or numeric" in str(reason) or "alias" in str(reason):
            hint = " (a value that starts with `*` must be quoted: '*.example.com')"
        problems.error("", line, f"not valid YAML: {reason}{hint}.")
        raise ConfigError(problems.items) from None
    if node is None:
        problems.error("", None, "the file is empty; it needs at least `routes:`.")
        raise ConfigError(problems.items)
    if not isinstance(node, yaml.MappingNode):
        problems.error("", node.start_mark.line + 1, "the top level must be a mapping.")
        raise ConfigError(problems.items)
    cfg = _parse(Section(node, "", doc), p)
    if problems.errors:
        raise ConfigError(problems.items)
    # From now on no output of this process shows them: every secret read, and every Secret the config holds.
    REDACTOR.learn_config([*doc.secrets, *(s.reveal() for s in secrets_in(cfg))])
    return cfg


def text_line(path: Path, offset: int) -> int | None:
    try:
        return path.read_bytes()[:offset].count(b"\n") + 1
    except OSError:
        return None


def _parse(top: Section, file: Path) -> Config:
    listen_text = top.text("listen", default=DEFAULT_LISTEN) or DEFAULT_LISTEN
    try:
        lhost, lport = parse_listen(listen_text)
    except HostError as exc:
        top.error("listen", str(exc))
        lhost, lport = "127.0.0.1", 8080
    state_dir = Path(top.text("state_dir", default=DEFAULT_STATE_DIR) or DEFAULT_STATE_DIR)
    unmatched = top.choice("unmatched", ("tunnel", "deny"), "tunnel")
    ca_cert = _file(top, "ca_cert")
    ca_key = _file(top, "ca_key")
    if top.has("ca_cert") != top.has("ca_key"):
        top.error("ca_key" if top.has("ca_cert") else "ca_cert", "give both `ca_cert` and `ca_key`, or neither")
    extra_ca_file = _file(top, "extra_ca_file")
    limits = _limits(top.section("limits"))
    timeouts = _timeouts(top.section("timeouts"))
    bws = _bws(top, timeouts, extra_ca_file)
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
    if not top.has("routes"):
        top.error(None, "`routes` is required (a list of routes)")
    admin, admin_token, admin_hosts = _admin(top)
    proxy_auth = parse_proxy_auth(top)
    if proxy_auth is not None:
        known = {r.name for r in routes}
        for user in proxy_auth.users:
            for name in sorted((user.routes or frozenset()) - known):
                top.error("proxy_auth", f"user {user.name} names route `{name}`, which does not exist")
    destinations = parse_destinations(top)
    top.finish()
    return Config(
        file=file,
        listen_host=lhost,
        listen_port=lport,
        state_dir=state_dir.expanduser(),
        unmatched=unmatched,
        limits=limits,
        timeouts=timeouts,
        routes=tuple(routes),
        ca_cert=ca_cert,
        ca_key=ca_key,
        extra_ca_file=extra_ca_file,
        bws=bws,
        admin=admin,
        proxy_auth=proxy_auth,
        warnings=tuple(top.problems.warnings),
        admin_token=admin_token,
        admin_hosts=admin_hosts,
        destinations=destinations,
    )


def _admin(top: Section) -> tuple[tuple[str, int] | None, Secret | None, tuple[str, ...]]:
    """``admin: HOST:PORT``, or ``admin: {listen: HOST:PORT, token: ${VAR}, hosts: [NAME, ...]}``."""
    if not top.is_mapping("admin"):
        text = top.text("admin")
        return (None if text is None else _admin_listen(top, "admin", text)), None, ()
    sec = top.section("admin")
    if sec is None:
        return None, None, ()
    text = sec.text("listen", required=True)
    listen = None if text is None else _admin_listen(sec, "listen", text)
    token = _admin_token(sec)
    hosts = []
    for i, name in enumerate(sec.str_list("hosts") or []):
        try:
            hosts.append(normalize_host(name))
        except HostError as exc:
            sec.error("hosts", f"item {i}: {exc} (a name or address, without port or `*`)")
    sec.finish()
    return listen, token, tuple(hosts)


def _admin_listen(sec: Section, key: str, text: str) -> tuple[str, int] | None:
    try:
        return parse_listen(text)
    except HostError as exc:
        sec.error(key, str(exc))
        return None


# RFC 6750 §2.1: what a Bearer credential may be made of.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _admin_token(sec: Section) -> Secret | None:
    """``admin.token``: it must resolve now (an unset variable would leave the listener open)."""
    text = sec.text("token")
    if text is None:
        return None
    source = sec.source("token") or ""
    if not text:
        sec.error("token", "is empty; set it to a random string, e.g. from `openssl rand -hex 32`")
        return None
    if not _B64TOKEN.fullmatch(text):
        sec.error("token", "must be letters, digits and `-._~+/` (RFC 6750 §2.1), e.g. from `openssl rand -hex 32`")
        return None
    token = Secret(text, source)
    if token.is_literal:
        sec.warn("token", "a literal secret in the file; prefer ${VAR} or ${file:PATH}")
    if len(text) < 16:
        sec.warn("token", "shorter than 16 characters; use a random one, e.g. from `openssl rand -hex 32`")
    return token


def _bws(top: Section, timeouts: Timeouts, extra_ca_file: Path | None) -> BwsSettings | None:
    """Read the `bws:` block and let ``${bws:SECRET_ID}`` use it: one login per load, on first use."""
    sec = top.section("bws")
    if sec is None:
        return None
    # Imported only for a config with a `bws:` block: it loads PyJWT and cryptography's ciphers.
    from authproxy.credentials.bws import Resolver, SyncClient, parse_access_token

    token = sec.secret("access_token", required=True) or Secret("", "", ("bws.access_token",))
    check_access_token(sec, "access_token", token)
    endpoints = parse_endpoints(sec)
    sec.finish()
    if endpoints is None:
        top.doc.bws = Resolver(None, "the top-level `bws:` block has errors")
        return None
    try:
        client = SyncClient(parse_access_token(token.reveal()), *endpoints, timeouts.token_fetch, extra_ca_file)
        top.doc.bws = Resolver(client)
    except ValueError:
        why = token.missing[0] if token.missing else "the `bws.access_token` is not valid"
        top.doc.bws = Resolver(None, why)
    return BwsSettings(token, *endpoints)


def per_client_default(max_connections: int) -> int:
    """Half the connection limit, rounded up: one client address can never hold every slot,
    so another client always finds half of them, yet a single client (on a laptop, every
    client is 127.0.0.1) keeps 512 of the default 1024, more than a browser's whole pool."""
    return (max_connections + 1) // 2


def _limits(sec: Section | None) -> Limits:
    if sec is None:
        return Limits()
    d = Limits()
    max_connections = sec.integer("max_connections", d.max_connections, minimum=1)
    out = Limits(
        max_header_bytes=sec.integer("max_header_bytes", d.max_header_bytes, minimum=1024),
        max_connections=max_connections,
        max_connections_per_client=sec.integer(
            "max_connections_per_client", per_client_default(max_connections), minimum=1
        ),
        replay_body=sec.integer("replay_body", d.replay_body, minimum=0),
        max_body_chunk=sec.integer("max_body_chunk", d.max_body_chunk, minimum=1024),
        max_headers=sec.integer("max_headers", d.max_headers, minimum=1),
        max_request_line=sec.integer("max_request_line", d.max_request_line, minimum=64),
    )
    sec.finish()
    return out


def _timeouts(sec: Section | None) -> Timeouts:
    if sec is None:
        return Timeouts()
    d = Timeouts()
    vals = {k: sec.number(k, getattr(d, k), minimum=0.001) for k in Timeouts.__dataclass_fields__}
    sec.finish()
    return Timeouts(**vals)


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
    ca_file = _file(sec, "ca_file")
    verify = sec.boolean("verify", True)
    if not verify:
        sec.warn("verify", "upstream certificates are NOT verified for this route")
    allow = parse_allow(sec)
    auth = _auth(sec)
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
    )


def _file(sec: Section, key: str) -> Path | None:
    """A path to an existing file, relative to the config file's folder."""
    text = sec.text(key)
    if text is None:
        return None
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = sec.base_dir / path
    if not path.is_file():
        sec.error(key, f"{path} is not a readable file")
        return None
    return path


def _match(sec: Section) -> Match | None:
    text = sec.text("match")
    if text is None:
        return None
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
        sec.error("match", str(exc))
        return None
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


def _auth(sec: Section) -> Grant | None:
    auth = sec.section("auth", required=True)
    if auth is None:
        return None
    kind = auth.text("type", required=True)
    if kind is None:
        return None  # without a type, no key can be judged known or unknown
    cls = REGISTRY.get(kind)
    if cls is None:
        known = ", ".join(sorted(REGISTRY))
        auth.error("type", f"unknown grant type `{kind}` (known: {known})")
        return None
    grant = cls.parse(auth)
    auth.finish()
    return grant
