"""Who may ask the admin listener: the Host check and the bearer token.

Two defences, checked in this order on every request (``admin/web.py`` applies them):

1. **Host** (DNS rebinding). A page in a browser can point its own name at
   127.0.0.1 and then read the admin listener as same-origin; the only trace
   is ``Host: attacker.example``. So the listener answers only a ``Host:``
   naming itself: the address it is bound to (any port: a port mapping in
   front of it may change the port, never the name), ``localhost`` when it
   listens on loopback, the names in ``admin.hosts``, and, for an unspecified
   bind (``0.0.0.0``, ``::``), every address of this host
   (``localaddrs.is_local_address``: Kubernetes probes send ``POD_IP:PORT``,
   Docker's published port arrives as ``127.0.0.1``). The probes are held to
   it too; anything else gets 421 ``admin_host_refused``. RFC 9110 §15.5.20:
   421 means the request "was directed at a server that is unable or
   unwilling to produce an authoritative response for the target URI", which
   is the case exactly (403 would say the client lacks a right; it named
   another server).
2. **Token** (``admin.token``). When set, every path but ``/healthz`` and
   ``/readyz`` (which probes must reach without one) needs
   ``Authorization: Bearer TOKEN`` (RFC 6750 §2.1), or Basic with the token as
   the password so that a browser can open the status page; 401
   ``admin_token_required`` (none given) or ``admin_token_invalid`` with a
   ``WWW-Authenticate`` challenge (RFC 6750 §3). Compared as SHA-256 digests
   in constant time, so neither the bytes nor the length of the token leak
   through timing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from authproxy.errors import AdminHostRefused, AdminTokenInvalid, AdminTokenRequired, BadRequest
from authproxy.net.hosts import HostError, normalize_host, split_hostport
from authproxy.net.localaddrs import canonical, is_local_address

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
PROBES = frozenset({"/healthz", "/readyz"})
REALM = "authproxy admin"


@dataclass(frozen=True, slots=True)
class HostRule:
    """The names and addresses a request's ``Host:`` may give."""

    names: frozenset[str]  # normalized host names
    addresses: frozenset[_IP]  # canonical (an IPv4-mapped address is its IPv4 address)
    any_local: bool  # an unspecified bind: every address of this host is its own

    @classmethod
    def of(cls, configured: str, bound: Iterable[str], hosts: Iterable[str] = ()) -> HostRule:
        """``configured``: the ``admin`` host as written (an address or a name); ``bound``: the addresses
        the listener's sockets got; ``hosts``: ``admin.hosts``, normalized."""
        names: set[str] = set()
        addresses: set[_IP] = set()
        any_local = False
        for text in (configured, *bound):
            ip = _ip(text)
            if ip is None:
                names.add(text)  # bound by name (`localhost`, a DNS name): that name is its own
            elif ip.is_unspecified:
                any_local = True
            else:
                addresses.add(ip)
        for text in hosts:
            ip = _ip(text)
            if ip is None:
                names.add(text)
            else:
                addresses.add(ip)
        if any_local or any(ip.is_loopback for ip in addresses):
            # Only a process on this host reaches a loopback socket, and a page cannot make its
            # browser send `Host: localhost` for an origin of its own.
            names.add("localhost")
        return cls(frozenset(names), frozenset(addresses), any_local)

    def allows(self, host: str) -> bool:
        """Whether ``host`` (normalized, no port) names this listener."""
        ip = _ip(host)
        if ip is None:
            return host in self.names
        return ip in self.addresses or (self.any_local and is_local_address(ip))


def _ip(text: str) -> _IP | None:
    try:
        return canonical(text)
    except ValueError:
        return None


def host_of(value: str) -> str:
    """The normalized host of a ``Host:`` value or an absolute-form target's authority; BadRequest if malformed."""
    try:
        host, port = split_hostport(value.strip())
        if port and not (port.isdigit() and int(port) < 65536):
            raise HostError("bad port")
        return normalize_host(host)
    except HostError:
        raise BadRequest("the Host header is not a valid host[:port] (RFC 9110 §7.2).") from None


def check_host(values: list[str], target: str | None, rule: HostRule) -> None:
    """Refuse a request whose ``Host:`` (and absolute-form target, if any) does not name this listener.

    RFC 9112 §3.2: exactly one ``Host`` field; an absolute-form target names the
    authority in place of it, so both are judged.
    """
    if len(values) != 1:
        raise BadRequest("a request needs exactly one Host header (RFC 9112 §3.2).")
    for value in (values[0], target) if target is not None else (values[0],):
        if not rule.allows(host_of(value)):
            raise AdminHostRefused(
                "the Host header names neither this admin listener's address nor a name in `admin.hosts` "
                "(refused as a DNS-rebinding defence)."
            )


@dataclass(frozen=True, slots=True)
class TokenRule:
    """``admin.token``, kept as its SHA-256 digest: compared in constant time, length included."""

    digest: bytes

    @classmethod
    def of(cls, token: str) -> TokenRule:
        return cls(hashlib.sha256(token.encode()).digest())

    def check(self, path: str, values: list[str]) -> None:
        """Raise ``AdminTokenRequired`` unless ``path`` is a probe or ``Authorization`` carries the token."""
        if path in PROBES:
            return
        if not values:
            raise AdminTokenRequired("this admin listener needs its token: `Authorization: Bearer TOKEN`.")
        given = _credential(values[0]) if len(values) == 1 else None
        if given is None or not hmac.compare_digest(hashlib.sha256(given).digest(), self.digest):
            raise AdminTokenInvalid("the Authorization header does not carry this admin listener's token.")


def _credential(value: str) -> bytes | None:
    """The token in ``Bearer TOKEN`` (RFC 6750 §2.1) or the password of ``Basic`` (RFC 7617), or None."""
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer":
        return rest.encode("utf-8", "surrogateescape") if rest else None
    if scheme.lower() == "basic":
        try:
            pair = base64.b64decode(rest, validate=True)
        except (binascii.Error, ValueError):
            return None
        _, colon, password = pair.partition(b":")
        return password if colon else None
    return None


def challenges(err: AdminTokenRequired) -> list[str]:
    """``WWW-Authenticate`` values for a 401: Bearer (RFC 6750 §3), and Basic so that a browser asks."""
    bearer = f'Bearer realm="{REALM}"'
    if isinstance(err, AdminTokenInvalid):
        bearer += ', error="invalid_token"'
    return [bearer, f'Basic realm="{REALM}", charset="UTF-8"']
