"""OAuth 2.0 client credentials (RFC 6749 §4.4)."""

from __future__ import annotations

from dataclasses import dataclass

from authproxy.credentials.grants.base import Credential, GrantContext, register
from authproxy.credentials.grants.oauth import OAuthClient, OAuthClientGrant, request_token
from authproxy.schema.yamlreader import Section


@register
@dataclass(frozen=True, slots=True)
class ClientCredentials(OAuthClientGrant):
    type_name = "client_credentials"
    fetches = True

    client: OAuthClient

    @classmethod
    def parse(cls, sec: Section) -> ClientCredentials:
        return cls(OAuthClient.parse(sec, secret_required=True))

    async def fetch(self, ctx: GrantContext) -> Credential:
        params = {"grant_type": "client_credentials", **self.client.base_params()}
        return (await request_token(ctx, self.client, params)).credential
