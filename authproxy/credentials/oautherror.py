"""What of an OAuth error answer may be shown (RFC 6749 §5.2, §4.1.2.1).

A token endpoint (or an authorization server's redirect) that fails sends
``error`` and perhaps ``error_description``; some echo the request they got,
client secret and all, in the description. So only this is ever relayed:

- the ``error`` code, when it is a short ``[A-Za-z0-9_.-]`` token (every code
  the RFCs define is one); anything else is "an unreadable error", never
  quoted;
- the ``error_description``, after the redactor (every secret, every form),
  on one line and at most ``MAX_DESCRIPTION`` characters.

Never the raw body, nor any other member of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from authproxy.errors import one_line
from authproxy.secrecy.redact import redact

MAX_DESCRIPTION = 200
_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
UNREADABLE = "an unreadable error"


def error_code(value: object) -> str | None:
    """The ``error`` code if it may be shown as it is, else None."""
    return value if isinstance(value, str) and _CODE.fullmatch(value) else None


def description(value: str) -> str:
    """An ``error_description`` as it may be shown: redacted first (a cut must not
    split a secret's form and leave its head), then one short line."""
    text = " ".join(one_line(redact(value)).split())
    if len(text) > MAX_DESCRIPTION:
        text = text[: MAX_DESCRIPTION - 1].rstrip() + "…"
    return text


def describe(data: Mapping[str, object]) -> tuple[str | None, str] | None:
    """``(code, text)`` of an OAuth error answer: ``invalid_client: <description>``;
    None when ``data`` holds no ``error`` at all (it is no OAuth error answer).

    ``code`` is None when the endpoint sent a code that cannot be shown.
    """
    if "error" not in data:
        return None
    code = error_code(data.get("error"))
    text = code if code is not None else UNREADABLE
    desc = data.get("error_description")
    if isinstance(desc, str):
        shown = description(desc)
        if shown:
            text += f": {shown}"
    return code, text
