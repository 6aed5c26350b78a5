"""A resource server that accepts only DPoP-bound access tokens, checked per RFC 9449 §7.1 with joserfc.

It checks, for every request, what a real resource server must: one ``DPoP``
header holding a JWS with ``typ: dpop+jwt``, an asymmetric ``alg`` and a
public ``jwk`` that verifies it; ``htm`` and ``htu`` equal to this request's
method and URL (query and fragment aside); ``iat`` within a minute; a ``jti``
never seen before; ``ath`` the hash of the access token; the access token a
JWT signed by the authorization server (its JWKS fetched from it), for this
audience, unexpired, whose ``cnf.jkt`` is the proof key's thumbprint; and,
when it demands nonces, the nonce it gave last (§9: else a 401
``use_dpop_nonce`` with a fresh ``DPoP-Nonce``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from joserfc import jws, jwt
from joserfc.jwk import KeySet, import_key

ALGS = ["ES256", "ES384", "ES512", "RS256", "PS256", "EdDSA", "Ed25519"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class DPoPResource:
    """What the resource server is told (its URL, the AS's JWKS) and what it saw."""

    audience: str
    jwks_uri: str
    url: str = ""  # scheme://host:port as clients name it
    require_nonce: bool = False
    nonce: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)  # one per request: verdict, claims, raw proof
    jtis: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)  # access tokens refused as if revoked (a 401 invalid_token)
    _keys: KeySet | None = None

    @property
    def authority(self) -> str:
        return self.url.split("://", 1)[1]

    def accepted(self) -> list[dict[str, Any]]:
        return [s for s in self.seen if s["ok"]]

    def new_nonce(self) -> str:
        self.nonce = secrets.token_urlsafe(12)
        return self.nonce

    async def _as_keys(self) -> KeySet:
        if self._keys is None:
            async with aiohttp.ClientSession() as s, s.get(self.jwks_uri) as r:
                self._keys = KeySet.import_key_set(await r.json())
        return self._keys

    async def check(self, request: web.Request) -> tuple[bool, str, dict[str, Any]]:
        """(accepted, error code, the proof's claims)."""
        auth = request.headers.getall("Authorization", [])
        proofs = request.headers.getall("DPoP", [])
        if len(auth) != 1 or not auth[0].startswith("DPoP "):
            return False, "invalid_token", {}
        if len(proofs) != 1:
            return False, "invalid_dpop_proof", {}
        token, proof = auth[0][5:], proofs[0]
        try:
            header = json.loads(base64.urlsafe_b64decode(proof.split(".")[0] + "=="))
            if header.get("typ") != "dpop+jwt" or header.get("alg") not in ALGS:
                return False, "invalid_dpop_proof", {}
            jwk = header["jwk"]
            if any(k in jwk for k in ("d", "p", "q")):
                return False, "invalid_dpop_proof", {}
            key = import_key(jwk, jwk["kty"])
            obj = jws.deserialize_compact(proof, key, algorithms=[header["alg"]])
            claims = json.loads(obj.payload)
        except Exception:
            return False, "invalid_dpop_proof", {}
        htu = self.url + request.raw_path.partition("?")[0]
        if (
            claims.get("htm") != request.method
            or claims.get("htu") != htu
            or not isinstance(claims.get("iat"), int)
            or abs(time.time() - claims["iat"]) > 60
            or not isinstance(claims.get("jti"), str)
        ):
            return False, "invalid_dpop_proof", claims
        if claims["jti"] in self.jtis:
            return False, "invalid_dpop_proof", {**claims, "replay": True}
        self.jtis.add(claims["jti"])
        if claims.get("ath") != _b64(hashlib.sha256(token.encode()).digest()):
            return False, "invalid_dpop_proof", claims
        if self.require_nonce and claims.get("nonce") != self.nonce:
            return False, "use_dpop_nonce", claims
        try:
            at = jwt.decode(token, await self._as_keys(), algorithms=["ES256"])
        except Exception:
            return False, "invalid_token", claims
        c = at.claims
        if c.get("aud") != self.audience or c.get("exp", 0) < time.time() or token in self.revoked:
            return False, "invalid_token", claims
        if (c.get("cnf") or {}).get("jkt") != key.thumbprint():
            return False, "invalid_token", claims
        return True, "", claims

    def app(self) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            ok, error, claims = await self.check(request)
            self.seen.append(
                {
                    "ok": ok,
                    "error": error,
                    "method": request.method,
                    "path": request.path_qs,
                    "claims": claims,
                    "proof": request.headers.get("DPoP"),
                    "authorization": request.headers.get("Authorization"),
                }
            )
            if not ok:
                headers = {"WWW-Authenticate": f'DPoP error="{error}", algs="ES256"'}
                if error == "use_dpop_nonce":
                    headers["DPoP-Nonce"] = self.new_nonce()
                return web.json_response({"error": error}, status=401, headers=headers)
            return web.json_response({"ok": True, "method": request.method, "body_size": len(body)})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return runner
