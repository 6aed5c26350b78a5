"""A long-lived refresh token (RFC 6749 §6), rotated refresh tokens persisted at once."""

from __future__ import annotations

from dataclasses import dataclass

from authproxy.credentials.grants.base import Credential, GrantContext, register
from authproxy.credentials.grants.oauth import OAuthClient, OAuthClientGrant
from authproxy.credentials.grants.refreshing import refresh
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.secrets import Secret


@register
@dataclass(frozen=True, slots=True)
class RefreshToken(OAuthClientGrant):
    type_name = "refresh_token"
    fetches = True
    uses_store = True

    client: OAuthClient
    refresh_token: Secret

    @classmethod
    def parse(cls, sec: Section) -> RefreshToken:
        client = OAuthClient.parse(sec, secret_required=False)
        seed = sec.secret("refresh_token", required=True) or Secret("", "")
        return cls(client, seed)

    async def fetch(self, ctx: GrantContext) -> Credential:
        hint = (
            "no refresh token is stored for this route and none is configured; set `refresh_token` in its auth block."
        )
        return await refresh(ctx, self.client, self.refresh_token, hint)

    def secrets(self) -> list[Secret]:
        return [*self.client.secrets(), self.refresh_token]

    def _named_secrets(self) -> list[tuple[str, Secret]]:
        return [*self.client.named_secrets(), ("refresh_token", self.refresh_token)]
