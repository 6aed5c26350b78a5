"""OAuth 2.0 Token Exchange (RFC 8693): a token the workload holds, traded for the one the upstream wants.

The subject token comes from ``subject_token_file`` (re-read on every fetch),
``subject_token_command``, or ``subject_route``: another route's credential,
obtained through the token layer (its cache, single flight and refresh), the
raw token without its ``Bearer``. ``check`` refuses a ``subject_route`` that
names no route, a Basic one, or a cycle (``config/chains.py``).

The answer (§2.2.1) must say ``issued_token_type``; when ``requested_token_type``
was given, it must be that. A ``token_type`` of ``N_A`` (§2.2.1: the token is
not an OAuth access token, say a JWT or an ID token) is sent as
``Authorization: Bearer``: the route asked for that token to present it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from authproxy.credentials.grants.base import Credential, GrantContext, register
from authproxy.credentials.grants.oauth import OAuthClient, OAuthClientGrant, request_token
from authproxy.credentials.grants.tokensource import TokenSource
from authproxy.errors import CredentialUnavailable, ProxyError, TokenEndpointError
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.redact import learn_header_values
from authproxy.secrecy.secrets import Secret

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
TYPE_PREFIX = "urn:ietf:params:oauth:token-type:"
# RFC 8693 §3: the token type identifiers it registers, which a config may name by their last part.
SHORT_TYPES = ("access_token", "refresh_token", "id_token", "saml1", "saml2", "jwt")


def raw_token(cred: Credential) -> str | None:
    """The token in a credential: its one header's or query parameter's value, less an auth scheme.

    None for what is no token: HTTP Basic (a user name and password), or a
    credential of several values.
    """
    values = [(n.lower(), v) for n, v in cred.headers] + [("?", v) for _, v in cred.query]
    if len(values) != 1:
        return None
    name, value = values[0]
    if name in ("authorization", "proxy-authorization"):
        scheme, sep, rest = value.partition(" ")
        if scheme.lower() == "basic":
            return None
        return rest.strip() if sep else value
    return value


def _token_type(sec: Section, key: str, default: str | None) -> str | None:
    text = sec.text(key)
    if text is None:
        return default
    if text in SHORT_TYPES:
        return TYPE_PREFIX + text
    if ":" not in text:
        names = ", ".join(SHORT_TYPES)
        sec.error(key, f"must be a token type URI (urn:ietf:params:oauth:token-type:jwt) or one of {names}")
    return text


@register
@dataclass(frozen=True, slots=True)
class TokenExchange(OAuthClientGrant):
    type_name = "token_exchange"
    fetches = True

    client: OAuthClient
    source: TokenSource | None
    subject_route: str | None
    subject_token_type: str
    requested_token_type: str | None
    resource: str | None
    # Where `subject_route` is written, for check's messages; not part of what the grant is.
    subject_at: tuple[str, int] = field(default=("", 0), compare=False)

    @classmethod
    def parse(cls, sec: Section) -> TokenExchange:
        client = OAuthClient.parse(sec, secret_required=False)
        source = TokenSource.parse(sec, "subject_token_file", "subject_token_command", "subject token")
        subject_route = sec.text("subject_route")
        given = [k for k in ("subject_token_file", "subject_token_command", "subject_route") if sec.has(k)]
        if not given:
            sec.error(None, "give `subject_token_file`, `subject_token_command` or `subject_route`")
        elif len(given) > 1:
            sec.error(given[1], f"give one of `{'`, `'.join(given)}`, not several")
        # An access token is what another route holds; a file or program most often has a JWT
        # (a Kubernetes service-account token, an ID token, a JWT-SVID).
        default = "access_token" if subject_route is not None else "jwt"
        subject_type = _token_type(sec, "subject_token_type", TYPE_PREFIX + default) or TYPE_PREFIX + default
        requested = _token_type(sec, "requested_token_type", None)
        resource = sec.text("resource")
        at = (sec.sub("subject_route"), sec.line_at("subject_route"))
        return cls(client, source, subject_route, subject_type, requested, resource, at)

    def route_refs(self) -> tuple[tuple[str, str, int], ...]:
        return ((self.subject_route, *self.subject_at),) if self.subject_route is not None else ()

    async def fetch(self, ctx: GrantContext) -> Credential:
        params = {
            "grant_type": GRANT_TYPE,
            "subject_token": await self._subject(ctx),
            "subject_token_type": self.subject_token_type,
            **self.client.base_params(),
        }
        if self.requested_token_type is not None:
            params["requested_token_type"] = self.requested_token_type
        if self.resource is not None:
            params["resource"] = self.resource
        resp = await request_token(ctx, self.client, params)
        issued = resp.body.get("issued_token_type")
        if not isinstance(issued, str) or not issued:
            said = "the token endpoint's answer has no issued_token_type (RFC 8693 §2.2.1)."
            raise TokenEndpointError(said, ctx.route)
        if self.requested_token_type is not None and issued != self.requested_token_type:
            raise TokenEndpointError(
                "the token endpoint issued another type of token than requested_token_type asks for.", ctx.route
            )
        kind = resp.body.get("token_type")
        if isinstance(kind, str) and kind.strip().upper() == "N_A":
            value = f"Bearer {resp.body['access_token']}"
            learn_header_values(f"route:{ctx.route}", [value])
            return Credential(headers=(("Authorization", value),), expires_at=resp.credential.expires_at)
        return resp.credential

    async def _subject(self, ctx: GrantContext) -> str:
        if self.source is not None:
            return await self.source.obtain(ctx)
        name = self.subject_route
        assert name is not None and ctx.credential_of is not None
        try:
            cred = await ctx.credential_of(name)
        except ProxyError as exc:
            raise CredentialUnavailable(
                f"the subject token of route {name} cannot be had: {exc.detail.rstrip('.')}.", ctx.route
            ) from None
        token = raw_token(cred)
        if token is None:
            raise CredentialUnavailable(f"route {name}'s credential is not a single token.", ctx.route)
        return token

    def secrets(self) -> list[Secret]:
        return [*self.client.secrets(), *(self.source.secrets() if self.source else [])]

    def sources(self) -> list[tuple[str, str]]:
        own = self.source.sources("subject_token_file", "subject_token_command") if self.source else []
        if self.subject_route is not None:
            own.append(("subject_route", self.subject_route))
        return [*OAuthClientGrant.sources(self), *own]  # slots dataclass: no zero-argument super()
