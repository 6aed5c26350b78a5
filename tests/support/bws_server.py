"""A local Bitwarden identity + Secrets Manager stand-in, written from the SDK's description.

It runs aiohttp on ``127.0.0.1`` (plain HTTP) in a thread with its own event
loop, so a synchronous config load (``${bws:ID}``), an async test and a
proxy in a child process can all use it.

- It makes a machine account: an access token id (UUID), a client secret and
  a 16-byte key, so ``access_token`` is ``0.<id>.<secret>:<base64 key>``; an
  organization id and a 64-byte organization key.
- ``POST /identity/connect/token`` (form): ``grant_type=client_credentials``,
  ``scope=api.secrets``, ``client_id`` = the token id, ``client_secret``.
  Answers ``access_token`` (an HS256 JWT with ``organization``, ``exp``,
  ``sub``, ``scope``), ``expires_in``, ``token_type: Bearer``, ``scope`` and
  ``encrypted_payload``: a type-2 cipher string of ``{"encryptionKey":
  base64(org key)}`` under the key stretched from the 16 bytes.
- ``GET /api/secrets/{id}`` with that bearer: the secret, with ``key``,
  ``value`` and ``note`` as type-2 cipher strings under the organization key.

The crypto here uses ``cryptography`` directly and none of ``authproxy.credentials.bws``,
so the proxy's code is checked against an independent implementation.
Nothing here logs anything.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

__all__ = ["BwsServer", "bws_server", "encrypt_type2", "stretch"]

logging.getLogger("aiohttp.access").disabled = True


def stretch(key16: bytes) -> bytes:
    """The 64-byte key of an access token: HMAC(bitwarden-accesstoken, key), then HKDF-Expand(sm-access-token)."""
    h = chmac.HMAC(b"bitwarden-accesstoken", hashes.SHA256())
    h.update(key16)
    return HKDFExpand(hashes.SHA256(), 64, b"sm-access-token").derive(h.finalize())


def encrypt_type2(plain: bytes, key64: bytes, iv: bytes | None = None) -> str:
    """``2.<iv>|<data>|<mac>``: AES-256-CBC with PKCS#7, HMAC-SHA256 over iv + data."""
    iv = iv or os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    enc = Cipher(algorithms.AES(key64[:32]), modes.CBC(iv)).encryptor()
    data = enc.update(padded) + enc.finalize()
    h = chmac.HMAC(key64[32:], hashes.SHA256())
    h.update(iv + data)
    mac = h.finalize()
    b64 = base64.b64encode
    return f"2.{b64(iv).decode()}|{b64(data).decode()}|{b64(mac).decode()}"


@dataclass
class _Secret:
    key: str
    value: str
    note: str


