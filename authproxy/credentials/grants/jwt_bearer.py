"""A JWT exchanged for an access token (RFC 7523 §2.1): an identity the workload has, for a token it needs.

The assertion comes from ``assertion_file`` (a Kubernetes projected
service-account token, a SPIFFE JWT-SVID: re-read on every fetch), from
``assertion_command``, or is signed here with ``signing_key`` (a Google-style
service account: ``assertion_claims`` says ``iss``, ``sub``, ``scope``...; a
fresh ``jti``, ``iat`` and a 60 s ``exp`` are added each time, RFC 7523 §3).
The client may also authenticate (``client_auth``; RFC 7521 §4.1 makes it
optional with this grant). Caching, refresh and the 401 retry are the token
layer's, as for every fetching grant.
"""

from __future__ import annotations

from dataclasses import dataclass

from authproxy.credentials.grants.base import Credential, GrantContext, register
from authproxy.credentials.grants.oauth import OAuthClient, OAuthClientGrant, request_token
from authproxy.credentials.grants.tokensource import TokenSource
from authproxy.credentials.signing import fresh_claims
from authproxy.errors import CredentialUnavailable
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.redact import REDACTOR
from authproxy.secrecy.secrets import Secret, Value

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Set on every assertion the proxy signs: a configured value would be stale, or replayed.
_FRESH = ("exp", "iat", "jti", "nbf")


@register
@dataclass(frozen=True, slots=True)
class JwtBearer(OAuthClientGrant):
    type_name = "jwt_bearer"
    fetches = True

    client: OAuthClient
    source: TokenSource | None  # None: the proxy signs the assertion
    claims: tuple[tuple[str, Value], ...]

    @classmethod
    def parse(cls, sec: Section) -> JwtBearer:
        client = OAuthClient.parse(sec, secret_required=False, own_key=True)
        source = TokenSource.parse(sec, "assertion_file", "assertion_command", "assertion")
        claims = sec.str_map("assertion_claims")
        has_key = sec.has("signing_key")
        if source is None and not has_key and not sec.has("assertion_command"):
            sec.error(None, "give `assertion_file`, `assertion_command`, or `signing_key` to sign the assertion here")
        if source is not None and claims is not None:
            sec.error("assertion_claims", "only for an assertion signed here, not a file's or a program's")
        if source is not None and has_key and client.auth.method != "private_key_jwt":
            sec.error("signing_key", "the assertion comes from elsewhere; `signing_key` would sign nothing")
        for name in _FRESH:
            if claims is not None and name in claims:
                sec.error("assertion_claims", f"`{name}` is set afresh on every assertion; remove it")
        if source is None and has_key and client.client_id is None and (claims is None or "iss" not in claims):
            sec.error(None, "a signed assertion needs an issuer: `assertion_claims: {iss: ...}` or `client_id`")
        kept = tuple((k, v) for k, v in (claims or {}).items() if k not in _FRESH)
        return cls(client, source, kept)

    async def fetch(self, ctx: GrantContext) -> Credential:
        assertion = await self._assertion(ctx)
        params = {"grant_type": GRANT_TYPE, "assertion": assertion, **self.client.base_params()}
        return (await request_token(ctx, self.client, params)).credential

    async def _assertion(self, ctx: GrantContext) -> str:
        if self.source is not None:
            return await self.source.obtain(ctx)
        key = self.client.auth.key
        if key is None:
            raise CredentialUnavailable("the signing key cannot be used.", ctx.route)
        extra = {k: v.reveal() for k, v in self.claims}
        iss = extra.pop("iss", None) or (self.client.client_id.reveal() if self.client.client_id else "")
        sub = extra.pop("sub", None) or iss
        aud = extra.pop("aud", None) or self.client.auth.audience or self.client.token_url.reveal()
        assertion = key.sign(fresh_claims(iss, sub, aud, extra), ctx.route)
        REDACTOR.learn(assertion, slot=f"assertion:{ctx.route}")
        return assertion

    def secrets(self) -> list[Secret]:
        return [*self.client.secrets(), *(self.source.secrets() if self.source else [])]

    def sources(self) -> list[tuple[str, str]]:
        own = self.source.sources("assertion_file", "assertion_command") if self.source else []
        return [*OAuthClientGrant.sources(self), *own]  # slots dataclass: no zero-argument super()
