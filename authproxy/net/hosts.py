"""Host, port and path normalization shared by the config and the matcher."""

from __future__ import annotations

import ipaddress
import posixpath
import re
from functools import lru_cache

from authproxy.errors import BadRequest

_LABELS = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")


class HostError(ValueError):
    pass


def normalize_host(host: str) -> str:
    """Lower-case, IDNA-encoded, no trailing dot, IPv6 without brackets."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if not h:
        raise HostError("empty host")
    try:
        return ipaddress.ip_address(h).compressed
    except ValueError:
        pass
    h = h.rstrip(".").lower()
    if not h or any(c in h for c in " /\\@?#[]%"):
        raise HostError(f"`{host}` is not a valid host name")
    try:
        h = h.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise HostError(f"`{host}` is not a valid host name") from exc
    # RFC 1123 labels (underscores allowed: internal names use them), at most 253 in all.
    if len(h) > 253 or not _LABELS.match(h):
        raise HostError(f"`{host}` is not a valid host name")
    return h


def split_hostport(authority: str) -> tuple[str, str | None]:
    """``host:port`` → (host, port text or None); handles ``[v6]:port``."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise HostError(f"`{authority}` has an unclosed `[`")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise HostError(f"`{authority}` is not host:port")
        return host, (rest[1:] if rest else None)
    if authority.count(":") > 1:
        return authority, None  # a bare IPv6 literal
    host, sep, port = authority.partition(":")
    return host, (port if sep else None)


def parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise HostError(f"`{text}` is not a port number (1-65535)")
    return int(text)


@lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    """A loopback IP literal (IPv4-mapped ones too), or the name ``localhost`` itself.

    Not ``*.localhost``: RFC 6761 §6.3 asks resolvers to answer those with
    loopback, but nothing makes them, so a decision of trust that needs to know
    where a ``.localhost`` name leads asks the address connected to (egress.py).
    """
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def format_authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_host(host: str, port: int, default_port: int) -> str:
    """What goes in a Host header: the port only when it isn't the default."""
    h = f"[{host}]" if ":" in host else host
    return h if port == default_port else f"{h}:{port}"


class PathError(ValueError):
    pass


def normalize_path(path: str) -> str:
    """Remove dot segments (RFC 3986 §5.2.4) from the path part of a target.

    Refused, because servers disagree on what they mean, so a prefix check on
    them would be a guess: encoded slashes and dots, backslashes, and path
    parameters that change which segments there are (``_check_parameters``).
    """
    low = path.lower()
    if "%2f" in low or "%2e" in low or "\\" in path or "%5c" in low:
        raise PathError("the path contains an encoded `/` or `.`, or a `\\`")
    if ";" in path or "%3b" in low:
        _check_parameters(low)
    if not path.startswith("/"):
        path = "/" + path
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if path.endswith("/") and norm != "/":
        norm += "/"
    return norm


def rule_path(path: str) -> str:
    """The path a prefix or `allow` rule is judged against; a path no rule can judge is a 400.

    One judgement for route prefixes, gateway prefixes and `allow` lists, so a
    path refused by one is refused by all: the client sent something servers
    read differently, which is its error, not a denial.
    """
    try:
        return normalize_path(path)
    except PathError as exc:
        raise BadRequest(f"{exc}; no path rule can be checked against it.") from None


def _check_parameters(low: str) -> None:
    """Refuse path parameters that make Tomcat or Spring see other segments than we do.

    Those servers cut each segment at its first `;` (RFC 2396 §3.3 path
    parameters) before removing dot segments, and some decode `%3B` first:
    to them `/v1/..;x=1/admin` is `/v1/../admin`, that is `/admin`, where
    RFC 3986 (and our prefix check) sees a segment named `..;x=1` under
    `/v1/`. Likewise a segment made only of parameters (`/v1/;x/../admin`)
    is an empty segment they merge away, so the `..` after it climbs one
    level higher than we count. Parameters on any other segment
    (`/v1/items;jsessionid=1`) change no segment count and pass; so does a
    parameters-only last segment (`/app/;jsessionid=1`), which nothing follows.
    """
    segments = low.replace("%3b", ";").split("/")
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        name, sep, _ = segment.partition(";")
        if not sep:
            continue
        if name in (".", ".."):
            raise PathError(
                f"the path has a dot segment with parameters (`{name};`), which some servers read as `{name}`"
            )
        if not name and i < last:
            raise PathError("the path has a segment made only of parameters (`/;`), which some servers drop")


def prefix_matches(prefix: str, path: str) -> bool:
    """``/v2`` matches ``/v2`` and ``/v2/x``, not ``/v2x``; ``/`` matches all."""
    if prefix in ("", "/"):
        return True
    p = prefix.rstrip("/")
    return path == p or path.startswith(p + "/")
