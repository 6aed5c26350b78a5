"""A Bitwarden Secrets Manager access token (``type: bws``): the bearer JWT of a machine account.

The access token ``0.<id>.<client_secret>:<key>`` is checked at load time
(``authproxy.bws.parse_access_token``), exchanged by client credentials with
scope ``api.secrets`` at the identity server, and the JWT it yields is
injected as ``Authorization: Bearer``. The identity server's
``encrypted_payload`` is decrypted with the token's key, as the SDK does, so
a token whose key part was mangled fails here rather than later.

State (the JWT, its expiry, the encrypted payload and the organization id,
plus a one-way fingerprint of the access token) is kept in the store under
the route's lock, so a restart, or ``authproxy token`` beside a running proxy,
reuses an unexpired JWT. The access token itself and its key are never
written anywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from authproxy.credentials.grants.base import Credential, Grant, GrantContext, register
from authproxy.credentials.grants.checks import no_clear_text
from authproxy.credentials.grants.oauth import authorization_value, expiry_of, post_once
from authproxy.errors import CredentialUnavailable, TokenEndpointError
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.secrets import Secret

if TYPE_CHECKING:
    from authproxy.credentials.bws import AccessToken

# ``..bws`` is imported in the functions that use it, not here: it loads PyJWT and
# cryptography's ciphers, and the registry imports this module for every config.


def _endpoint(sec: Section, key: str) -> str | None:
    text = sec.text(key)
    if text is None:
        return None
    try:
        parts = urlsplit(text.strip())
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        sec.error(key, "must be an https:// URL")
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        sec.error(key, "must not carry a query, fragment or user info")
        return None
    if not no_clear_text(sec, key, text, "the access token"):
        return None
    return text.strip().rstrip("/")


def parse_endpoints(sec: Section) -> tuple[str, str] | None:
    """``region: us | eu`` (default ``us``), or ``identity_url`` + ``api_url`` for a self-hosted server."""
    from authproxy.credentials.bws import REGIONS

    region = sec.text("region")
    identity = _endpoint(sec, "identity_url")
    api = _endpoint(sec, "api_url")
    given = [k for k in ("identity_url", "api_url") if sec.has(k)]
    if region is not None and given:
        sec.error(given[0], "give `region`, or `identity_url` and `api_url`, not both")
        return None
    if given:
        if len(given) == 1:
            other = "api_url" if given[0] == "identity_url" else "identity_url"
            sec.error(given[0], f"`{given[0]}` needs `{other}` as well")
            return None
        if identity is None or api is None:
            return None
        return identity, api
    if region is None:
        return REGIONS["us"]
    if region not in REGIONS:
        sec.error("region", f"must be one of {', '.join(REGIONS)}, not `{region}`")
        return None
    return REGIONS[region]


def check_access_token(sec: Section, key: str, token: Secret) -> None:
    """Report a malformed access token at load time; the message never quotes it."""
    if token.missing:
        return
    from authproxy.credentials.bws import parse_access_token

    try:
        parsed = parse_access_token(token.reveal())
    except ValueError as exc:
        sec.error(key, f"not a Bitwarden access token: {exc}")
        return
    # Its parts travel alone (the client secret in a form body, the key nowhere): each is a secret.
    sec.doc.keep_secret(parsed.client_secret)
    sec.doc.keep_secret(token.reveal().strip().partition(":")[2])


@register
@dataclass(frozen=True, slots=True)
class Bws(Grant):
    type_name = "bws"
    fetches = True
    uses_store = True

    access_token: Secret
    identity_url: str
    api_url: str
    skew: float
    default_ttl: float

    @classmethod
    def parse(cls, sec: Section) -> Bws:
        from authproxy.credentials.bws import REGIONS

        token = sec.secret("access_token", required=True) or Secret("", "", ("access_token",))
        check_access_token(sec, "access_token", token)
        identity_url, api_url = parse_endpoints(sec) or REGIONS["us"]
        return cls(
            access_token=token,
            identity_url=identity_url,
            api_url=api_url,
            skew=sec.number("refresh_skew", 60.0),
            default_ttl=sec.number("default_ttl", 300.0, minimum=1.0),
        )

    def secrets(self) -> list[Secret]:
        return [self.access_token]

    def _named_secrets(self) -> list[tuple[str, Secret]]:
        return [("access_token", self.access_token)]

    def refresh_skew(self) -> float:
        return self.skew

    async def fetch(self, ctx: GrantContext) -> Credential:
        from authproxy.credentials.bws import BwsError, organization_key, parse_access_token, read_login

        try:
            token = parse_access_token(self.access_token.reveal())
        except ValueError as exc:
            raise CredentialUnavailable(f"{exc}.", ctx.route) from None

        async def fetch(rec: dict[str, Any]) -> Credential:
            body = await self._login(ctx, token)
            try:
                login = read_login(body)
                if login.encrypted_payload is not None:
                    organization_key(login.encrypted_payload, token)  # the SDK's check that the key is right
            except BwsError as exc:
                raise TokenEndpointError(f"{exc}.", ctx.route) from None
            value = authorization_value(login.token_type, login.access_token)
            expires_at = expiry_of(login.access_token, login.expires_in, self.default_ttl)
            rec.clear()
            rec.update(
                token=token.fingerprint(),
                identity_url=self.identity_url,
                access=value,
                expires_at=expires_at,
                encrypted_payload=login.encrypted_payload,
                organization=login.organization_id,
            )
            return Credential(headers=(("Authorization", value),), expires_at=expires_at)

        # A login with the access token rotates nothing: with a shared store down it may run unlocked.
        return await ctx.store.adopt_or_fetch(
            ctx.route, lambda rec: self._stored(rec, token, ctx), fetch, unlocked_ok=True
        )

    def _stored(self, rec: dict[str, Any], token: AccessToken, ctx: GrantContext) -> Credential | None:
        """A JWT stored by a previous run (or another process) for this very access token, if still good."""
        if rec.get("token") != token.fingerprint() or rec.get("identity_url") != self.identity_url:
            return None
        value, expires = rec.get("access"), rec.get("expires_at")
        if not isinstance(value, str) or not isinstance(expires, (int, float)) or isinstance(expires, bool):
            return None
        if time.time() >= expires - self.skew:
            return None
        headers = (("Authorization", value),)
        if ctx.rejected is not None and headers == ctx.rejected:
            return None  # the upstream just refused this one
        return Credential(headers=headers, expires_at=float(expires), stored=True)

    async def _login(self, ctx: GrantContext, token: AccessToken) -> dict[str, Any]:
        """POST the client credentials to the identity server, once: the token layer retries 429/5xx."""
        from authproxy.credentials.bws import login_form, login_headers, token_url

        url = token_url(self.identity_url)
        return await post_once(
            ctx, url, "form", login_form(token), login_headers(), "the Bitwarden identity server"
        )
