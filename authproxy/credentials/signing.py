"""Signed JWTs for token endpoints (RFC 7523): a private key read from PEM, its algorithm, fresh claims.

The key is read when the configuration loads (``cryptography`` parses the
PEM, so ``check`` reports a wrong file, password or algorithm with its line);
joserfc, which signs, is imported only inside ``sign``, so a proxy whose
routes sign nothing never loads it.

Algorithms by key type (RFC 7518 §3.1, RFC 8037 §3.1): RSA → RS256 (RS384,
RS512, PS256, PS384, PS512 on request), EC P-256/P-384/P-521 → ES256/ES384/
ES512, Ed25519 and Ed448 → EdDSA (or the fully specified Ed25519 / Ed448 of
RFC 9864); an HMAC over the client secret (``client_secret_jwt``) → HS256
(HS384, HS512). RSA keys under 2048 bits are refused (RFC 7518 §3.3).

Every assertion gets a fresh ``jti``, ``iat`` now and ``exp`` ``LIFETIME``
seconds later (RFC 7523 §3: a short life limits what a stolen one is worth).
"""

from __future__ import annotations

import hashlib
import secrets
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from authproxy.errors import CredentialUnavailable
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.secrets import Secret

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

# Seconds an assertion is valid: long enough for a slow token endpoint and a minute of
# clock skew on its side (Authlib's default leeway is 60 s), short enough to be worth
# little to whoever might copy it.
LIFETIME = 60

RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
HMAC_ALGS = ("HS256", "HS384", "HS512")
_EC_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_MIN_RSA_BITS = 2048
# RFC 7518 §3.2: an HMAC key at least as long as the hash's output.
HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


# joserfc's keys by the digest of their PEM, made on first use (importing one is the costly
# part of a signature), kept outside SigningKey so that the grant's settings stay plain
# data (tokens/shared.py digests them, the same in every worker).
_JOSERFC_KEYS: OrderedDict[bytes, Any] = OrderedDict()
_CACHED_KEYS = 16


class KeyProblem(ValueError):
    """A key that cannot sign as configured; the message is one sentence for ``check``."""


def _load_pem(pem: bytes, password: str | None) -> PrivateKeyTypes:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(pem, password.encode() if password is not None else None)
    except TypeError:
        if password is None:
            raise KeyProblem("the key is encrypted: give its password in `signing_key_password`") from None
        raise KeyProblem("the key is not encrypted: remove `signing_key_password`") from None
    except ValueError:
        # cryptography says the same for a wrong password and for bytes that are no key.
        why = "or the password is wrong" if password is not None else "(PKCS#8 or traditional PEM)"
        raise KeyProblem(f"the file is not a PEM private key {why}") from None
    except Exception as exc:  # cryptography's UnsupportedAlgorithm and kin
        raise KeyProblem(f"the key cannot be read ({type(exc).__name__})") from None


