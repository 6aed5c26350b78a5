"""Names and values for a store that others can read: HMAC-SHA256 names, AES-256-GCM values.

A shared token store (Redis) is reachable by whoever reaches its port or
reads its append-only file, so nothing in it may be readable: key names are
HMAC-SHA256 of what they name (a route's name, a record's kind) under a
subkey of the configured key, so they show no route, host or client; values
are AES-256-GCM (NIST SP 800-38D) under another subkey, with a random 96-bit
nonce each, and the key name as associated data: a value copied under another
name does not open (§7.2 of SP 800-38D: the tag covers the associated data).

Both subkeys are derived from the configured key with HMAC (RFC 5869's
expand step with one block), so a name never doubles as a cipher key. The
configured key must hold at least 32 random bytes, given in Base64.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from typing import Any

KEY_BYTES = 32
_FORMAT = b"\x01"  # a format byte first: a later scheme can be told apart
_NONCE = 12


class SealError(ValueError):
    """A value that does not open under this key and name (another key, moved, or tampered with)."""


def decode_key(text: str) -> bytes:
    """The configured key's bytes; ``ValueError`` with the reason when it is not usable."""
    raw = text.strip()
    try:
        padded = raw + "=" * (-len(raw) % 4)
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not Base64; make one with `openssl rand -base64 32`") from None
    if len(key) < KEY_BYTES:
        raise ValueError(
            f"holds {len(key)} bytes; it needs at least {KEY_BYTES} random bytes (`openssl rand -base64 32`)"
        )
    return key


def _subkey(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, b"authproxy token store " + label + b"\x01", hashlib.sha256).digest()


class Sealer:
    """Names and sealed values under one configured key."""

    __slots__ = ("_aead", "_names")

    def __init__(self, key: bytes) -> None:
        # Imported here: only a configured shared store needs the cipher.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._names = _subkey(key, b"names")
        self._aead = AESGCM(_subkey(key, b"values"))

    def name(self, *parts: str) -> str:
        """A key name for ``parts``: 64 hex digits that say nothing without the key."""
        msg = b"\x00".join(p.encode() for p in parts)
        return hmac.new(self._names, msg, hashlib.sha256).hexdigest()

    def seal(self, value: dict[str, Any], name: str) -> bytes:
        nonce = os.urandom(_NONCE)
        body = json.dumps(value, separators=(",", ":")).encode()
        return _FORMAT + nonce + self._aead.encrypt(nonce, body, name.encode())

    def open(self, blob: bytes, name: str) -> dict[str, Any]:
        from cryptography.exceptions import InvalidTag

        if len(blob) < 1 + _NONCE + 16 or blob[:1] != _FORMAT:
            raise SealError("not a sealed value")
        try:
            body = self._aead.decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], name.encode())
        except InvalidTag:
            raise SealError("does not open under this key and name") from None
        value = json.loads(body)
        if not isinstance(value, dict):
            raise SealError("not a record")
        return value
