"""Load-time checks shared by grants: a header must be sendable as written."""

from __future__ import annotations

import re

from ..secrets import Value
from ..yamlreader import Section

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def header_name(sec: Section, key: str, default: str) -> str:
    name = sec.text(key, default=default) or default
    if not _TOKEN.match(name):
        sec.error(key, f"`{name}` is not a valid header name")
    return name


def no_crlf(sec: Section, key: str, value: Value | None) -> None:
    """CR or LF in a header value would let a config split the request."""
    if value is not None and ("\r" in value.text or "\n" in value.text):
        sec.error(key, "contains a CR or LF character, which a header value cannot hold")
