"""OAuth 2.0 authorization code (RFC 6749 §4.1): `authproxy login` once, then as `refresh_token`.

The browser part lives in ``login.py``; here the route spends the refresh token
that the login stored, exactly as the `refresh_token` grant does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from authproxy.credentials.grants.base import Credential, GrantContext, register
from authproxy.credentials.grants.checks import no_clear_text
from authproxy.credentials.grants.oauth import OAuthClient, OAuthClientGrant
from authproxy.credentials.grants.refreshing import refresh
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.secrets import Value


@register
@dataclass(frozen=True, slots=True)
class AuthorizationCode(OAuthClientGrant):
    type_name = "authorization_code"
    fetches = True
    uses_store = True

    client: OAuthClient  # token_url may be empty: then discovery (at login) supplies it
    issuer: Value | None
    authorization_url: Value | None
    redirect_path: str
    redirect_port: int

    @classmethod
    def parse(cls, sec: Section) -> AuthorizationCode:
        issuer = sec.value("issuer")
        authorization_url = sec.value("authorization_url")
        client = OAuthClient.parse(sec, secret_required=False, token_url_required=False)
        if issuer is None and (authorization_url is None or not sec.has("token_url")):
            sec.error(None, "give `issuer` (for discovery), or both `authorization_url` and `token_url`")
        if client.client_id is None:
            sec.error(None, "`client_id` is required")
        for key, val, what in (
            ("issuer", issuer, "the discovery of its endpoints"),
            ("authorization_url", authorization_url, "the authorization request"),
        ):
            if val is not None and not val.missing and not re.match(r"^https?://[^/]", val.text):
                sec.error(key, "must be an http:// or https:// URL")
            elif val is not None and not val.missing:
                no_clear_text(sec, key, val.text, what)
        redirect_path = sec.text("redirect_path", default="/callback") or "/callback"
        if not redirect_path.startswith("/"):
            sec.error("redirect_path", "must start with `/`")
        redirect_port = sec.integer("redirect_port", 0, minimum=0)
        if redirect_port > 65535:
            sec.error("redirect_port", "must be a port number (0 for any free port)")
        return cls(client, issuer, authorization_url, redirect_path, redirect_port)

    async def fetch(self, ctx: GrantContext) -> Credential:
        hint = f"this route has no refresh token yet; run `authproxy login {ctx.route}` once."
        return await refresh(ctx, self.client, None, hint)
