"""A token the proxy is handed rather than issued: read from a file, or printed by a helper program.

``jwt_bearer``'s assertion (a Kubernetes projected service-account token, a
SPIFFE JWT-SVID) and ``token_exchange``'s subject token come from here. The
file is read again on every fetch, since whoever writes it rotates it (the
kubelet, a SPIFFE helper); the program runs through the ``command`` grant's
runner (no shell, its own process group, stdout bounded, stderr discarded,
killed when ``timeouts.token_fetch`` is up). Either way the value is known to
the redactor before anything could print it, and an error names the file or
program, never what it held.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from authproxy.credentials.grants.base import GrantContext
from authproxy.credentials.grants.command import MAX_STDOUT, program_name, read_argv, run_helper
from authproxy.errors import CredentialUnavailable
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.redact import REDACTOR
from authproxy.secrecy.secrets import Secret, Value

# A JWT, a SAML assertion in base64url, an opaque token: visible ASCII, no spaces.
_TOKEN = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class TokenSource:
    what: str  # "assertion", "subject token": how messages name it
    path: Path | None
    argv: tuple[Value, ...]

    @classmethod
    def parse(cls, sec: Section, file_key: str, command_key: str, what: str) -> TokenSource | None:
        """``file_key: PATH`` or ``command_key: [argv...]``, not both; None when neither is given."""
        path_text = sec.text(file_key)
        argv = read_argv(sec, command_key) if sec.has(command_key) else ()
        if path_text is not None and sec.has(command_key):
            sec.error(command_key, f"give `{file_key}` or `{command_key}`, not both")
        if path_text is not None:
            path = Path(path_text).expanduser()
            return cls(what, path if path.is_absolute() else sec.base_dir / path, ())
        return cls(what, None, argv) if argv else None

    def sources(self, file_key: str, command_key: str) -> list[tuple[str, str]]:
        if self.path is not None:
            return [(file_key, str(self.path))]
        first = self.argv[0]
        return [(command_key, first.shown_source() if isinstance(first, Secret) else first.source)]

    def secrets(self) -> list[Secret]:
        return [a for a in self.argv if isinstance(a, Secret)]

    async def obtain(self, ctx: GrantContext) -> str:
        if self.path is not None:
            where = f"the {self.what} file {self.path}"
            raw = await asyncio.to_thread(_read_file, self.path, where, ctx.route)
        else:
            where = f"the {self.what} printed by `{program_name(self.argv)}`"
            raw = await run_helper(self.argv, ctx.deadline, ctx.route)
        try:
            token = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise CredentialUnavailable(f"{where} is not UTF-8 text.", ctx.route) from None
        if not token:
            raise CredentialUnavailable(f"{where} is empty.", ctx.route)
        # Known before any message could quote it, even the one just below.
        REDACTOR.learn(token, slot=f"{self.what}:{ctx.route}")
        if not _TOKEN.fullmatch(token):
            raise CredentialUnavailable(f"{where} is not one token (it holds spaces or control characters).", ctx.route)
        return token


def _read_file(path: Path, where: str, route: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_STDOUT + 1)
    except OSError as exc:
        raise CredentialUnavailable(f"{where} cannot be read ({exc.strerror or type(exc).__name__}).", route) from None
    if len(data) > MAX_STDOUT:
        raise CredentialUnavailable(f"{where} is larger than {MAX_STDOUT // 1024} KiB.", route)
    return data