def algorithms_for(key: PrivateKeyTypes) -> tuple[str, tuple[str, ...]]:
    """The default algorithm of a key and every one it may sign with; ``KeyProblem`` for other keys."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise KeyProblem(f"an RSA key of {key.key_size} bits is too weak; use {_MIN_RSA_BITS} or more")
        return "RS256", RSA_ALGS
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = _EC_ALGS.get(key.curve.name)
        if alg is None:
            raise KeyProblem(f"an EC key on curve {key.curve.name}; use P-256, P-384 or P-521")
        return alg, (alg,)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA", ("EdDSA", "Ed25519")
    if isinstance(key, ed448.Ed448PrivateKey):
        return "EdDSA", ("EdDSA", "Ed448")
    raise KeyProblem(f"a {type(key).__name__.removeprefix('_')} cannot sign a JWT; use an RSA, EC or Ed25519 key")


@dataclass(frozen=True, slots=True, repr=False)
class SigningKey:
    """A private key and how it signs: ``alg`` chosen (or checked) at load time, ``kid`` as configured."""

    pem: Secret  # the PEM text; its source is the path (or the ``${VAR}`` that held it)
    password: Secret | None
    alg: str
    kid: str | None

    def __repr__(self) -> str:
        return f"SigningKey({self.alg}, kid={self.kid!r})"

    def sign(self, claims: dict[str, Any], route: str) -> str:
        """A compact JWS of ``claims`` (RFC 7515 §7.1), ``typ: JWT``."""
        from joserfc import jwt
        from joserfc.jwk import ECKey, OKPKey, RSAKey

        cache_key = hashlib.sha256(self.pem.reveal().encode()).digest()
        key = _JOSERFC_KEYS.get(cache_key)
        if key is None:
            from cryptography.hazmat.primitives.asymmetric import ec, rsa

            password = self.password.reveal() if self.password is not None else None
            try:
                private = _load_pem(self.pem.reveal().encode(), password)
            except KeyProblem as exc:
                raise CredentialUnavailable(f"the signing key cannot be used: {exc}.", route) from None
            if isinstance(private, rsa.RSAPrivateKey):
                key = RSAKey.import_key(private)
            elif isinstance(private, ec.EllipticCurvePrivateKey):
                key = ECKey.import_key(private)
            else:  # Ed25519 or Ed448: algorithms_for() let nothing else through at load time
                key = OKPKey.import_key(private)  # type: ignore[arg-type]
            _JOSERFC_KEYS[cache_key] = key
            while len(_JOSERFC_KEYS) > _CACHED_KEYS:
                _JOSERFC_KEYS.popitem(last=False)
        header = {"alg": self.alg, "typ": "JWT"}
        if self.kid:
            header["kid"] = self.kid
        return _encode(jwt.encode, header, claims, key, self.alg)


def hmac_sign(claims: dict[str, Any], secret: str, alg: str, kid: str | None) -> str:
    """``client_secret_jwt`` (RFC 7523 §2.2, OpenID Connect Core §9): the client secret as the HMAC key."""
    from joserfc import jwt
    from joserfc.jwk import OctKey

    header = {"alg": alg, "typ": "JWT"}
    if kid:
        header["kid"] = kid
    return _encode(jwt.encode, header, claims, OctKey.import_key(secret.encode()), alg)


def _encode(encode: Any, header: dict[str, str], claims: dict[str, Any], key: Any, alg: str) -> str:
    from joserfc.errors import SecurityWarning

    with warnings.catch_warnings():
        # joserfc warns, on every call, that RFC 9864 prefers `Ed25519` to `EdDSA` (servers
        # still mostly know EdDSA), and about short HMAC keys (`check` warns about those once).
        warnings.simplefilter("ignore", SecurityWarning)
        return str(encode(header, claims, key, algorithms=[alg]))


def fresh_claims(issuer: str, subject: str, audience: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """RFC 7523 §3: ``iss``, ``sub``, one ``aud``, a new ``jti``, ``iat`` now, ``exp`` soon."""
    now = int(time.time())
    return {
        **(extra or {}),
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "jti": secrets.token_urlsafe(18),
        "iat": now,
        "exp": now + LIFETIME,
    }


def read_signing_key(sec: Section) -> SigningKey | None:
    """``signing_key`` (a PEM file, or PEM text from ``${VAR}``), ``signing_key_password``, ``signing_alg``, ``kid``.

    The key is parsed now so that ``check`` reports a wrong file, password or
    algorithm; a key that cannot be had yet (an unset variable, a file not
    there) leaves the route loaded and answering 502, as any missing secret does.
    """
    ref = sec.value("signing_key")
    password = sec.secret("signing_key_password")
    if ref is None:
        if password is not None:
            sec.error("signing_key_password", "`signing_key_password` needs a `signing_key`")
        return None
    alg = sec.text("signing_alg")
    kid = sec.text("kid")
    if ref.missing:  # ${VAR} unset: the route answers 502 naming it, as for any secret
        return SigningKey(Secret("", ref.source, ref.missing), password, alg or "RS256", kid)
    pem_text = ref.text if "-----BEGIN" in ref.text else _read_key_file(sec, ref.text)
    if "-----BEGIN" in ref.text and ref.is_literal:
        sec.warn("signing_key", "a private key written in the file; prefer a path or ${VAR}")
    sec.doc.keep_secret(pem_text)
    for line in pem_text.splitlines():
        if not line.startswith("-----") and len(line) >= 16:
            sec.doc.keep_secret(line.strip())
    pem = Secret(pem_text, ref.source, ref.missing)
    if not pem_text or (password is not None and password.missing):
        return SigningKey(pem, password, alg or "RS256", kid)
    try:
        key = _load_pem(pem_text.encode(), password.reveal() if password is not None else None)
        default, allowed = algorithms_for(key)
    except KeyProblem as exc:
        sec.error("signing_key", str(exc))
        return None
    if alg is not None and alg not in allowed:
        sec.error("signing_alg", f"`{alg}` does not go with this key; it signs with {', '.join(allowed)}")
        alg = None
    return SigningKey(pem, password, alg or default, kid)


def _read_key_file(sec: Section, path_text: str) -> str:
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        path = sec.base_dir / path
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a PEM text file"
        what = f"signing key {path} cannot be read ({why})"
        sec.missing.append(what)
        sec.warn("signing_key", f"{what}; this route answers 502 until that is fixed")
        return ""