@dataclass
class BwsServer:
    token_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(22).replace("-", "x").replace("_", "y"))
    key: bytes = field(default_factory=lambda: os.urandom(16))
    organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    org_key: bytes = field(default_factory=lambda: os.urandom(64))
    expires_in: int = 3600
    # Answer the token endpoint (or the secrets API) with this status instead.
    fail_identity: int | None = None
    fail_secrets: int | None = None
    port: int = 0
    requests: Counter[str] = field(default_factory=Counter)
    token_forms: list[dict[str, str]] = field(default_factory=list)
    token_headers: list[dict[str, str]] = field(default_factory=list)
    _signing: bytes = field(default_factory=lambda: os.urandom(32))
    _issued: list[str] = field(default_factory=list)
    _revoked: set[str] = field(default_factory=set)
    _secrets: dict[str, _Secret] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    tls: ssl.SSLContext | None = None  # serve HTTPS with this context (a server behind TLS inspection)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    # -- what tests use ---------------------------------------------------------

    @property
    def key_b64(self) -> str:
        return base64.b64encode(self.key).decode()

    @property
    def access_token(self) -> str:
        return f"0.{self.token_id}.{self.client_secret}:{self.key_b64}"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def identity_url(self) -> str:
        return f"{self.base_url}/identity"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    def add_secret(self, value: str, key: str = "a-secret", note: str = "") -> str:
        sid = str(uuid.uuid4())
        with self._lock:
            self._secrets[sid] = _Secret(key, value, note)
        return sid

    def issued(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    def is_valid(self, token: str) -> bool:
        with self._lock:
            if token not in self._issued or token in self._revoked:
                return False
        try:
            jwt.decode(token, self._signing, algorithms=["HS256"], audience="api")
        except jwt.PyJWTError:
            return False
        return True

    def revoke_all(self) -> None:
        with self._lock:
            self._revoked.update(self._issued)

    def secret_forms(self) -> list[str]:
        """Every secret this server holds, for the output grep."""
        stretched = stretch(self.key)
        out = [
            self.access_token,
            self.client_secret,
            self.key_b64,
            self.key_b64.rstrip("="),
            self.key.hex(),
            self.key.decode("latin-1"),
            base64.b64encode(stretched).decode(),
            stretched.hex(),
            base64.b64encode(self.org_key).decode(),
            self.org_key.hex(),
            *self.issued(),
        ]
        with self._lock:
            out += [s.value for s in self._secrets.values()]
        return out

    # -- the HTTP side -------------------------------------------------------------

    def _issue(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self.identity_url,
            "aud": "api",
            "nbf": now,
            "iat": now,
            "exp": now + self.expires_in,
            "sub": self.token_id,
            "client_id": self.token_id,
            "organization": self.organization_id,
            "scope": ["api.secrets"],
            "jti": secrets.token_hex(8),
        }
        token = jwt.encode(claims, self._signing, algorithm="HS256")
        with self._lock:
            self._issued.append(token)
        return token

    async def _token(self, request: web.Request) -> web.Response:
        self.requests["token"] += 1
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_forms.append(form)
        self.token_headers.append(dict(request.headers))
        if self.fail_identity is not None:
            return web.json_response({"error": "server_error"}, status=self.fail_identity)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("scope") != "api.secrets":
            return web.json_response({"error": "invalid_scope"}, status=400)
        if form.get("client_id") != self.token_id or form.get("client_secret") != self.client_secret:
            return web.json_response({"error": "invalid_client"}, status=400)
        payload = json.dumps({"encryptionKey": base64.b64encode(self.org_key).decode()}).encode()
        return web.json_response(
            {
                "access_token": self._issue(),
                "expires_in": self.expires_in,
                "token_type": "Bearer",
                "scope": "api.secrets",
                "encrypted_payload": encrypt_type2(payload, stretch(self.key)),
            }
        )

    async def _secret(self, request: web.Request) -> web.Response:
        self.requests["secret"] += 1
        sid = request.match_info["id"]
        self.requests[f"secret:{sid}"] += 1
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not self.is_valid(auth[7:]):
            return web.json_response({"message": "Unauthorized"}, status=401)
        if self.fail_secrets is not None:
            return web.json_response({"message": "failure"}, status=self.fail_secrets)
        with self._lock:
            found = self._secrets.get(sid)
        if found is None:
            return web.json_response({"message": "Resource not found."}, status=404)
        stamp = "2024-01-02T03:04:05.000Z"
        return web.json_response(
            {
                "object": "secret",
                "id": sid,
                "organizationId": self.organization_id,
                "key": encrypt_type2(found.key.encode(), self.org_key),
                "value": encrypt_type2(found.value.encode(), self.org_key),
                "note": encrypt_type2(found.note.encode(), self.org_key),
                "creationDate": stamp,
                "revisionDate": stamp,
                "projects": [],
            }
        )

    def start(self) -> BwsServer:
        ready = threading.Event()

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/identity/connect/token", self._token)
            app.router.add_get("/api/secrets/{id}", self._secret)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
            await site.start()
            self.port = self._runner.addresses[0][1]

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            loop.run_until_complete(serve())
            ready.set()
            loop.run_forever()
            assert self._runner is not None
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="bws-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the bws stand-in did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@pytest.fixture
def bws_server() -> Iterator[BwsServer]:
    server = BwsServer().start()
    yield server
    server.stop()


def claims_of(token: str) -> dict[str, Any]:
    out: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return out
