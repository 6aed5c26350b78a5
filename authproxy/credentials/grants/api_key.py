"""A fixed key in a header (``X-API-Key``, ``Authorization: Bearer sk_...``) or a query parameter."""

from __future__ import annotations

from dataclasses import dataclass

from authproxy.credentials.grants.base import Credential, Grant, GrantContext, register
from authproxy.credentials.grants.checks import no_crlf, placement
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.secrets import Secret


@register
@dataclass(frozen=True, slots=True)
class ApiKey(Grant):
    type_name = "api_key"
    injects_standing_secret = True

    value: Secret
    header: str | None
    prefix: str
    query: str | None

    @classmethod
    def parse(cls, sec: Section) -> ApiKey:
        value = sec.secret("value", required=True) or Secret("", "")
        header, prefix, query = placement(sec, bearer_for_authorization=False)
        no_crlf(sec, "value", value)
        return cls(value, header, prefix, query)

    async def fetch(self, ctx: GrantContext) -> Credential:
        value = self.value.reveal()
        if self.query is not None:
            return Credential(query=((self.query, value),), secret=value)
        assert self.header is not None
        return Credential(headers=((self.header, self.prefix + value),), secret=value)

    def secrets(self) -> list[Secret]:
        return [self.value]

    def _named_secrets(self) -> list[tuple[str, Secret]]:
        return [("value", self.value)]
