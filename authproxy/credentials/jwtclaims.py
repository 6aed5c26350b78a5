"""A JWT's claims, read without verifying it: the proxy forwards tokens, it does not trust them.

Read for what the sender left out: a token endpoint's ``exp`` when it sends
no ``expires_in`` (RFC 6749 §5.1 makes it optional), a Bitwarden access
token's organization.
"""

from __future__ import annotations

import math
from typing import Any


def jwt_claims(token: str) -> dict[str, Any]:
    """The JWT's claims, unverified; empty when it is no JWT."""
    import jwt  # only now: most token endpoints send expires_in, so most proxies never need it

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def jwt_expiry(token: str) -> float | None:
    """The JWT's ``exp`` (RFC 7519 §4.1.4) as a Unix time; None when it has none that is a number."""
    exp = jwt_claims(token).get("exp")
    if isinstance(exp, (int, float)) and not isinstance(exp, bool) and math.isfinite(exp):
        return float(exp)
    return None
