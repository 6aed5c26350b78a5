"""Every spelling of a secret that must never leave the proxy, computed here without authproxy.

The tests grep output for these; they are derived independently of
``authproxy.secrecy.redact`` (Base64 runs by comparing two encodings, not by the
module's arithmetic), so a mistake there cannot hide itself here.

For a secret of 8 bytes or more:

- text: raw; ``quote`` (with and without ``/`` kept) and ``quote_plus``, hex
  in upper and lower case; JSON-escaped (``ensure_ascii`` on and off, ``\\/``);
  HTML-escaped; JSON-escaped form encoding;
- Base64: for the secret and its percent- and form-encodings, the run of
  characters its bytes alone determine at each of the three offsets modulo 3
  (so inside ``base64(id:secret)`` and RFC 6749 §2.3.1's
  ``base64(form(id):form(secret))`` whatever the id), in the standard and
  URL-safe alphabets, and percent-encoded and JSON-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import re
from urllib.parse import quote, quote_plus

ENCODED_FROM = 8  # bytes: every form below; shorter secrets are owed only their raw spelling


def lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def percent_forms(secret: str) -> set[str]:
    out = {quote(secret, safe=""), quote_plus(secret), quote(secret)}
    return out | {lower_hex(f) for f in out}


def json_forms(secret: str) -> set[str]:
    ascii_ = json.dumps(secret)[1:-1]
    native = json.dumps(secret, ensure_ascii=False)[1:-1]
    return {ascii_, native, ascii_.replace("/", "\\/"), native.replace("/", "\\/")}


def text_forms(secret: str) -> set[str]:
    out = {secret, html.escape(secret)}
    out |= percent_forms(secret)
    out |= json_forms(secret)
    out |= {json.dumps(f)[1:-1] for f in percent_forms(secret)}  # JSON-escaped form encoding
    return out


def _flip(data: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in data)


def stable_runs(middle: bytes, before: bytes, after: bytes) -> str:
    """The Base64 characters of ``before + middle + after`` that ``middle`` alone decides.

    Found by encoding twice, the second time with every bit of ``before`` and
    ``after`` flipped: a character that covers any of their bits changes (its
    six bits map one-to-one onto the alphabet), one that covers only
    ``middle``'s bits does not. ``after`` keeps the padding away.
    """
    one = base64.b64encode(before + middle + after).decode()
    two = base64.b64encode(_flip(before) + middle + _flip(after)).decode()
    same = [i for i, (a, b) in enumerate(zip(one, two, strict=True)) if a == b and a != "="]
    if not same:
        return ""
    run = one[same[0] : same[-1] + 1]
    assert len(run) == len(same), "the characters middle decides are one run"
    return run


def base64_cores(data: bytes) -> list[str]:
    """The stable run of ``data`` at each offset 0, 1, 2 within a longer Base64-encoded string."""
    return [r for k in range(3) if (r := stable_runs(data, b"\x00" * k, b"\x00" * 3))]


def base64_forms(secret: str) -> set[str]:
    out: set[str] = set()
    for text in {secret, quote(secret, safe=""), quote_plus(secret)}:
        for core in base64_cores(text.encode()):
            urlsafe = core.replace("+", "-").replace("/", "_")
            out |= {core, urlsafe, quote(core, safe=""), lower_hex(quote(core, safe="")), core.replace("/", "\\/")}
    return out


def secret_forms(secret: str) -> set[str]:
    """Every spelling of ``secret`` that output must not hold."""
    if len(secret.encode()) >= ENCODED_FROM:
        return text_forms(secret) | base64_forms(secret)
    # Under 8 bytes only the raw spelling is promised; these were never seen in output either.
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    forms.add(base64.b64encode(secret.encode()).decode().rstrip("="))
    return {f for f in forms if len(f) >= 6}
