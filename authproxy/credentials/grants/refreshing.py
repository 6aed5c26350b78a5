"""Spending a refresh token safely, shared by `refresh_token` and `authorization_code`.

The whole exchange runs under the route's lock in the state store, so two
proxies on one state dir (or `authproxy token` beside a running proxy) never
present the same refresh token twice. When the server rotates the refresh
token, the new one is written to the store *before* the access token is
used: servers such as oidc-provider revoke the whole grant when a spent
refresh token comes back, so a restart must never replay one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any

from authproxy.credentials.grants.base import Credential, GrantContext
from authproxy.credentials.grants.checks import clear_text, clear_text_reason
from authproxy.credentials.grants.oauth import OAuthClient, request_token
from authproxy.errors import CredentialUnavailable, TokenEndpointError
from authproxy.secrecy.redact import REDACTOR
from authproxy.secrecy.secrets import Secret, Value


def seed_hash(seed: Secret | None) -> str | None:
    """What the store remembers of the config's refresh token: enough to notice it changed."""
    if seed is None or seed.missing or not seed.reveal():
        return None
    return hashlib.sha256(seed.reveal().encode()).hexdigest()


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _refused(why: str, route: str) -> TokenEndpointError:
    return TokenEndpointError(
        f"the refresh token was refused ({why}); this route needs a new refresh token or login.",
        route,
        oauth_error="invalid_grant",
        permanent=True,
    )


def _stored_access(rec: dict[str, Any], ctx: GrantContext, skew: float) -> Credential | None:
    """An access token another process (or a previous run) stored, if still good."""
    value, expires = rec.get("access"), rec.get("expires_at")
    if not isinstance(value, str) or not isinstance(expires, (int, float)):
        return None
    if time.time() >= expires - skew:
        return None
    headers = (("Authorization", value),)
    if ctx.rejected is not None and headers == ctx.rejected:
        return None  # the upstream just refused this one
    return Credential(headers=headers, expires_at=float(expires), stored=True)


async def refresh(
    ctx: GrantContext,
    client: OAuthClient,
    seed: Secret | None,
    no_token_hint: str,
) -> Credential:
    def adopt(rec: dict[str, Any]) -> Credential | None:
        fresh_seed = seed_hash(seed)
        if fresh_seed is not None and rec.get("seed") != fresh_seed:
            # A new refresh token was pasted into the config: it replaces the stored one.
            assert seed is not None
            rec.clear()
            rec.update(seed=fresh_seed, refresh_token=seed.reveal())
        refresh_token = rec.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            raise CredentialUnavailable(no_token_hint, ctx.route)
        # Read from the store (a login, another process, a rotation): known before it is sent anywhere.
        REDACTOR.learn(refresh_token, slot=f"refresh:{ctx.route}")
        if rec.get("refused") == _digest(refresh_token):
            # Refused once (by this process or another replica): sending it again only
            # repeats the refusal, or looks like theft to a server with reuse detection.
            raise _refused("it was refused before", ctx.route)
        return _stored_access(rec, ctx, client.refresh_skew)

    async def fetch(rec: dict[str, Any]) -> Credential:
        return await _spend(ctx, client, rec, no_token_hint)

    return await ctx.store.adopt_or_fetch(ctx.route, adopt, fetch)


async def _spend(ctx: GrantContext, client: OAuthClient, rec: dict[str, Any], no_token_hint: str) -> Credential:
    """Present the stored refresh token; ``rec`` takes what the answer says (written by the store)."""
    token_url = client.token_url.reveal() or rec.get("token_url") or ""
    if not token_url:
        raise CredentialUnavailable(no_token_hint, ctx.route)
    if clear_text(token_url):
        # Only a stored (discovered) URL can be so: the config's was checked at load time.
        raise CredentialUnavailable(
            f"the token endpoint stored at login {clear_text_reason('the refresh token')}.",
            ctx.route,
        )
    if not client.token_url.reveal():
        client = dataclasses.replace(client, token_url=Value(token_url, token_url))
    params = {"grant_type": "refresh_token", "refresh_token": rec["refresh_token"], **client.base_params()}
    try:
        resp = await request_token(ctx, client, params)
    except TokenEndpointError as exc:
        if exc.oauth_error == "invalid_grant":
            rec.pop("access", None)
            # Written by the store before this error leaves the lock: no process or replica sends it again.
            rec["refused_at"], rec["refused"] = time.time(), _digest(rec["refresh_token"])
            raise _refused(exc.detail.rstrip("."), ctx.route) from None
        raise
    rotated = resp.body.get("refresh_token")
    if isinstance(rotated, str) and rotated:
        rec["refresh_token"] = rotated
    cred = resp.credential
    rec["access"] = cred.headers[0][1]
    rec["expires_at"] = cred.expires_at
    rec["token_url"] = token_url
    rec.pop("refused_at", None)
    rec.pop("refused", None)
    return cred  # the store writes the record before anyone uses the access token
