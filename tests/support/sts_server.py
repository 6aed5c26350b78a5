"""A small RFC 8693 token exchange endpoint (aiohttp): neither Authlib nor oauthlib implements one.

``POST /token`` with ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``:

- client authentication by HTTP Basic, as in §2.3's example (``rs08`` /
  ``long-secure-random-secret``); a wrong one is ``invalid_client`` (401);
- ``subject_token`` and ``subject_token_type`` are required (§2.1,
  ``invalid_request``), the subject token must be one ``accept_subject`` accepts
  (``invalid_grant``), ``resource``/``audience`` must be ``targets`` if given
  (§2.2.2 ``invalid_target``);
- the answer is shaped as §2.3's example (``issued_token_type`` access_token,
  ``token_type: Bearer``, ``expires_in: 60``), or, when the client asks for
  ``requested_token_type`` jwt or id_token, as §2.2.1 says for a token that is
  not an access token: ``issued_token_type`` that type and ``token_type: N_A``.

Every token issued is remembered with the subject it was exchanged for
(``is_valid``), and every request recorded (``requests``).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from aiohttp.test_utils import TestServer

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
TYPE = "urn:ietf:params:oauth:token-type:"
# RFC 8693 §2.3's example client.
CLIENT_ID = "rs08"
CLIENT_SECRET = "long-secure-random-secret"


@dataclass
class STS:
    server: TestServer
    accept_subject: Callable[[str, str], bool] = lambda token, kind: True
    targets: tuple[str, ...] = ()
    #: lifetime of what it issues (§2.3's example: 60)
    expires_in: int = 60
    #: answer without ``issued_token_type``, as a server that is not RFC 8693's would
    omit_issued_type: bool = False
    requests: list[dict[str, str]] = field(default_factory=list)
    issued: dict[str, str] = field(default_factory=dict)  # token -> the subject token it was exchanged for

    @property
    def token_url(self) -> str:
        return str(self.server.make_url("/token"))

    def is_valid(self, token: str) -> bool:
        return token in self.issued

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        params = {k: str(v) for k, v in form.items()}
        self.requests.append({**params, "authorization": request.headers.get("Authorization", "")})
        if not self._client_ok(request.headers.get("Authorization", "")):
            return _error(401, "invalid_client", "Client authentication failed.")
        if params.get("grant_type") != GRANT_TYPE:
            return _error(400, "unsupported_grant_type", "Only token exchange here.")
        subject, kind = params.get("subject_token"), params.get("subject_token_type")
        if not subject or not kind:
            return _error(400, "invalid_request", "subject_token and subject_token_type are required.")
        if not self.accept_subject(subject, kind):
            return _error(400, "invalid_grant", "The subject token is not acceptable.")
        for key in ("resource", "audience"):
            if key in params and params[key] not in self.targets:
                return _error(400, "invalid_target", f"Unknown {key}.")
        token = "sts-" + secrets.token_urlsafe(24)
        self.issued[token] = subject
        requested = params.get("requested_token_type")
        if requested in (TYPE + "jwt", TYPE + "id_token"):
            body: dict[str, Any] = {"access_token": token, "issued_token_type": requested, "token_type": "N_A"}
        else:
            body = {"access_token": token, "issued_token_type": TYPE + "access_token", "token_type": "Bearer"}
        body["expires_in"] = self.expires_in
        if self.omit_issued_type:
            del body["issued_token_type"]
        return web.json_response(body, headers={"Cache-Control": "no-cache, no-store"})

    def _client_ok(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            cid, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return (unquote(cid), unquote(secret)) == (CLIENT_ID, CLIENT_SECRET)


def _error(status: int, code: str, description: str) -> web.Response:
    return web.json_response({"error": code, "error_description": description}, status=status)


async def start_sts() -> STS:
    app = web.Application()
    server = TestServer(app, host="127.0.0.1")
    sts = STS(server)
    app.router.add_post("/token", sts.handle)
    await server.start_server()
    return sts
