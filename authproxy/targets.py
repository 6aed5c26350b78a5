"""Which route, which destination, which path: a request's target, decided in one place for every mode.

Plain (absolute-form), gateway (``/prefix/...``) and intercepted (inside a
CONNECT) requests each name their destination their own way; ``resolve``
turns each into one ``Target`` that the pipeline (``pipeline.py``) sends,
with the clear-text rule and the tunnel's authority (RFC 9110 §15.5.20)
applied on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from authproxy.config import Route
from authproxy.errors import BadRequest, Denied, MisdirectedRequest
from authproxy.messages import Origin, ProxyRequest
from authproxy.net.egress import Guard, is_ip_literal
from authproxy.net.hosts import HostError, format_host, is_loopback, normalize_host, parse_port, split_hostport
from authproxy.ops.accesslog import AccessRecord
from authproxy.routes import connect_default
from authproxy.runtime import Snapshot

_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
# Decisions remembered per snapshot: a plain dict read on every request, emptied when full (targets
# beyond these come from a scan or a hostile client, and deciding them anew is cheap).
_MEMO_MAX = 1024
_MEMO_TARGET = 512  # longer request targets are decided each time, not kept


@dataclass(frozen=True, slots=True)
class Target:
    mode: str  # plain | gateway | intercept (as logged)
    route: Route | None
    dest: Origin  # where the request is sent
    path: str  # origin-form path and query sent upstream
    host_header: str
    guard: Guard = Guard.ROUTE  # what a new connection's address is judged by (egress.py)
    swap: bool = False  # the request carries its route's placeholder (placeholders/swap.py)


@dataclass(frozen=True, slots=True)
class _Decided:
    """A target as decided once, and what the access record says of it."""

    target: Target
    host: str
    path: str


class _Memo:
    """The decisions of one snapshot, by request target (and tunnel): all ``resolve`` reads.

    Everything it decides is a function of the snapshot (route table,
    ``unmatched``) and the target alone; a refusal is decided anew each time.
    The Host header of an intercepted request is judged on every request.
    """

    __slots__ = ("plain", "snap", "tunneled")

    def __init__(self) -> None:
        self.snap: Snapshot | None = None
        self.plain: dict[str, _Decided] = {}
        self.tunneled: dict[tuple[str, str, int, str], _Decided] = {}

    def reset(self, snap: Snapshot) -> None:
        self.snap = snap
        self.plain = {}
        self.tunneled = {}


_MEMO = _Memo()


def resolve(req: ProxyRequest, snap: Snapshot, rec: AccessRecord) -> Target:
    """Which route, which destination, which path: the only place that decides."""
    memo = _MEMO
    if memo.snap is not snap:
        memo.reset(snap)
    tun = req.tunnel
    t = req.target
    if tun is not None:
        key = (tun.scheme, tun.host, tun.port, t)
        known = memo.tunneled.get(key)
        if known is None:
            return _remember_tunneled(memo, key, req, snap, rec)
        rec.mode, rec.host, rec.path = known.target.mode, known.host, known.path
        host = _host_of(req.headers)
        if host is not None and host != tun.host:
            raise MisdirectedRequest(f"the Host header names {host[:100]}, but the tunnel goes to {tun.host}.")
    else:
        known = memo.plain.get(t)
        if known is None:
            return _remember_plain(memo, req, snap, rec)
        rec.mode, rec.host, rec.path = known.target.mode, known.host, known.path
    target = known.target
    route = target.route
    if route is not None:
        rec.route = route.name
        if not route.verify:
            rec.note = "unverified-tls"
    return target


def _decided(target: Target, rec: AccessRecord) -> _Decided:
    return _Decided(target, rec.host, rec.path)


def _remember_plain(memo: _Memo, req: ProxyRequest, snap: Snapshot, rec: AccessRecord) -> Target:
    target = _plain(req, snap, rec)
    if len(req.target) <= _MEMO_TARGET:
        if len(memo.plain) >= _MEMO_MAX:
            memo.plain.clear()
        memo.plain[req.target] = _decided(target, rec)
    return target


def _remember_tunneled(
    memo: _Memo, key: tuple[str, str, int, str], req: ProxyRequest, snap: Snapshot, rec: AccessRecord
) -> Target:
    target = _intercept(req, snap, rec)
    if len(req.target) <= _MEMO_TARGET:
        if len(memo.tunneled) >= _MEMO_MAX:
            memo.tunneled.clear()
        memo.tunneled[key] = _decided(target, rec)
    return target


def _plain(req: ProxyRequest, snap: Snapshot, rec: AccessRecord) -> Target:
    """An absolute-form or gateway request, decided (not remembered)."""
    cfg = snap.config
    t = req.target
    if t.startswith("/"):
        return _gateway(req, snap, rec)
    scheme, _, rest = t.partition("://")
    # Some WebSocket clients send `GET ws://host/path` to a proxy.
    scheme = _SCHEMES.get(scheme.lower(), "")
    if not scheme or not rest:
        raise BadRequest("the request target must be an absolute http:// URL or a gateway path.")
    authority, path = _split_authority(rest)
    origin = _origin(scheme, authority)
    rec.mode, rec.host, rec.path = "plain", origin.authority, path.partition("?")[0]
    # A request to this proxy itself is refused where it is dialled, by address (egress.py).
    route = snap.table.match(origin.host, origin.port, origin.default_port, rec.path)
    if route is None:
        if cfg.unmatched == "deny":
            raise Denied(f"{origin.authority} matches no route and `unmatched` is deny.")
        return Target("plain", None, origin, path, _host_header(origin), Guard.UNMATCHED)
    rec.route = route.name
    dest = _destination(route, origin)
    guard = Guard.ROUTE
    if route.upstream is None and origin.scheme == "http":
        guard = _clear_text_guard(route, origin.host)
    if not route.verify:
        rec.note = "unverified-tls"
    return Target("plain", route, dest, path, _host_header(dest), guard)


def _clear_text_guard(route: Route, host: str) -> Guard:
    """Credentials never travel in clear text unless the route says so, but to this host itself.

    A loopback IP literal passes now; a ``localhost`` name only if the
    address it is connected to is loopback (its spelling proves nothing);
    anything else is refused before a credential is fetched.
    """
    if is_ip_literal(host) and is_loopback(host):
        return Guard.ROUTE
    if host == "localhost" or host.endswith(".localhost"):
        return Guard.LOOPBACK
    raise Denied(
        f"route {route.name} would send its credential in clear text; set "
        "`upstream: https://...` (or `upstream: http://...` to allow it).",
        route.name,
    )


def _intercept(req: ProxyRequest, snap: Snapshot, rec: AccessRecord) -> Target:
    """A request inside an intercepted CONNECT: the tunnel's authority decides.

    Inside a TLS tunnel the origin is ``https://host:port``; inside a plain
    one ``http://host:port``, under the rules of an absolute-form request
    (the clear-text rule among them), logged as mode plain.
    """
    tun = req.tunnel
    assert tun is not None
    t = req.target
    plain = tun.scheme == "http"
    rec.mode, rec.host = "plain" if plain else "intercept", tun.authority
    if t.startswith("/"):
        path = t
    else:
        scheme, sep, rest = t.partition("://")
        if not sep or _SCHEMES.get(scheme.lower()) != tun.scheme:
            raise BadRequest("a request inside an intercepted connection must be origin-form (`GET /path`).")
        authority, path = _split_authority(rest)
        if _origin(tun.scheme, authority).host != tun.host:
            raise MisdirectedRequest(f"the request names {authority[:100]}, but the tunnel goes to {tun.host}.")
    rec.path = path.partition("?")[0]
    host = _host_of(req.headers)
    if host is not None and host != tun.host:
        # RFC 9110 §15.5.20: the connection is bound to the CONNECT authority.
        raise MisdirectedRequest(f"the Host header names {host[:100]}, but the tunnel goes to {tun.host}.")
    route = snap.table.match(tun.host, tun.port, connect_default(tun.port), rec.path)
    if route is None:
        if snap.config.unmatched == "deny":
            raise Denied(f"{tun.authority}{rec.path[:100]} matches no route and `unmatched` is deny.")
        return Target(rec.mode, None, tun, path, _host_header(tun), Guard.UNMATCHED)
    rec.route = route.name
    dest = _destination(route, tun)
    guard = _clear_text_guard(route, tun.host) if plain and route.upstream is None else Guard.ROUTE
    if not route.verify:
        rec.note = "unverified-tls"
    return Target(rec.mode, route, dest, path, _host_header(dest), guard)


def _destination(route: Route, origin: Origin) -> Origin:
    """Where a matched request goes: the route's `upstream` when it names one, else where it was headed."""
    up = route.upstream
    return Origin(up.scheme, up.host, up.port) if up is not None else origin


