"""The ``destinations`` policy: which addresses unmatched traffic may reach.

A route names its upstream on purpose; unmatched traffic (a blind tunnel, an
absolute-form request no route matches) goes wherever a client says, so it is
judged by the address it resolves to (egress.py checks the address it then
connects to). What is denied:

- ``link_local`` (169.254/16, fe80::/10, and the cloud metadata services'
  other addresses) always: a metadata service hands out the host's cloud
  credentials to anyone who asks from it;
- the ``deny`` list as written, or when none is written and the proxy listens
  beyond loopback (a shared gateway), ``loopback``, ``private``, ``cgnat``,
  ``unspecified`` and ``this_host``: a client of a gateway must not reach the
  gateway's own services or its network (smokescreen denies all but global
  unicast). ``this_host`` is every address of this host's interfaces, public
  ones included: a service bound to ``0.0.0.0`` answers on each of them.

An address in ``allow`` is let through whatever denies it, ``link_local``
included. Names and CIDRs may be used in both lists.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from authproxy.net.localaddrs import is_local_address
from authproxy.schema.yamlreader import Section

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

NAMES: dict[str, tuple[str, ...]] = {
    "loopback": ("127.0.0.0/8", "::1/128"),
    "private": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"),  # RFC 1918, RFC 4193
    # RFC 3927, RFC 4291 §2.5.6; AWS's IPv6 metadata address and Alibaba's sit outside 169.254/16.
    "link_local": ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32"),
    "cgnat": ("100.64.0.0/10",),  # RFC 6598
    "unspecified": ("0.0.0.0/8", "::/128"),  # connecting to 0.0.0.0 reaches this host
    "multicast": ("224.0.0.0/4", "ff00::/8"),
}
# Not a range: whatever addresses this host's interfaces have now (localaddrs.py asks the kernel).
THIS_HOST = "this_host"
ALWAYS = ("link_local",)
BEYOND_LOOPBACK = ("loopback", "private", "cgnat", "unspecified", THIS_HOST)

# RFC 6052 NAT64 and RFC 3056 6to4 carry an IPv4 address inside an IPv6 one.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class Entry:
    """One list entry: a name or a CIDR, as it is printed, and the networks it stands for."""

    label: str
    networks: tuple[Network, ...]
    this_host: bool = False  # also every address of this host

    def holds(self, views: list[IP]) -> bool:
        if any(v in net for net in self.networks for v in views):
            return True
        return self.this_host and is_local_address(views[0])


@dataclass(frozen=True, slots=True)
class Destinations:
    """The ``destinations:`` key as written."""

    deny: tuple[Entry, ...] | None = None  # None: the defaults for where the proxy listens
    allow: tuple[Entry, ...] = ()


def named(name: str) -> Entry:
    if name == THIS_HOST:
        return Entry(name, (), this_host=True)
    return Entry(name, tuple(ipaddress.ip_network(n) for n in NAMES[name]))


@dataclass(frozen=True, slots=True)
class Policy:
    """The policy in force: what is denied, what is let through anyway."""

    deny: tuple[Entry, ...]
    allow: tuple[Entry, ...]

    @classmethod
    def build(cls, given: Destinations | None, beyond_loopback: bool) -> Policy:
        given = given or Destinations()
        if given.deny is not None:
            chosen = given.deny
        else:
            chosen = tuple(named(n) for n in BEYOND_LOOPBACK) if beyond_loopback else ()
        always = tuple(named(n) for n in ALWAYS if all(e.label != n for e in chosen))
        return cls(always + chosen, given.allow)

    def denies(self, ip: IP) -> str | None:
        """The label of the entry that denies ``ip`` (IPv4-mapped already undone), or None."""
        views = list(_views(ip))
        if any(entry.holds(views) for entry in self.allow):
            return None
        return next((entry.label for entry in self.deny if entry.holds(views)), None)

    def describe(self) -> str:
        """``deny A, B; allow C``: what ``check`` prints."""
        deny = ", ".join(e.label for e in self.deny) or "nothing"
        return f"deny {deny}; allow " + (", ".join(e.label for e in self.allow) or "nothing else")


def _views(ip: IP) -> Iterator[IP]:
    """The address, and the IPv4 address a NAT64 or 6to4 address leads to."""
    yield ip
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64:
            yield ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            yield ip.sixtofour


def parse_destinations(top: Section) -> Destinations | None:
    sec = top.section("destinations")
    if sec is None:
        return None
    deny = _entries(sec, "deny")
    allow = _entries(sec, "allow")
    sec.finish()
    return Destinations(deny, allow or ())


def _entries(sec: Section, key: str) -> tuple[Entry, ...] | None:
    items = sec.str_items(key)
    if items is None:
        return None
    out: list[Entry] = []
    for text, path, line in items:
        entry = _entry(text.strip())
        if isinstance(entry, str):
            sec.problems.error(path, line, sec.doc.scrub(entry))
        elif all(e.label != entry.label for e in out):
            out.append(entry)
    return tuple(out)


def _entry(text: str) -> Entry | str:
    """The entry for a name or CIDR, or why it is neither."""
    if text in NAMES or text == THIS_HOST:
        return named(text)
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            return f"`{text}` has host bits set; the network is {ipaddress.ip_network(text, strict=False)}"
        names = ", ".join([*NAMES, THIS_HOST])
        return f"`{text}` is neither a name ({names}) nor a CIDR such as 10.0.0.0/8 or fd00::/8"
    return Entry(net.compressed, (net,))
