"""Every connection to an upstream: resolved once, judged by its address, made to the address judged.

The pool's new connections, upgrades and blind tunnels all dial through
``Egress.connect`` (smokescreen's lesson: one classifier for every kind of
egress). Each address a host resolves to is judged:

- **the loop check**, always: an address that reaches one of the proxy's own
  listening sockets (its port, its admin listener) is refused with 400
  ``proxy_loop``. Spellings cannot decide it (``127.1``, ``2130706433``,
  ``[::ffff:7f00:1]`` and the host's LAN address all reach a socket bound to
  ``0.0.0.0``); the address the kernel will connect to can.
- **the destination policy** (destinations.py), for unmatched traffic: 403
  ``destination_denied``.
- **loopback only**, for a credential sent in clear text to a ``localhost``
  name: a name is not loopback because of its spelling (RFC 6761 §6.3 asks
  resolvers to answer so, but nothing makes them).

The connection is then made to an address that passed, never to the name
again: a second lookup could answer differently (DNS rebinding). This runs
at connect time only; a pooled connection is reused without a lookup.

Through a parent proxy (chain.py) the parent's address is dialled here like
a route's upstream, and the destination is only judged (``judged_name``):
the parent connects to it by name.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
import secrets
import socket
import ssl
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

from authproxy.errors import Denied, DestinationDenied, ProxyError, ProxyLoop
from authproxy.net.destinations import IP, Destinations, Policy
from authproxy.net.hosts import format_authority
from authproxy.net.localaddrs import canonical, is_local_address

_P = TypeVar("_P", bound=asyncio.BaseProtocol)

# How a supervisor tells its workers (``run --workers``) its Via pseudonym and its admin
# listener's address ("HOST PORT"), which the workers must refuse as a destination too.
PSEUDONYM_ENV = "AUTHPROXY_VIA_PSEUDONYM"
ADMIN_ENV = "AUTHPROXY_ADMIN_ADDRESS"
_PSEUDONYM = re.compile(r"^authproxy-[0-9a-f]{16}$")


class Guard(enum.Enum):
    """What a connection's addresses are judged by, beyond the loop check. Part of the pool's key:
    a connection made for one kind of traffic is never reused by a kind judged more strictly."""

    ROUTE = "route"  # a destination a route names: configured on purpose
    UNMATCHED = "unmatched"  # the `destinations` policy
    LOOPBACK = "loopback"  # a credential in clear text: loopback addresses only

    # Looked up (``Egress.rule``) on every request: members are singletons, so identity is
    # their hash, in C, where ``Enum.__hash__`` is a Python call hashing the name.
    __hash__ = object.__hash__


class Rule:
    """A guard as it judges now. The pool keys its connections by it, so a connection made
    under a ``destinations`` policy that a reload has since changed is not lent to the traffic
    the new policy judges."""

    __slots__ = ("guard",)

    def __init__(self, guard: Guard) -> None:
        self.guard = guard


class OwnSockets:
    """The addresses and ports the proxy listens on (its port, its admin listener)."""

    def __init__(self) -> None:
        self._by_port: dict[int, set[IP]] = {}

    def add(self, ip: IP, port: int) -> None:
        self._by_port.setdefault(port, set()).add(canonical(ip))

    def reached(self, ip: IP, port: int) -> bool:
        """Whether connecting to ``ip:port`` could reach one of our sockets (``ip`` canonical)."""
        mine = self._by_port.get(port)
        if not mine:
            return False
        for own in mine:
            if own.is_unspecified:
                # Bound to every address: any address of this host reaches it.
                if is_local_address(ip):
                    return True
            elif ip == own or ip.is_unspecified or (ip.is_loopback and own.is_loopback):
                # 0.0.0.0 as a destination is this host; every loopback address counts as one.
                return True
        return False


class Egress:
    """The one way out: the loop check, the destination policy, and the connection to the judged address."""

    def __init__(self, destinations: Destinations | None = None) -> None:
        self.own = OwnSockets()
        self._given = destinations
        self._beyond_loopback = False
        self.policy = Policy.build(destinations, beyond_loopback=False)
        self._rules = {g: Rule(g) for g in Guard}

    def rule(self, guard: Guard) -> Rule:
        return self._rules[guard]

    def configure(self, destinations: Destinations | None) -> None:
        """A reload's ``destinations``; the next connection is judged by them."""
        self._given = destinations
        self._set_policy(Policy.build(destinations, self._beyond_loopback))

    def _set_policy(self, policy: Policy) -> None:
        if policy != self.policy:
            self.policy = policy
            self._rules[Guard.UNMATCHED] = Rule(Guard.UNMATCHED)

    def listening(self, ip: str, port: int, *, proxy: bool = True) -> None:
        """One of our sockets is bound to ``ip:port``. A proxy port beyond loopback makes this a shared
        gateway, whose default policy denies loopback and private addresses too."""
        addr = canonical(ip)
        self.own.add(addr, port)
        if proxy and not addr.is_loopback and not self._beyond_loopback:
            self._beyond_loopback = True
            self._set_policy(Policy.build(self._given, beyond_loopback=True))

    async def listening_on(self, host: str, port: int, *, proxy: bool = True) -> None:
        """Every address a listener on ``host`` is bound to (resolved as ``create_server`` does)."""
        for ip in await _addresses(host, port, passive=True):
            self.listening(str(ip), port, proxy=proxy)

    async def connect(
        self,
        host: str,
        port: int,
        factory: Callable[[], _P],
        guard: Guard,
        *,
        sslctx: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
    ) -> tuple[asyncio.Transport, _P]:
        """A connection to ``host:port`` at an address that passed ``guard``; TLS names ``host`` (SNI, verification).

        Raises a ProxyError when no address may be used, else what ``create_connection`` raises
        (OSError, ssl.SSLError) for the last address tried.
        """
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for ip in await self.judged(host, port, guard):
            try:
                transport, protocol = await loop.create_connection(
                    factory,
                    str(ip),
                    port,
                    ssl=sslctx,
                    server_hostname=host if sslctx is not None else None,
                    ssl_handshake_timeout=handshake_timeout if sslctx is not None else None,
                )
            except (ssl.SSLError, ConnectionAbortedError):
                raise  # TLS failed with an address that answered: another address is no cure
            except OSError as exc:
                last = exc
                continue
            return transport, protocol
        assert last is not None
        raise last

    async def open(
        self, host: str, port: int, guard: Guard, *, sslctx: ssl.SSLContext | None = None, limit: int = 2**16
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """``connect`` as streams, as ``asyncio.open_connection`` makes them."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await self.connect(host, port, lambda: protocol, guard, sslctx=sslctx)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def judged(self, host: str, port: int, guard: Guard) -> list[IP]:
        """The addresses of ``host`` that may be connected to, in the resolver's order; a ProxyError if none."""
        allowed: list[IP] = []
        refusal: ProxyError | None = None
        for ip in await _addresses(host, port):
            why = self._judge(ip, port, guard, host)
            if why is None:
                allowed.append(ip)
            elif refusal is None or isinstance(why, ProxyLoop):
                refusal = why  # a loop is the answer that says the most
        if not allowed:
            assert refusal is not None
            raise refusal
        return allowed

    async def judged_name(self, host: str, port: int, guard: Guard) -> bool:
        """For a connection through a parent proxy, which connects to ``host`` by name, choosing its
        address itself: every address the name resolves to here must pass, since the parent may use
        any of them. A name that does not resolve here is the parent's to resolve, unjudged
        (docs/networks.md says so). True when the name was judged."""
        try:
            addresses = await _addresses(host, port)
        except OSError:  # socket.gaierror: no such name, or no answer, here
            return False
        refusals = [why for ip in addresses if (why := self._judge(ip, port, guard, host)) is not None]
        if refusals:
            raise next((r for r in refusals if isinstance(r, ProxyLoop)), refusals[0])
        return True

    def _judge(self, ip: IP, port: int, guard: Guard, host: str) -> ProxyError | None:
        authority = format_authority(host, port)
        if self.own.reached(ip, port):
            return ProxyLoop(f"{authority[:200]} is this proxy itself (a proxy loop).")
        if guard is Guard.UNMATCHED:
            label = self.policy.denies(ip)
            if label is not None:
                return DestinationDenied(
                    f"{authority[:200]} resolves to an address that the `destinations` policy denies "
                    f"to unmatched traffic ({label})."
                )
        elif guard is Guard.LOOPBACK and not ip.is_loopback:
            return Denied(
                f"{authority[:200]} does not resolve to a loopback address, and the credential would go "
                "in clear text; set `upstream: https://...` (or `upstream: http://...` to allow it)."
            )
        return None


async def _addresses(host: str, port: int, *, passive: bool = False) -> list[IP]:
    """``host``'s addresses, IPv4-mapped ones as IPv4; an IP literal without a lookup."""
    try:
        return [canonical(host)]
    except ValueError:
        pass
    flags = socket.AI_PASSIVE if passive else 0
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
    return list(dict.fromkeys(canonical(str(info[4][0])) for info in infos))


@lru_cache(maxsize=4096)
def is_ip_literal(host: str) -> bool:
    """Remembered per host: the clear-text rule asks it on every plain request, and parsing
    with ipaddress costs about a twentieth of a small GET."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Via:
    """Our entry in ``Via`` (RFC 9110 §7.6.3): one pseudonym per proxy, shared by a supervisor's workers.

    A request that already names it has passed through this proxy before, by a
    way no address check sees (another proxy, a route whose upstream leads
    back here): a loop.
    """

    def __init__(self, pseudonym: str | None = None) -> None:
        if pseudonym is None or not _PSEUDONYM.match(pseudonym):
            pseudonym = "authproxy-" + secrets.token_hex(8)
        self.pseudonym = pseudonym
        self._token = pseudonym.encode("ascii")
        self.header = (b"Via", b"1.1 " + self._token)

    def check(self, value: bytes) -> None:
        """Refuse a request whose ``Via`` value names us."""
        if self._token in value.lower():
            raise ProxyLoop("the request has already passed through this proxy (its Via names it): a proxy loop.")
