"""Test scaffolding: a token endpoint that authenticates clients by their TLS certificate (RFC 8705).

Authlib has no ``tls_client_auth`` method, and werkzeug does not hand a
request its peer certificate; so this small aiohttp server is both the TLS
front (``ssl.CERT_REQUIRED`` against a client CA: only a verified certificate
gets a request through) and the method of its own, written from the RFC:

- §2.1.1 (PKI method): ``client_id`` in the body, no client secret anywhere;
  the certificate's subject DN must be the one registered for that client.
- §3: the access token issued is certificate-bound, a JWT whose
  ``cnf.x5t#S256`` is the SHA-256 thumbprint of the certificate presented.

Only ``grant_type=client_credentials``. Answers are RFC 6749 §5.1/§5.2 JSON.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import ssl
import time
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.mtls_upstream import peer_der, subject_of, thumbprint


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class MTLSTokenServer:
    port: int = 0
    clients: dict[str, str] = field(default_factory=dict)  # client_id -> registered subject DN (RFC 4514)
    forms: list[dict[str, str]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    _key: bytes = field(default_factory=lambda: os.urandom(32))

    @property
    def token_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def _jwt(self, claims: dict) -> str:
        head = _b64(json.dumps({"alg": "HS256", "typ": "at+jwt"}).encode())
        body = _b64(json.dumps(claims).encode())
        sig = _b64(hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha256).digest())
        return f"{head}.{body}.{sig}"

    async def token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.forms.append(form)
        self.auth_headers.append(request.headers.get("Authorization"))
        der = peer_der(request)

        def error(status: int, code: str, why: str) -> web.Response:
            return web.json_response({"error": code, "error_description": why}, status=status)

        if "client_secret" in form or request.headers.get("Authorization"):
            return error(400, "invalid_request", "tls_client_auth takes no client secret")
        cid = form.get("client_id")
        if cid not in self.clients or der is None or subject_of(der) != self.clients[cid]:
            return error(401, "invalid_client", "the certificate is not the one registered for this client")
        if form.get("grant_type") != "client_credentials":
            return error(400, "unsupported_grant_type", "client_credentials only")
        token = self._jwt(
            {
                "sub": cid,
                "jti": secrets.token_hex(8),
                "exp": int(time.time()) + 300,
                "cnf": {"x5t#S256": thumbprint(der)},
            }
        )
        self.issued.append(token)
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": 300})


def application(server: MTLSTokenServer) -> web.Application:
    app = web.Application()
    app.router.add_post("/token", server.token)
    return app


def tls_front(cert: str, key: str, client_ca_pem: bytes) -> ssl.SSLContext:
    """The front: a server certificate, and only clients whose certificate the client CA signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=client_ca_pem.decode())
    return ctx
