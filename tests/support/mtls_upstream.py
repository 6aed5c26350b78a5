"""Test scaffolding: an HTTPS aiohttp upstream that requires a client certificate (``ssl.CERT_REQUIRED``).

It answers with the subject of the certificate the client presented, and can
check a certificate-bound access token (RFC 8705 §3): the JWT's
``cnf.x5t#S256`` must be the SHA-256 thumbprint of that certificate.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import WSMsgType, web
from cryptography import x509

from tests.support.pki import Pair, TestCA


def thumbprint(der: bytes) -> str:
    """``x5t#S256`` (RFC 8705 §3.1): base64url of the certificate's SHA-256, no padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def peer_der(request: web.Request) -> bytes | None:
    sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
    return sslobj.getpeercert(binary_form=True) if sslobj is not None else None


def subject_of(der: bytes | None) -> str | None:
    return None if der is None else x509.load_der_x509_certificate(der).subject.rfc4514_string()


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@dataclass
class MTLSUpstream:
    port: int = 0
    server_ca: Path = Path()  # what a client trusts for this upstream
    client_ca: TestCA = field(default_factory=lambda: TestCA("authproxy test client CA"))
    require_binding: bool = False  # check the bearer token's cnf.x5t#S256 against the certificate
    subjects: list[str | None] = field(default_factory=list)  # one per request seen

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.authority}"


def server_context(folder: Path, up: MTLSUpstream) -> ssl.SSLContext:
    server_ca = TestCA("authproxy test upstream CA")
    pair: Pair = server_ca.issue(folder, "upstream-server", common_name="127.0.0.1", server=True)
    up.server_ca = server_ca.write(folder / "upstream-ca.pem")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pair.cert, pair.key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=up.client_ca.pem().decode())
    return ctx


def app(up: MTLSUpstream) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        der = peer_der(request)
        up.subjects.append(subject_of(der))
        auth = request.headers.get("Authorization", "")
        if up.require_binding:
            token = auth.removeprefix("Bearer ")
            bound = jwt_claims(token).get("cnf", {}).get("x5t#S256") if token.count(".") == 2 else None
            if der is None or bound != thumbprint(der):
                return web.json_response({"error": "invalid_token", "why": "certificate binding"}, status=401)
        return web.json_response({"subject": subject_of(der), "path": request.path_qs, "authorized": bool(auth)})

    async def ws(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(f"{subject_of(peer_der(request))}|{request.headers.get('X-Key', '')}|{msg.data}")
        return sock

    application = web.Application()
    application.router.add_get("/ws", ws)
    application.router.add_route("*", "/{tail:.*}", echo)
    return application
