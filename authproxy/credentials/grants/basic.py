"""HTTP Basic (RFC 7617) from a username and password."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from authproxy.credentials.grants.base import Credential, Grant, GrantContext, register
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.secrets import Secret, Value


@register
@dataclass(frozen=True, slots=True)
class Basic(Grant):
    type_name = "basic"
    injects_standing_secret = True

    username: Value
    password: Secret

    @classmethod
    def parse(cls, sec: Section) -> Basic:
        username = sec.value("username", required=True) or Value("", "")
        password = sec.secret("password", required=True) or Secret("", "")
        if ":" in username.text:
            # RFC 7617 §2: the user-id cannot contain a colon.
            sec.error("username", "a Basic user name cannot contain `:`")
        return cls(username, password)

    async def fetch(self, ctx: GrantContext) -> Credential:
        password = self.password.reveal()
        raw = f"{self.username.reveal()}:{password}".encode()
        # The password is the secret a placeholder stands for; the user name is not one.
        return Credential(headers=(("Authorization", "Basic " + base64.b64encode(raw).decode()),), secret=password)

    def secrets(self) -> list[Secret]:
        return [self.password]

    def _named_secrets(self) -> list[tuple[str, Secret]]:
        return [("password", self.password)]
