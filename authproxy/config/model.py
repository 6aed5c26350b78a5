"""The configuration's model: ``Config`` and its ``Route``s, ``Limits`` and ``Timeouts``, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from authproxy.access import AllowRule, ProxyAuth
from authproxy.config.audit import AuditSettings
from authproxy.config.placeholder import PlaceholderSpec
from authproxy.credentials.grants import Grant
from authproxy.credentials.tlsclient import ClientCert
from authproxy.net.destinations import Destinations
from authproxy.net.parent import Parent
from authproxy.schema.problems import Problem
from authproxy.secrecy.secrets import Secret, Value

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
class TokenStoreSettings:
    """``token_store:``: a shared store (Redis) for every replica's tokens (docs/scale-out.md)."""

    # redis:// or rediss://; not a secret as a whole (it is shown without its password),
    # but a password in it (from ${VAR}) is known to the redactor (config/storeconf.py).
    url: Value
    key: Secret  # Base64 of 32 or more random bytes: names are HMACs and values are sealed under it
    prefix: str = "authproxy:"
    where: str = ""  # the URL without its user and password, for the status page and messages


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
    # The route's own `upstream_proxy`: a Parent, "direct", or None for the top level's choice.
    upstream_proxy: Parent | str | None = None
    # Presented to the upstream when it asks: the route's own `client_cert`, else its token
    # endpoint's (RFC 8705 §3: a certificate-bound token is accepted only with that certificate).
    client_cert: ClientCert | None = None
    placeholder: PlaceholderSpec | None = None  # what the workload holds instead of the secret
    scrub: bool = False  # responses scrubbed of the injected credential (`scrub:`, secrecy/scrub.py)

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
    token_store: TokenStoreSettings | None = None  # None: the file store in state_dir
    upstream_proxy: Parent | None = None  # the parent proxy everything goes through (net/parent.py)
    no_upstream_proxy: tuple[Match, ...] = ()  # destinations that go direct instead
    audit: AuditSettings | None = None  # `audit:`: the decision trail, off by default

    @property
    def listen(self) -> str:
        h = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{h}:{self.listen_port}"
