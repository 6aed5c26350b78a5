"""Checks shared by grants: a header must be sendable as written; a secret never goes out in clear text."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from authproxy.schema.yamlreader import Section
from authproxy.secrecy.secrets import Value

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def header_name(sec: Section, key: str, default: str) -> str:
    name = sec.text(key, default=default) or default
    if not _TOKEN.match(name):
        sec.error(key, f"`{name}` is not a valid header name")
    return name


def placement(sec: Section, bearer_for_authorization: bool) -> tuple[str | None, str, str | None]:
    """Where a fixed value goes: (``header``, ``prefix``, ``query``), one of header or query.

    ``bearer_for_authorization``: with no ``prefix`` given, an ``Authorization``
    header gets ``Bearer `` (a helper prints a bare token); otherwise none.
    """
    query = sec.text("query")
    header: str | None = header_name(sec, "header", "Authorization")
    if query is not None:
        if sec.has("header"):
            sec.error("query", "give `header` or `query`, not both")
        header = None
    prefix = sec.text("prefix")
    if query is not None and prefix:
        sec.error("prefix", "`prefix` applies to a header, not to `query`")
    if prefix is None:
        # `Bearer ` goes with Authorization only: X-API-Key: Bearer ... would be odd.
        bearer = bearer_for_authorization and header is not None and header.lower() == "authorization"
        prefix = "Bearer " if bearer else ""
    if "\r" in prefix or "\n" in prefix:
        sec.error("prefix", "contains a CR or LF character")
    return header, prefix, query


def no_crlf(sec: Section, key: str, value: Value | None) -> None:
    """CR or LF in a header value would let a config split the request."""
    if value is not None and ("\r" in value.text or "\n" in value.text):
        sec.error(key, "contains a CR or LF character, which a header value cannot hold")


def loopback_by_spelling(host: str) -> bool:
    """An IP literal in 127/8 or ::1 (IPv4-mapped too), or the name `localhost` exactly.

    A name is an address only once resolved, and where it resolves to is not
    ours to know at load time; `localhost` alone is pinned to loopback
    (RFC 6761 §6.3 and every resolver's hosts file). `*.localhost` is not:
    a resolver that does not special-case it asks DNS.
    """
    h = host.strip("[]").lower()
    if h == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def clear_text(url: str) -> bool:
    """Whether ``url`` is `http://` to a host that is not loopback by its spelling."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        return False  # not a URL: the caller's own check says so
    return parts.scheme.lower() == "http" and not loopback_by_spelling(host)


def clear_text_reason(what: str) -> str:
    """The one sentence for a URL that ``clear_text`` refuses, ``what`` being what it would carry."""
    return (
        f"is http:// to a host that is not loopback, so {what} would travel in clear text "
        "(use https://; http:// only to 127.0.0.1, ::1 or localhost)"
    )


def no_clear_text(sec: Section, key: str, url: str | None, what: str) -> bool:
    """A configuration error when ``url`` would carry ``what`` in clear text; True when it is fine."""
    if url and clear_text(url):
        sec.error(key, clear_text_reason(what))
        return False
    return True
