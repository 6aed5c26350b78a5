"""Access tokens shared between worker processes (and replicas) through the token store.

With ``run --workers N`` each worker has its own token cache, and without
this every worker would fetch its own token for every route: N fetches on a
cold start, N refreshes for one revoked token. Here a worker that needs a new
credential takes the route's lock in the store (held across the fetch), and
when the store holds a token that another worker fetched and that is still
fresh (not due for refresh, and not the one an upstream just refused), it
takes that one; otherwise it fetches and writes the token to the store before
the lock is released. So the authorization server sees one fetch per route,
however many workers ask at once.

Only for grants that fetch and keep no record of their own: the refresh-token
grants and ``bws`` do the same (``StateStore.adopt_or_fetch``) in their own
record. Each record names the grant it came from by a digest of the grant's
settings, so a token of an edited grant (another client, scope, secret) is
never handed out for the new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import PurePath
from typing import Any

from authproxy.config import Route
from authproxy.credentials.grants import Credential, Grant, GrantContext
from authproxy.credentials.grants.base import refresh_point
from authproxy.disk.tokenstore import TokenStore
from authproxy.tokens.retry import with_retries

_KEY = "shared"  # beside whatever else the route's record holds


def _canonical(value: object) -> object:
    """The grant's settings as plain data whose ``repr`` is the same in every process.

    Secret values are included (a changed client secret is another grant);
    only their digest is ever written.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, *(_canonical(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if isinstance(value, (tuple, list)):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted(repr(_canonical(v)) for v in value))  # set order differs between processes
    if isinstance(value, dict):
        return tuple(sorted((repr(k), repr(_canonical(v))) for k, v in value.items()))
    if isinstance(value, PurePath):
        return str(value)
    return value


def grant_digest(grant: Grant) -> str:
    return hashlib.sha256(repr((grant.type_name, _canonical(grant))).encode()).hexdigest()


def _pairs(raw: Any) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(raw, list):
        return None
    out = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            return None
        out.append((item[0], item[1]))
    return tuple(out)


def _number(raw: Any) -> float | None:
    return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None


def adoptable(rec: Any, digest: str, rejected: tuple[tuple[str, str], ...] | None, now: float) -> Credential | None:
    """The stored credential, if it is this grant's, still fresh, and not the one just refused."""
    if not isinstance(rec, dict) or rec.get("grant") != digest:
        return None
    headers, query = _pairs(rec.get("headers")), _pairs(rec.get("query"))
    if headers is None or query is None or not (headers or query):
        return None
    expires_at, refresh_at = _number(rec.get("expires_at")), _number(rec.get("refresh_at"))
    if (expires_at is not None and now >= expires_at) or (refresh_at is not None and now >= refresh_at):
        return None  # expired, or due: whoever finds it so fetches the next one
    if rejected is not None and (headers == rejected or not headers):
        # A query credential cannot be compared with the refused headers: fetch to be sure.
        return None
    return Credential(headers=headers, query=query, expires_at=expires_at, refresh_at=refresh_at, stored=True)


class SharedTokens:
    """Fetch through the store: one fetch per route across every process on the state dir."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    async def fetch(self, route: Route, ctx: GrantContext) -> Credential:
        grant = route.auth
        digest = grant_digest(grant)

        def adopt(rec: dict[str, Any]) -> Credential | None:
            return adoptable(rec.get(_KEY), digest, ctx.rejected, time.time())

        async def fetch(rec: dict[str, Any]) -> Credential:
            cred = await with_retries(grant.fetch, ctx)  # under the lock: one worker retries, the others wait
            now = time.time()
            cred = dataclasses.replace(cred, refresh_at=refresh_point(cred.expires_at, grant.refresh_skew(), now))
            rec[_KEY] = {
                "grant": digest,
                "headers": [list(h) for h in cred.headers],
                "query": [list(q) for q in cred.query],
                "expires_at": cred.expires_at,
                "refresh_at": cred.refresh_at,
                "fetched_at": now,
                "pid": os.getpid(),
            }
            return cred

        # Nothing these grants fetch rotates: with the store down, a fetch without its lock is harmless.
        return await self._store.adopt_or_fetch(route.name, adopt, fetch, unlocked_ok=True)
