"""Resource-owner password credentials (RFC 6749 §4.3), for public or confidential clients."""

from __future__ import annotations

from dataclasses import dataclass

from authproxy.credentials.grants.base import Credential, GrantContext, register
from authproxy.credentials.grants.oauth import OAuthClient, OAuthClientGrant, request_token
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.secrets import Secret, Value


@register
@dataclass(frozen=True, slots=True)
class Password(OAuthClientGrant):
    type_name = "password"
    fetches = True

    client: OAuthClient
    username: Value
    password: Secret

    @classmethod
    def parse(cls, sec: Section) -> Password:
        client = OAuthClient.parse(sec, secret_required=False)
        username = sec.value("username", required=True) or Value("", "")
        password = sec.secret("password", required=True) or Secret("", "")
        return cls(client, username, password)

    async def fetch(self, ctx: GrantContext) -> Credential:
        params = {
            "grant_type": "password",
            "username": self.username.reveal(),
            "password": self.password.reveal(),
            **self.client.base_params(),
        }
        return (await request_token(ctx, self.client, params)).credential

    def secrets(self) -> list[Secret]:
        return [*self.client.secrets(), self.password]

    def _named_secrets(self) -> list[tuple[str, Secret]]:
        return [*self.client.named_secrets(), ("password", self.password)]
