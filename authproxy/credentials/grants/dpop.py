"""DPoP (RFC 9449): the key a route's tokens are bound to, the proofs made with it, the nonces servers give.

A route with ``dpop`` holds a private key. Its token requests carry a proof
(§5), so the authorization server binds the token to the key's thumbprint
(``cnf.jkt``, §6); every request it forwards carries that token as
``Authorization: DPoP`` and a fresh proof for the method and URL actually
sent upstream (§7.1). A thief with the token alone has nothing.

The key is ES256 (P-256) when the proxy makes it: the algorithm DPoP servers
accept most widely (RFC 9449's examples use it) and cheap to sign. A key from
a PEM file signs by its type: ES256/384/512 by curve, RS256 (or ``alg: PS256``
etc.) for RSA, EdDSA (or ``alg: Ed25519``) for Ed25519.

Per request, the protected header (``typ``, ``alg``, the public ``jwk``) is
the same for every proof of a key: it is encoded once, and a proof is its
claims encoded and the signing input signed with joserfc's algorithm
(RFC 7515 §7.1 compact form). joserfc is imported only by a route with
``dpop``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from authproxy.errors import CredentialUnavailable, TokenEndpointError
from authproxy.secrecy.redact import REDACTOR

if TYPE_CHECKING:
    from authproxy.credentials.grants.base import Credential, GrantContext
    from authproxy.disk.store import StateStore
    from authproxy.disk.tokenstore import TokenStore
    from authproxy.schema.yamlreader import Section

log = logging.getLogger("authproxy.dpop")

# What each key type signs with, and which algorithms a PEM of that type may name.
_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
# EdDSA first: RFC 9864 names it deprecated in favour of Ed25519, but servers know EdDSA (oidc-provider
# lists both, many list only EdDSA).
_ED_ALGS = ("EdDSA", "Ed25519")
ALGS = (*_EC_ALGS.values(), *_RSA_ALGS, *_ED_ALGS)
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class KeyProblem(ValueError):
    """A PEM that is not a private key DPoP can sign with; the message says why in one sentence."""


class DPoPKey:
    """A private key, ready to sign proofs: the header encoded once, the signer bound once."""

    __slots__ = ("_header", "_key", "_sign", "alg", "jkt")

    def __init__(self, pem: bytes, alg: str | None = None) -> None:
        from joserfc.jwk import ECKey, OKPKey, RSAKey, import_key
        from joserfc.jws import JWSRegistry

        key = import_key(pem, _key_type(pem))
        if isinstance(key, ECKey):
            allowed: tuple[str, ...] = (_EC_ALGS.get(str(key.curve_name), ""),)
        elif isinstance(key, RSAKey):
            allowed = _RSA_ALGS
        elif isinstance(key, OKPKey) and key.curve_name == "Ed25519":
            allowed = _ED_ALGS
        else:
            raise KeyProblem("is neither an EC (P-256/384/521), RSA nor Ed25519 key")
        chosen = alg or allowed[0]
        if not chosen or chosen not in allowed:
            raise KeyProblem(f"cannot sign {chosen or 'DPoP proofs'} (its key type signs {', '.join(allowed)})")
        public = key.as_dict(private=False)
        header = {"typ": "dpop+jwt", "alg": chosen, "jwk": {k: public[k] for k in sorted(public) if k != "kid"}}
        self._header = _b64(json.dumps(header, separators=(",", ":")).encode()) + "."
        self._key = key
        self._sign = JWSRegistry.algorithms[chosen].sign
        self.alg = chosen
        self.jkt = key.thumbprint()  # RFC 7638 SHA-256: the `cnf.jkt` a bound token carries (§6.1)
        private = key.as_dict(private=True)
        REDACTOR.learn(
            pem.decode("ascii", "replace"),
            "".join(pem.decode("ascii", "replace").split("\n")[1:-2]),
            *(str(private[m]) for m in _PRIVATE_MEMBERS if m in private),
        )

    def proof(self, htm: str, htu: str, ath: str | None = None, nonce: str | None = None) -> str:
        """A DPoP proof JWT (§4.2) for one request: a fresh ``jti``, the time now."""
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": htm, "htu": htu, "iat": int(time.time())}
        if ath is not None:
            claims["ath"] = ath
        if nonce is not None:
            claims["nonce"] = nonce
        signing_input = self._header + _b64(json.dumps(claims, separators=(",", ":")).encode())
        return signing_input + "." + _b64(self._sign(signing_input.encode("ascii"), self._key))


def _key_type(pem: bytes) -> Literal["EC", "RSA", "OKP"]:
    """The JWK key type of a PEM private key, read with cryptography (joserfc's own backend)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem, None)
    except TypeError:
        raise KeyProblem("is encrypted; give an unencrypted PEM key (kept private by its file mode, 0600)") from None
    except ValueError:
        raise KeyProblem("is not a PEM private key") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "EC"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "OKP"
    raise KeyProblem("is neither an EC (P-256/384/521), RSA nor Ed25519 key")


def new_key_pem() -> bytes:
    """A fresh P-256 private key as PKCS#8 PEM."""
    from joserfc.jwk import ECKey

    return ECKey.generate_key("P-256").as_pem(private=True)


def state_key(store: StateStore, route: str) -> bytes:
    """The PEM of ``route``'s DPoP key kept in the state directory, made on first use.

    ``STATE_DIR/dpop/ROUTE.pem``, mode 0600. Made by whoever comes first:
    written to a private temporary file and linked into place, so two
    processes on one state directory end up with the same key (the loser
    reads the winner's). The one place that decides where a made key lives.
    """
    from authproxy.disk.state import ensure_dir

    folder = ensure_dir(store.dir.parent / "dpop")
    path = folder / f"{route}.pem"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    tmp = folder / f".{route}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new_key_pem())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            log.info("route %s: made a DPoP key in %s", route, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return path.read_bytes()


class Nonces:
    """The last ``DPoP-Nonce`` each server gave (§8, §9): one per origin, the authorization server's apart."""

    __slots__ = ("_by_origin",)

    def __init__(self) -> None:
        self._by_origin: dict[str, str] = {}

    def __bool__(self) -> bool:
        return bool(self._by_origin)

    def get(self, origin: str) -> str | None:
        return self._by_origin.get(origin)

    def offer(self, origin: str, nonce: str | None) -> bool:
        """Remember ``nonce`` for ``origin``; True when it is new."""
        if not nonce or not _nonce_ok(nonce) or self._by_origin.get(origin) == nonce:
            return False
        self._by_origin[origin] = nonce
        return True


def _nonce_ok(nonce: str) -> bool:
    # §8.1: nonce = 1*NQCHAR, the printable ASCII but `"` and `\`; bounded, since we send it back.
    return len(nonce) <= 512 and all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in nonce)


