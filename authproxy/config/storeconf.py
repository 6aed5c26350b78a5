"""``token_store: {url, key, prefix}`` → ``TokenStoreSettings``: the shared store every replica uses.

Checked at load time, so ``authproxy check`` says what is wrong with path and
line: the URL's scheme (``redis://`` or ``rediss://``), that it and the key
resolve now (an unset variable must not silently mean the file store), and
that the key holds 32 random bytes or more. The password in the URL is known
to the redactor from here on, as written and percent-decoded.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from authproxy.config.model import TokenStoreSettings
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.sealing import decode_key

_PREFIX = re.compile(r"[A-Za-z0-9._:{}-]{1,64}")


def parse_token_store(top: Section) -> TokenStoreSettings | None:
    sec = top.section("token_store")
    if sec is None:
        return None
    url, key = sec.value("url", required=True), sec.secret("key", required=True)
    prefix = sec.text("prefix", default="authproxy:") or ""
    sec.finish()
    if not _PREFIX.fullmatch(prefix):
        sec.error("prefix", "must be 1 to 64 letters, digits or `._:{}-` (e.g. `authproxy:`)")
    where = _check_url(sec, url.reveal() if url is not None and not url.missing else None, url)
    if key is not None:
        if key.missing:
            sec.error("key", f"{key.missing[0]}; the shared store needs its key at start")
        else:
            try:
                decode_key(key.reveal())
            except ValueError as exc:
                sec.error("key", str(exc))
    if url is None or key is None or where is None or key.missing:
        return None
    return TokenStoreSettings(url, key, prefix, where)


def _check_url(sec: Section, text: str | None, url: object) -> str | None:
    if url is not None and text is None:
        sec.error("url", "is not set; the shared store needs its URL at start")
        return None
    if text is None:
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        sec.error("url", "is not a URL (redis://HOST:PORT/DB or rediss://...)")
        return None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        sec.error("url", "must be redis://HOST:PORT/DB or rediss://HOST:PORT/DB (TLS)")
        return None
    if parts.password:
        # From ${VAR} as the docs say; known to every output's redactor as written and decoded.
        sec.doc.keep_secret(parts.password)
        sec.doc.keep_secret(unquote(parts.password))
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port or 6379}{parts.path or '/0'}"
