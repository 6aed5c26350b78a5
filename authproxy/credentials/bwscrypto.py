"""Bitwarden Secrets Manager's keys: access tokens parsed and stretched, type-2 cipher strings decrypted.

As the public Bitwarden SDK does (``bws`` describes the whole exchange). A
``ValueError`` from here never quotes a token, a key or a decrypted value.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_FORM = "0.<access_token_id>.<client_secret>:<base64 key>"


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True, repr=False)
class SymmetricKey:
    """An AES-256-CBC key and an HMAC-SHA256 key (64 bytes in all)."""

    enc: bytes
    mac: bytes

    def __repr__(self) -> str:
        return "SymmetricKey(****)"

    @classmethod
    def from_bytes(cls, raw: bytes) -> SymmetricKey:
        if len(raw) != 64:
            raise ValueError(f"a key for type-2 cipher strings has 64 bytes, this one {len(raw)}")
        return cls(raw[:32], raw[32:])

    def to_bytes(self) -> bytes:
        return self.enc + self.mac


def derive_shareable_key(secret: bytes, name: str, info: str | None) -> SymmetricKey:
    """The SDK's ``derive_shareable_key``: HMAC-SHA256 keyed ``bitwarden-<name>``, then HKDF-Expand to 64 bytes."""
    if len(secret) != 16:
        raise ValueError(f"a shareable key is derived from 16 bytes, not {len(secret)}")
    h = chmac.HMAC(f"bitwarden-{name}".encode(), hashes.SHA256())
    h.update(secret)
    prk = h.finalize()
    okm = HKDFExpand(hashes.SHA256(), 64, (info or "").encode()).derive(prk)
    return SymmetricKey.from_bytes(okm)


def b64_indifferent(text: str) -> bytes:
    """Standard base64 with or without its ``=`` padding (as the SDK accepts a key)."""
    if not _B64.fullmatch(text):
        raise ValueError("not base64")
    bare = text.rstrip("=")
    try:
        return base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


@dataclass(frozen=True, slots=True, repr=False)
class AccessToken:
    """A parsed access token. ``repr``/``str`` show only the (non-secret) id."""

    access_token_id: str  # a UUID, lower case with hyphens
    client_secret: str
    key: bytes  # the 16 bytes after the colon
    stretched: SymmetricKey = field(compare=False)

    def __repr__(self) -> str:
        return f"AccessToken({self.access_token_id})"

    __str__ = __repr__

    def fingerprint(self) -> str:
        """A one-way digest of the whole token: says whether stored state belongs to it."""
        h = chmac.HMAC(b"authproxy-bws-state", hashes.SHA256())
        h.update(f"{self.access_token_id}.{self.client_secret}".encode() + b":" + self.key)
        return h.finalize().hex()


def parse_access_token(text: str) -> AccessToken:
    """Parse and validate an access token; a ``ValueError`` never quotes any part of it."""
    text = text.strip()
    if not text:
        raise ValueError(f"the access token is empty; it has the form {_FORM}")
    head, colon, key_text = text.partition(":")
    if not colon:
        raise ValueError(f"the access token has no `:<key>` part; it has the form {_FORM}")
    parts = head.split(".")
    if len(parts) != 3:
        raise ValueError(f"the access token has {len(parts)} dot-separated parts before `:`, not 3 ({_FORM})")
    version, token_id, client_secret = parts
    if version != "0":
        raise ValueError("the access token is not of version 0, the only version there is")
    try:
        canonical = str(uuid.UUID(token_id))
    except ValueError:
        raise ValueError("the access token's id (between the first two dots) is not a UUID") from None
    if not client_secret:
        raise ValueError("the access token's client secret (between the second dot and `:`) is empty")
    try:
        key = b64_indifferent(key_text)
    except ValueError:
        raise ValueError("the access token's key (after `:`) is not valid base64") from None
    if len(key) != 16:
        raise ValueError(f"the access token's key (after `:`) has {len(key)} bytes; it must have 16")
    return AccessToken(canonical, client_secret, key, derive_shareable_key(key, "accesstoken", "sm-access-token"))


# --------------------------------------------------------------------------- cipher strings


def decrypt(cipher_string: str, key: SymmetricKey) -> bytes:
    """Decrypt a type-2 cipher string (AES-256-CBC, HMAC-SHA256 checked first, in constant time)."""
    kind, dot, rest = cipher_string.partition(".")
    if not dot or kind != "2":
        raise ValueError("not a type-2 cipher string (`2.<iv>|<data>|<mac>`)")
    parts = rest.split("|")
    if len(parts) != 3:
        raise ValueError(f"a type-2 cipher string has 3 parts, this one {len(parts)}")
    try:
        iv, data, mac = (base64.b64decode(p, validate=True) for p in parts)
    except (binascii.Error, ValueError):
        raise ValueError("a part of the cipher string is not valid base64") from None
    if len(iv) != 16 or len(mac) != 32 or not data or len(data) % 16:
        raise ValueError("the cipher string's parts have the wrong sizes")
    h = chmac.HMAC(key.mac, hashes.SHA256())
    h.update(iv)
    h.update(data)
    try:
        h.verify(mac)  # constant-time comparison
    except InvalidSignature:
        raise ValueError("the cipher string's MAC does not match: wrong key, or altered data") from None
    decryptor = Cipher(algorithms.AES(key.enc), modes.CBC(iv)).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise ValueError("the cipher string's padding is wrong") from None


def decrypt_text(cipher_string: str, key: SymmetricKey) -> str:
    try:
        return decrypt(cipher_string, key).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the decrypted text is not UTF-8") from None