def _host_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"host":
            return _host_value(value)
    return None


@lru_cache(maxsize=4096)
def _host_value(value: bytes) -> str:
    """The normalized host of a Host header; a client sends the same one on every request of a tunnel.

    Remembered, because normalizing parses IP literals (ipaddress), which cost
    ~5% of the CPU of an intercepted request. A refusal is not remembered.
    """
    try:
        host, _ = split_hostport(value.decode("latin-1").strip())
        return normalize_host(host)
    except HostError:
        raise BadRequest("the Host header is not a valid host.") from None


def _gateway(req: ProxyRequest, snap: Snapshot, rec: AccessRecord) -> Target:
    path, q, query = req.target.partition("?")
    rec.mode, rec.host, rec.path = "gateway", "-", path
    found = snap.table.gateway(path)
    if found is None:
        raise BadRequest(
            f"no gateway route has a prefix for {path[:100]}; send absolute-form requests to use the proxy."
        )
    route, rest = found
    up = route.upstream
    assert up is not None
    dest = Origin(up.scheme, up.host, up.port)
    rec.route, rec.host = route.name, dest.authority
    if not route.verify:
        rec.note = "unverified-tls"
    return Target("gateway", route, dest, up.path + rest + q + query, _host_header(dest))


def url_of(target: Target) -> str:
    """The URL as sent upstream (a DPoP proof's ``htu`` is it, RFC 9449 §4.2)."""
    return f"{target.dest.scheme}://{target.host_header}{target.path}"


def _split_authority(rest: str) -> tuple[str, str]:
    cut = len(rest)
    for sep in "/?#":
        i = rest.find(sep)
        if 0 <= i < cut:
            cut = i
    authority, path = rest[:cut], rest[cut:]
    path = path.partition("#")[0]
    if not path.startswith("/"):
        path = "/" + path
    return authority, path


@lru_cache(maxsize=4096)
def _origin(scheme: str, authority: str) -> Origin:
    if "@" in authority:
        raise BadRequest("user info in the request target is not accepted.")
    try:
        host, port_text = split_hostport(authority)
        port = parse_port(port_text) if port_text else (443 if scheme == "https" else 80)
        return Origin(scheme, normalize_host(host), port)
    except HostError as exc:
        raise BadRequest(f"bad host in the request target: {exc}.") from None


def _host_header(o: Origin) -> str:
    return format_host(o.host, o.port, o.default_port)