def origin_of(url: str) -> str:
    """``scheme://authority`` of an absolute URL (the server a nonce belongs to)."""
    scheme, _, rest = url.partition("://")
    return scheme.lower() + "://" + rest.partition("/")[0].partition("?")[0].partition("#")[0].lower()


def htu_of(url: str) -> str:
    """The URL without query and fragment (§4.2)."""
    return url.partition("#")[0].partition("?")[0]


def asks_for_nonce(headers: list[tuple[bytes, bytes]]) -> bool:
    """A resource server's ``WWW-Authenticate: DPoP error="use_dpop_nonce"`` (§9)."""
    for name, value in headers:
        if name.lower() == b"www-authenticate":
            low = value.lower()
            if b"dpop" in low and b"use_dpop_nonce" in low:
                return True
    return False


def nonce_in(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"dpop-nonce":
            return value.decode("latin-1").strip()
    return None


class Proofs:
    """The per-request half of one DPoP-bound token: ``Credential.proof``.

    ``ath`` (§4.2) is hashed once per token; a proof costs one signature.
    """

    __slots__ = ("_ath", "_key", "_nonces")

    def __init__(self, key: DPoPKey, token: str, nonces: Nonces) -> None:
        self._key = key
        self._ath = _b64(hashlib.sha256(token.encode("ascii")).digest())
        self._nonces = nonces

    def proof(self, method: str, url: str) -> tuple[bytes, bytes]:
        """The ``DPoP`` header for ``method`` on ``url`` (the URL as sent upstream)."""
        nonce = self._nonces.get(origin_of(url)) if self._nonces else None
        return (b"DPoP", self._key.proof(method, htu_of(url), self._ath, nonce).encode("ascii"))

    def answered(self, url: str, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """Note a nonce the response gave; True when it is a nonce challenge worth one retry (§9)."""
        fresh = self._nonces.offer(origin_of(url), nonce_in(headers))
        return fresh and status == 401 and asks_for_nonce(headers)


class DPoP:
    """A route's ``dpop`` setting: where its key comes from; and, at run time, the key and the nonces."""

    __slots__ = ("_key", "alg", "nonces", "path")

    def __init__(self, path: Path | None, alg: str | None, key: DPoPKey | None = None) -> None:
        self.path = path  # None: the key made and kept in the state directory
        self.alg = alg
        self._key = key
        self.nonces = Nonces()

    def __repr__(self) -> str:
        # Stable across processes (the shared token store digests a grant's repr): where the
        # key comes from and, for a file, which key it holds.
        if self.path is None:
            return "DPoP(state)"
        return f"DPoP(key={self.path}, jkt={self._key.jkt if self._key else None}, alg={self.alg})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DPoP) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))

    def shown(self) -> str:
        """Where the key comes from, for ``check``."""
        return "state_dir" if self.path is None else f"file:{self.path}"

    def key(self, store: StateStore, route: str) -> DPoPKey:
        if self._key is None:
            try:
                self._key = DPoPKey(state_key(store, route))
            except OSError as exc:
                msg = f"the DPoP key cannot be kept in the state directory ({exc.strerror})."
                raise CredentialUnavailable(msg, route) from None
            except KeyProblem as exc:
                raise CredentialUnavailable(f"the DPoP key in the state directory {exc}.", route) from None
        return self._key

    async def load_key(self, store: TokenStore, route: str) -> DPoPKey:
        """The route's key: configured, or made on first use where every process finds it.

        With a shared token store (``token_store:``) that is the store (``ensure``,
        sealed there like every record), so that every replica signs with the one
        key the tokens it adopts are bound to; else the state directory.
        """
        if self._key is not None:
            return self._key
        if store.kind == "file":
            # Made or read once per process; a made key is written with fsync, off the event loop.
            return await asyncio.to_thread(self.key, cast("StateStore", store), route)
        rec = await store.ensure(f"dpop:{route}", lambda: {"pem": new_key_pem().decode("ascii")})
        try:
            self._key = DPoPKey(str(rec.get("pem", "")).encode("ascii"))
        except KeyProblem as exc:
            raise CredentialUnavailable(f"the DPoP key in the token store {exc}.", route) from None
        return self._key

    async def bind(self, cred: Credential, store: TokenStore, route: str) -> Credential:
        """``cred`` with its per-request proofs: for a DPoP token only."""
        import dataclasses

        for name, value in cred.headers:
            scheme, _, token = value.partition(" ")
            if name.lower() == "authorization" and scheme.lower() == "dpop" and token:
                key = await self.load_key(store, route)
                return dataclasses.replace(cred, proof=Proofs(key, token, self.nonces))
        return cred

    async def token_post(
        self,
        ctx: GrantContext,
        url: str,
        headers: dict[str, str],
        post: Callable[[dict[str, str], Callable[[Mapping[str, str]], None]], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """A token request with a proof (§5); its ``use_dpop_nonce`` answer tried once more with the nonce (§8).

        The answer must be a DPoP token: a server that ignored the proof
        answers ``Bearer``, and such a token is refused (502) rather than sent
        as a bearer token the route's setting promised not to use.
        """
        key = await self.load_key(ctx.store, ctx.route)
        origin = origin_of(url)

        def seen(resp_headers: Mapping[str, str]) -> None:
            self.nonces.offer(origin, resp_headers.get("DPoP-Nonce"))

        for attempt in (1, 2):
            nonce = self.nonces.get(origin)
            try:
                body = await post({**headers, "DPoP": key.proof("POST", htu_of(url), None, nonce)}, seen)
                break
            except TokenEndpointError as exc:
                if attempt == 2 or exc.oauth_error != "use_dpop_nonce" or self.nonces.get(origin) == nonce:
                    raise
        kind = body.get("token_type")
        if not isinstance(kind, str) or kind.strip().lower() != "dpop":
            access = body.get("access_token")
            if isinstance(access, str):
                REDACTOR.learn(access)  # refused, never sent: and never shown either
            shown = kind.strip() if isinstance(kind, str) and re.fullmatch(r"\s*[\w.-]{1,20}\s*", kind) else "none"
            raise TokenEndpointError(
                f"the token endpoint answered token_type {shown}, not DPoP: the token is not bound to the route's key.",
                ctx.route,
            )
        return body


def parse_dpop(sec: Section) -> DPoP | None:
    """``dpop: true`` (a key made in the state directory) or ``dpop: {key: PATH, alg: ...}``."""
    if not sec.has("dpop"):
        return None
    if not sec.is_mapping("dpop"):
        return DPoP(None, None) if sec.boolean("dpop", False) else None
    sub = sec.section("dpop")
    assert sub is not None
    raw = sub.text("key")
    alg = sub.choice("alg", ALGS, "") or None
    sub.finish()
    if raw is None:
        if alg not in (None, "ES256"):
            sub.error("alg", "a key the proxy makes is ES256; give `key: PATH` to sign with another algorithm")
        return DPoP(None, None)
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = sec.base_dir / path
    try:
        pem = path.read_bytes()
        key = DPoPKey(pem, alg)
    except OSError as exc:
        sub.error("key", f"cannot be read ({exc.strerror})")
        return None
    except KeyProblem as exc:
        sub.error("key", f"{path.name} {exc}")
        return None
    if path.stat().st_mode & 0o077:
        sub.warn("key", f"{path.name} is readable by others; chmod 600 it")
    return DPoP(path, key.alg, key)
