"""A token minted elsewhere: from the config, or a file that is re-read when it changes.

Nothing here can mint a new one, so a 401 is retried only when the file has
changed since the token was read (someone put a new token there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from authproxy.credentials.grants.base import Credential, Grant, GrantContext, register
from authproxy.credentials.grants.checks import no_crlf
from authproxy.disk.state import file_signature
from authproxy.errors import CredentialUnavailable
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.secrets import Secret


@register
@dataclass(frozen=True, slots=True)
class Bearer(Grant):
    type_name = "bearer"
    injects_standing_secret = True

    token: Secret | None
    token_file: Path | None

    @classmethod
    def parse(cls, sec: Section) -> Bearer:
        token = sec.secret("token")
        file_text = sec.text("token_file")
        token_file = None
        if file_text is not None:
            token_file = Path(file_text).expanduser()
            if not token_file.is_absolute():
                token_file = sec.base_dir / token_file
        if (token is None) == (token_file is None):
            sec.error(None, "give exactly one of `token` or `token_file`")
        no_crlf(sec, "token", token)
        return cls(token, token_file)

    async def fetch(self, ctx: GrantContext) -> Credential:
        if self.token is not None:
            token = self.token.reveal()
            return Credential(headers=(("Authorization", "Bearer " + token),), secret=token)
        assert self.token_file is not None
        sig = file_signature(self.token_file)
        try:
            text = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CredentialUnavailable(f"the token file {self.token_file} cannot be read ({exc.strerror}).") from None
        if not text:
            raise CredentialUnavailable(f"the token file {self.token_file} is empty.")
        if "\r" in text or "\n" in text:
            raise CredentialUnavailable(f"the token file {self.token_file} holds more than one line.")
        return Credential(headers=(("Authorization", "Bearer " + text),), origin=sig, secret=text)

    def is_current(self, cred: Credential) -> bool:
        return self.token_file is None or file_signature(self.token_file) == cred.origin

    def may_retry(self) -> bool:
        return self.token_file is not None

    def can_retry(self, cred: Credential) -> bool:
        return not self.is_current(cred)

    def secrets(self) -> list[Secret]:
        return [self.token] if self.token is not None else []

    def _named_secrets(self) -> list[tuple[str, Secret]]:
        return [("token", self.token)] if self.token is not None else []

    def sources(self) -> list[tuple[str, str]]:
        if self.token_file is not None:
            return [("token_file", str(self.token_file))]
        return Grant.sources(self)
