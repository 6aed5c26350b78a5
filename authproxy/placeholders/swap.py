"""The placeholder swapped for the secret it stands for, wherever the workload put it.

In any header value (``Bearer PH``, ``x-api-key: PH``), in the decoded user
or password of a ``Basic`` header (re-encoded, RFC 7617 §2), in the query
string, and in the path when the route says ``placeholder_in_path: true``;
in a URL the secret goes percent-encoded (RFC 3986 §2.1). The credential the
route injects still goes in as always, after this.
"""

from __future__ import annotations

import base64
from urllib.parse import quote

from authproxy.config.placeholder import PlaceholderSpec
from authproxy.placeholders.index import basic_pair

_BASIC = b"basic "
_AUTHORIZATION = b"authorization"


def swap_headers(
    headers: list[tuple[bytes, bytes]], ph: bytes, secret: bytes, drop: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``ph`` replaced by ``secret``, less the names in ``drop``."""
    out = []
    for name, value in headers:
        if drop and name.lower() in drop:
            continue
        if ph in value:
            value = value.replace(ph, secret)
        elif value[:6].lower() == _BASIC and name.lower() == _AUTHORIZATION:
            pair = basic_pair(value)
            if pair is not None and ph in pair:
                value = b"Basic " + base64.b64encode(pair.replace(ph, secret))
        out.append((name, value))
    return out


def swap_target(path: str, ph: str, secret: str, spec: PlaceholderSpec) -> str:
    """The origin-form target with ``ph`` replaced in the query (and the path, when the route opts in)."""
    base, q, query = path.partition("?")
    enc = quote(secret, safe="")
    quoted = quote(ph, safe="")
    if q:
        query = _replace(query, ph, quoted, enc)
    if spec.in_path:
        base = _replace(base, ph, quoted, enc)
    return base + q + query


def _replace(text: str, ph: str, quoted: str, enc: str) -> str:
    if ph in text:
        text = text.replace(ph, enc)
    if quoted != ph and quoted in text:
        text = text.replace(quoted, enc)
    return text
