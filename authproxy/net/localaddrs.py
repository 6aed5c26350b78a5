"""Which IP addresses are this host's own: the one answer that loop checks and the admin Host check share.

Spellings cannot decide it (``127.1``, ``2130706433``, ``[::ffff:7f00:1]`` and
the host's LAN address all reach a socket bound to ``0.0.0.0``), so the
question is put to the kernel: an address is ours when a socket can be bound
to it (``bind`` fails with ``EADDRNOTAVAIL`` for any other), which covers
every interface without enumerating them. Answers are kept briefly, since
interfaces come and go (DHCP, VPNs) but not per request.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from cachetools import TTLCache

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_known: TTLCache[str, bool] = TTLCache(maxsize=1024, ttl=30.0)


def canonical(ip: str | _IP) -> _IP:
    """The address as the kernel routes it: an IPv4-mapped IPv6 address is its IPv4 address."""
    addr = ip if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) else ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_local_address(ip: str | _IP) -> bool:
    """True when connecting to ``ip`` reaches this host: loopback, unspecified, or an interface's address."""
    addr = canonical(ip)
    if addr.is_loopback or addr.is_unspecified:
        # Connecting to 0.0.0.0 or :: reaches the local host (Linux, BSD).
        return True
    key = addr.compressed
    found = _known.get(key)
    if found is None:
        found = _bindable(addr)
        _known[key] = found
    return found


def _bindable(addr: _IP) -> bool:
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return False  # no such family here (IPv6 disabled): nothing of ours has that address
    try:
        s.bind((addr.compressed, 0))
    except OSError as exc:
        # EADDRNOTAVAIL: not ours. Anything else (EACCES under a sandbox) is not a
        # "no": an address we cannot prove foreign is treated as ours, failing closed.
        return exc.errno != errno.EADDRNOTAVAIL
    finally:
        s.close()
    return True
