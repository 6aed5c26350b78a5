# mypy: disable-error-code="import-untyped,misc"
"""A real OAuth 2.0 authorization server (Authlib + Flask) for tests.

The server runs on ``127.0.0.1`` on a free port, in a background thread, using
werkzeug's threaded development server.  Token and authorization requests are
handled by Authlib's own grant classes (:class:`ClientCredentialsGrant`,
:class:`ResourceOwnerPasswordCredentialsGrant`, :class:`RefreshTokenGrant` with
rotation, and :class:`AuthorizationCodeGrant` with a mandatory S256
:class:`CodeChallenge`), so success responses and errors (``invalid_client`` 401,
``invalid_grant`` 400, ``unsupported_grant_type`` 400, ``invalid_scope`` 400, ...)
are Authlib's spec-conformant JSON.

Usage::

    def test_something(oauth_server: OAuthServer) -> None:
        oauth_server.add_client("cid", "secret")
        ...  # point a token_url at oauth_server.token_url

or, without pytest, ``server = start_oauth_server(); ...; server.stop()``.

To use the ``oauth_server`` fixture from a test module, either declare
``pytest_plugins = ["tests.support.oauth_server"]`` in the root conftest (or the
test module) or import the fixture explicitly.

Endpoints:

* ``POST /oauth/token``: standard ``application/x-www-form-urlencoded`` token
  endpoint.
* ``POST /oauth/token-json``: the same Authlib endpoint behind a tiny WSGI
  middleware that turns an ``application/json`` object body into a form body
  before Authlib sees it (non-JSON bodies pass through unchanged).
* ``GET /oauth/authorize``: authorization endpoint (``response_type=code`` with
  PKCE S256 only).  The request is validated first (unknown client or
  unregistered ``redirect_uri`` -> JSON 400; other errors are redirected to the
  client with ``error=...``).  Without a login session cookie it answers 200 with
  a tiny HTML login form; with one it auto-consents and redirects (302) to the
  ``redirect_uri`` with ``code``, ``state`` and (``send_iss``) ``iss``.
* ``GET|POST /login``: the login form / its target.  A good ``username`` +
  ``password`` (see :meth:`OAuthServer.add_user`) sets the session cookie and
  302-redirects to ``next`` (the authorize URL); bad ones give 401 + the form.
* ``GET /.well-known/oauth-authorization-server`` and
  ``GET /.well-known/openid-configuration``: RFC 8414 metadata (the same JSON).
* ``GET /healthz``: liveness probe used by :func:`start_oauth_server`.

Refresh tokens are rotated (``rotate_refresh_tokens``) with reuse detection in the
style of oidc-provider: each refresh token and each access token belongs to a
*grant family* (one per authorization code exchange, password grant that issued a
refresh token, or :meth:`OAuthServer.issue_refresh_token` seed).  Presenting a
spent refresh token answers ``invalid_grant`` AND revokes the whole family.

Nothing here writes to stderr: werkzeug request logging is disabled and Authlib's
debug logging (which would include issued tokens) is raised to WARNING, because
the proxy tests grep captured output for secrets.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import html
import json
import logging
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import pytest
from authlib.common.urls import add_params_to_uri
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, TokenMixin
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc6749.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
    ResourceOwnerPasswordCredentialsGrant,
)
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9207 import IssuerParameter
from flask import Flask, Response, redirect
from flask import request as flask_request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from tests.support import jwt_assertions

__all__ = ["OAuthServer", "oauth_server", "start_oauth_server"]

TOKEN_PATH = "/oauth/token"
JSON_TOKEN_PATH = "/oauth/token-json"
AUTHORIZE_PATH = "/oauth/authorize"
LOGIN_PATH = "/login"
HEALTH_PATH = "/healthz"
METADATA_PATHS = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")
#: name of the login session cookie set by ``POST /login``
SESSION_COOKIE = "oauth_test_session"
#: every grant type this server implements (advertised in the metadata)
GRANT_TYPES_SUPPORTED = [
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "password",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
]
#: every token endpoint auth method (RFC 7523's two live in ``jwt_assertions.py``)
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "client_secret_jwt", "none")
# RFC 8252 7.3: a loopback IP redirect URI matches with any port.
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})

_StartResponse = Callable[..., Any]
_WSGIApp = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]

# Keep secrets out of captured output: werkzeug logs every request line, and
# Authlib logs issued tokens at DEBUG level ("Issue token {...} to ...").
logging.getLogger("werkzeug").disabled = True
logging.getLogger("authlib").setLevel(logging.WARNING)


# --------------------------------------------------------------------------- models


class _Client(ClientMixin):
    """An in-memory OAuth client (RFC 7591-style: one token endpoint auth method)."""

    def __init__(
        self,
        client_id: str,
        client_secret: str | None,
        auth_method: str,
        grant_types: tuple[str, ...],
        scope: str,
        redirect_uris: tuple[str, ...] = (),
        jwt_key: Any = None,
    ) -> None:
        self.client_id = client_id
        #: what verifies its RFC 7523 assertions: a joserfc public key, or the secret as an OctKey
        self.jwt_key = jwt_key
        self.client_secret = client_secret
        self.token_endpoint_auth_method = auth_method
        self.grant_types = tuple(grant_types)
        self.scope = scope
        self.redirect_uris = tuple(redirect_uris)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # RFC 6749 3.1.2.3: redirect_uri may be omitted only if exactly one is registered.
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        # No scope requested -> no scope in the token (and none in the response).
        # Requesting a scope the client was not registered with -> None, which
        # Authlib turns into an ``invalid_scope`` error.
        if not scope:
            return ""
        allowed = set(scope_to_list(self.scope) or [])
        requested = scope_to_list(scope) or []
        if "*" in allowed:
            return " ".join(requested)
        if not set(requested) <= allowed:
            return None
        return " ".join(requested)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return any(_redirect_uri_matches(r, redirect_uri) for r in self.redirect_uris)

    def check_client_secret(self, client_secret: str) -> bool:
        if self.client_secret is None:
            return False
        return hmac.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint == "token":
            return method == self.token_endpoint_auth_method
        return True

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class _User:
    username: str
    password: str

    def get_user_id(self) -> str:
        return self.username


class _Token(TokenMixin):
    """An issued access token as stored server-side."""

    def __init__(
        self,
        access_token: str,
        client: _Client,
        user: _User | None,
        grant_type: str | None,
        scope: str,
        issued_at: float,
        expires_in: int,
        family: str | None = None,
    ) -> None:
        self.access_token = access_token
        self.client = client
        self.user = user
        self.grant_type = grant_type
        self.scope = scope
        self.issued_at = issued_at
        self.expires_in = expires_in
        #: grant family (None for tokens issued without a refresh token)
        self.family = family
        self.revoked = False

    def check_client(self, client: ClientMixin) -> bool:
        return bool(client.get_client_id() == self.client.client_id)

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> _User | None:
        return self.user

    def get_client(self) -> _Client:
        return self.client


class _RefreshToken(TokenMixin):
    """An issued refresh token.  ``spent`` = rotated away; ``revoked`` = revoked."""

    def __init__(self, refresh_token: str, client: _Client, user: _User, scope: str, family: str) -> None:
        self.refresh_token = refresh_token
        self.client = client
        self.user = user
        self.scope = scope
        self.family = family
        self.spent = False
        self.revoked = False

    def check_client(self, client: ClientMixin) -> bool:
        return bool(client.get_client_id() == self.client.client_id)

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return 0

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> _User:
        return self.user

    def get_client(self) -> _Client:
        return self.client


class _AuthCode(AuthorizationCodeMixin):
    """An authorization code; kept (``used``) after exchange for reuse detection."""

    def __init__(
        self,
        code: str,
        client: _Client,
        user: _User,
        redirect_uri: str | None,
        scope: str,
        code_challenge: str | None,
        code_challenge_method: str | None,
        issued_at: float,
        expires_in: int,
    ) -> None:
        self.code = code
        self.client = client
        self.user = user
        self.redirect_uri = redirect_uri
        self.scope = scope
        self.code_challenge = code_challenge
        self.code_challenge_method = code_challenge_method
        self.issued_at = issued_at
        self.expires_in = expires_in
        #: the grant family of the tokens this code is (or will be) exchanged for
        self.family = secrets.token_hex(8)
        self.used = False

    def get_redirect_uri(self) -> str | None:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in


# --------------------------------------------------------------------------- grants

# Order matters only for which method Authlib tries first; each client accepts
# exactly its own ``auth_method`` (see ``_Client.check_endpoint_auth_method``).
_CONFIDENTIAL_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "client_secret_jwt"]


class _ClientCredentialsGrant(ClientCredentialsGrant):
    # RFC 6749 4.4: client_credentials is for confidential clients only, so a
    # public ("none") client gets invalid_client here.
    TOKEN_ENDPOINT_AUTH_METHODS = _CONFIDENTIAL_METHODS


class _PasswordGrant(ResourceOwnerPasswordCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = [*_CONFIDENTIAL_METHODS, "none"]

    def authenticate_user(self, username: str, password: str) -> _User:
        server: OAuthServer = self.server.oauth_test_server
        user = server._lookup_user(username, password)
        if user is None:
            # Authlib's default here is invalid_request; RFC 6749 5.2 says invalid
            # resource owner credentials are ``invalid_grant``.
            raise InvalidGrantError("Invalid username or password.")
        return user


class _RefreshTokenGrant(RefreshTokenGrant):
    """Refresh with rotation and oidc-provider-style reuse detection."""

    TOKEN_ENDPOINT_AUTH_METHODS = [*_CONFIDENTIAL_METHODS, "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> _RefreshToken | None:
        # None -> Authlib answers invalid_grant.  A spent token also revokes its family.
        server: OAuthServer = self.server.oauth_test_server
        return server._active_refresh_token(refresh_token)

    def validate_token_request(self) -> None:
        super().validate_token_request()
        # Claim (spend) the token atomically, so that two concurrent refreshes with
        # the same token cannot both succeed: the loser is a reuse.
        server: OAuthServer = self.server.oauth_test_server
        self._rotate = server.rotate_refresh_tokens
        if self._rotate and not server._claim_refresh_token(self.request.refresh_token):
            raise InvalidGrantError()

    def issue_token(self, user: _User, refresh_token: _RefreshToken) -> dict[str, Any]:
        scope = self.request.payload.scope or refresh_token.get_scope()
        token: dict[str, Any] = self.generate_token(user=user, scope=scope, include_refresh_token=self._rotate)
        return token

    def authenticate_user(self, refresh_token: _RefreshToken) -> _User:
        return refresh_token.user

    def revoke_old_credential(self, refresh_token: _RefreshToken) -> None:
        pass  # already spent in validate_token_request (or kept, without rotation)


class _S256CodeChallenge(CodeChallenge):
    """PKCE, S256 only, and a ``code_challenge`` is mandatory for every client."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": CodeChallenge.CODE_CHALLENGE_METHODS["S256"]}

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("Missing 'code_challenge'")
        super().validate_code_challenge(grant, redirect_uri)
        if not data.get("code_challenge_method"):
            # RFC 7636 4.3: absent means "plain", which this server does not support.
            raise InvalidRequestError("Missing 'code_challenge_method', only S256 is supported")


class _AuthorizationCodeGrant(AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = [*_CONFIDENTIAL_METHODS, "none"]

    def save_authorization_code(self, code: str, request: Any) -> None:
        server: OAuthServer = self.server.oauth_test_server
        data = request.payload.data
        server._save_code(
            _AuthCode(
                code=code,
                client=request.client,
                user=request.user,
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope or "",
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
                issued_at=time.time(),
                expires_in=server.code_expires_in,
            )
        )

    def query_authorization_code(self, code: str, client: _Client) -> _AuthCode | None:
        server: OAuthServer = self.server.oauth_test_server
        return server._active_code(code, client)

    def validate_token_request(self) -> None:
        super().validate_token_request()  # includes the PKCE check (a hook)
        server: OAuthServer = self.server.oauth_test_server
        if not server._claim_code(self.request.authorization_code):
            raise InvalidGrantError("Invalid 'code' in request.")

    def delete_authorization_code(self, authorization_code: _AuthCode) -> None:
        pass  # marked used in validate_token_request (kept for reuse detection)

    def authenticate_user(self, authorization_code: _AuthCode) -> _User:
        return authorization_code.user


class _IssuerParameter(IssuerParameter):
    """RFC 9207 ``iss`` in authorization responses, while ``send_iss`` is on."""

    def __init__(self, server: OAuthServer) -> None:
        self.test_server = server

    def get_issuer(self) -> str | None:
        return self.test_server.issuer if self.test_server.send_iss else None


class _AuthorizationServer(AuthorizationServer):
    """Authlib's Flask server with a back-reference to the test server."""

    oauth_test_server: OAuthServer


# --------------------------------------------------------------------------- helpers


def _redirect_uri_matches(registered: str, requested: str) -> bool:
    """Exact match, except that loopback IP URIs match with any port (RFC 8252 7.3)."""
    if registered == requested:
        return True
    try:
        reg, req = urlsplit(registered), urlsplit(requested)
        req.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    if reg.scheme != "http" or reg.hostname not in _LOOPBACK_HOSTS:
        return False
    if req.username is not None or req.password is not None or req.fragment:
        return False
    return (req.scheme, req.hostname, req.path, req.query) == (reg.scheme, reg.hostname, reg.path, reg.query)


def _login_page(next_url: str, message: str = "") -> str:
    note = f"<p class=error>{html.escape(message)}</p>" if message else ""
    return (
        "<!doctype html><html><head><title>Sign in</title></head><body>"
        f"<h1>Sign in</h1>{note}"
        f'<form method="post" action="{LOGIN_PATH}">'
        f'<input type="hidden" name="next" value="{html.escape(next_url, quote=True)}">'
        '<label>Username <input name="username" autocomplete="username"></label>'
        '<label>Password <input type="password" name="password" autocomplete="current-password"></label>'
        '<button type="submit">Sign in</button>'
        "</form></body></html>"
    )


def _jwt_key(public_key: Any, hmac_secret: str | None) -> Any:
    """A client's RFC 7523 verification key: a public key (cryptography object or joserfc key), or its secret."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

    if hmac_secret is not None:
        return OctKey.import_key(hmac_secret.encode())
    if public_key is None or hasattr(public_key, "as_dict"):
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey):
        return RSAKey.import_key(public_key)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return ECKey.import_key(public_key)
    return OKPKey.import_key(public_key)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _make_hs256_jwt(claims: dict[str, Any], key: str) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = hmac.new(key.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64url(signature)


def _json_value_to_form(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str):
        return [value]
    if isinstance(value, int | float):
        return [str(value)]
    if isinstance(value, list):
        out: list[str] = []
        for item in value:
            out.extend(_json_value_to_form(item))
        return out
    return [json.dumps(value, separators=(",", ":"))]


def _read_body(environ: dict[str, Any]) -> bytes:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH") or ""
    if length.strip().isdigit():
        return bytes(stream.read(int(length)))
    if environ.get("wsgi.input_terminated"):
        return bytes(stream.read())
    return b""


def _replace_body(environ: dict[str, Any], body: bytes) -> None:
    environ["wsgi.input"] = BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))


def _headers_of(environ: dict[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    if environ.get("CONTENT_LENGTH"):
        headers["content-length"] = environ["CONTENT_LENGTH"]
    return headers


def _first_values(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _error_response(start_response: _StartResponse, error: InvalidRequestError) -> list[bytes]:
    status, body, headers = error()
    payload = json.dumps(body).encode()
    reason = {400: "BAD REQUEST", 401: "UNAUTHORIZED"}.get(status, "ERROR")
    start_response(f"{status} {reason}", [*headers, ("Content-Length", str(len(payload)))])
    return [payload]


class _QuietRequestHandler(WSGIRequestHandler):
    """werkzeug request handler that never writes request/error lines to stderr."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def log(self, type: str, message: str, *args: Any) -> None:
        pass


# --------------------------------------------------------------------------- server


@dataclass
class OAuthServer:
    """Handle on a running Authlib authorization server (see module docstring)."""

    base_url: str
    token_url: str
    json_token_url: str
    #: lifetime (seconds) of tokens issued from now on; always sent as ``expires_in``
    #: (even when 0) unless ``jwt_tokens`` is set.
    expires_in: int = 3600
    #: ``token_type`` string placed in token responses (passed through verbatim).
    token_type: str = "Bearer"
    #: when True, access tokens are HS256 JWTs (key ``jwt_secret``) carrying ``exp``,
    #: and the token response omits ``expires_in``.
    jwt_tokens: bool = False
    jwt_secret: str = "authproxy-test-jwt-secret"
    #: RFC 8414 issuer identifier; "" -> ``base_url``.  Used for the metadata
    #: ``issuer``, the RFC 9207 ``iss`` parameter and the JWT ``iss`` claim (change it
    #: to simulate a mix-up / wrong issuer).
    issuer: str = ""
    #: URL of the authorization endpoint ("" -> ``base_url + "/oauth/authorize"``).
    authorize_url: str = ""
    #: when True, every refresh returns a new refresh token and spends the old one;
    #: when False, the response has no ``refresh_token`` and the old one stays valid.
    rotate_refresh_tokens: bool = True
    #: when True, authorization responses (success and redirected errors) carry ``iss``.
    send_iss: bool = True
    #: metadata ``authorization_response_iss_parameter_supported``; None -> ``send_iss``.
    advertise_iss: bool | None = None
    #: lifetime (seconds) of authorization codes.
    code_expires_in: int = 600
    #: called in the request's thread around each token request's handling, as
    #: ``hook("before", params)`` (nothing spent yet) and ``hook("after", params)``
    #: (a refresh token is spent and its successor issued, the answer not yet sent):
    #: a test blocks in it to hold a token request at either point.
    token_hook: Callable[[str, dict[str, str]], None] | None = None
    #: the one ``aud`` RFC 7523 assertions must name (client auth and the JWT bearer grant); "" -> token_url
    assertion_audience: str = ""
    #: RFC 7523 §2.1: assertion issuers that are not client ids (a Kubernetes API server) -> client id
    assertion_issuers: dict[str, str] = field(default_factory=dict)

    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _clients: dict[str, _Client] = field(default_factory=dict, init=False, repr=False)
    _users: dict[str, _User] = field(default_factory=dict, init=False, repr=False)
    _tokens: dict[str, _Token] = field(default_factory=dict, init=False, repr=False)
    _issued: list[str] = field(default_factory=list, init=False, repr=False)
    _pending_expiry: dict[str, tuple[float, int]] = field(default_factory=dict, init=False, repr=False)
    _requests: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)
    _refresh_tokens: dict[str, _RefreshToken] = field(default_factory=dict, init=False, repr=False)
    _revoked_families: set[str] = field(default_factory=set, init=False, repr=False)
    _reuse_count: int = field(default=0, init=False, repr=False)
    _code_reuse_count: int = field(default=0, init=False, repr=False)
    _codes: dict[str, _AuthCode] = field(default_factory=dict, init=False, repr=False)
    _sessions: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _authorize_log: list[dict[str, str]] = field(default_factory=list, init=False, repr=False)
    _jtis: set[str] = field(default_factory=set, init=False, repr=False)
    _assertions: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)
    _httpd: BaseWSGIServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _app: Flask = field(init=False, repr=False)
    _wsgi: _WSGIApp = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.issuer = self.issuer or self.base_url
        self.authorize_url = self.authorize_url or self.base_url + AUTHORIZE_PATH
        self._app = self._build_app()
        self._wsgi = self._middleware(self._app.wsgi_app)

    # ------------------------------------------------------------------ public API

    def add_client(
        self,
        client_id: str,
        client_secret: str | None,
        *,
        auth_method: str = "client_secret_basic",
        grant_types: tuple[str, ...] = ("client_credentials", "password"),
        scope: str = "read write",
        redirect_uris: tuple[str, ...] = (),
        public_key: Any = None,
    ) -> None:
        """Register (or replace) a client.

        ``auth_method`` is the only token endpoint auth method the client may use:
        ``client_secret_basic``, ``client_secret_post``, ``none`` (public client,
        ``client_secret`` should be None; any grant but client_credentials),
        ``private_key_jwt`` (with ``public_key``: a cryptography public key or a
        joserfc key) or ``client_secret_jwt`` (the secret is the HMAC key).
        ``grant_types`` may contain ``client_credentials``, ``password``,
        ``authorization_code`` and ``refresh_token``; using another one gives
        ``unauthorized_client``.  A refresh token is issued (by the password or
        authorization_code grant) only if ``refresh_token`` is among them.
        ``scope`` lists the scopes the client may request (``"*"`` allows any);
        requesting others gives ``invalid_scope``.  ``redirect_uris`` are matched
        exactly, except ``http://127.0.0.1/...`` / ``http://[::1]/...`` which match
        any port (RFC 8252 7.3); ``localhost`` is NOT treated as loopback.
        """
        if auth_method not in AUTH_METHODS:
            raise ValueError(f"unsupported auth_method {auth_method!r}")
        if auth_method == "private_key_jwt" and public_key is None:
            raise ValueError("private_key_jwt needs a public_key")
        if auth_method not in ("none", "private_key_jwt") and not client_secret:
            raise ValueError(f"auth_method {auth_method!r} needs a client_secret")
        if isinstance(cast(object, redirect_uris), str):
            raise TypeError("redirect_uris must be a tuple of strings, not a string")
        jwt_key = _jwt_key(public_key, client_secret if auth_method == "client_secret_jwt" else None)
        client = _Client(client_id, client_secret, auth_method, grant_types, scope, redirect_uris, jwt_key)
        with self._lock:
            self._clients[client_id] = client

    def add_user(self, username: str, password: str) -> None:
        """Register (or replace) a resource owner (password grant and ``/login``)."""
        with self._lock:
            self._users[username] = _User(username, password)

    def token_requests(self, grant_type: str | None = None) -> int:
        """Number of POSTs to either token URL (all, or with that ``grant_type``)."""
        with self._lock:
            if grant_type is None:
                return len(self._requests)
            return sum(1 for r in self._requests if r["grant_type"] == grant_type)

    def all_requests(self) -> list[dict[str, Any]]:
        """Every recorded token request (same shape as :meth:`last_request`)."""
        with self._lock:
            return copy.deepcopy(self._requests)

    def issued(self) -> list[str]:
        """Access tokens issued so far, oldest first."""
        with self._lock:
            return list(self._issued)

    def is_valid(self, access_token: str) -> bool:
        """True if the token was issued here and is neither revoked (itself or its
        grant family) nor expired."""
        with self._lock:
            token = self._tokens.get(access_token)
            return (
                token is not None
                and not token.is_revoked()
                and not token.is_expired()
                and token.family not in self._revoked_families
            )

    def revoke(self, access_token: str) -> None:
        """Revoke one issued token (KeyError if it was never issued here)."""
        with self._lock:
            self._tokens[access_token].revoked = True

    def revoke_all(self, *, refresh_tokens: bool = False) -> None:
        """Revoke every issued access token (and, if asked, every refresh token).

        By default refresh tokens stay valid, so a client can recover by refreshing.
        """
        with self._lock:
            for token in self._tokens.values():
                token.revoked = True
            if refresh_tokens:
                for rt in self._refresh_tokens.values():
                    rt.revoked = True

    # -------------------------------------------------------- refresh tokens

    def issue_refresh_token(self, client_id: str, scope: str | None = None, user: str = "alice") -> str:
        """Mint a refresh token for ``client_id`` directly (a "seed" pasted into a
        config), starting a new grant family.  ``scope`` None -> the client's
        registered scope (``""`` if that is ``"*"``).  ``user`` need not be
        registered.  KeyError if the client is unknown.  The client still needs
        ``refresh_token`` in its grant_types to use it (else unauthorized_client).
        """
        with self._lock:
            client = self._clients[client_id]
            account = self._users.get(user) or _User(user, "")
            if scope is None:
                scope = "" if "*" in (scope_to_list(client.scope) or []) else client.scope
            return self._new_refresh_token(client, account, scope, secrets.token_hex(8))

    def issued_refresh_tokens(self) -> list[str]:
        """Every refresh token issued so far (seeds included, spent or not), oldest first."""
        with self._lock:
            return list(self._refresh_tokens)

    def refresh_tokens_valid(self) -> list[str]:
        """Refresh tokens that are currently usable (not spent, not revoked), oldest first."""
        with self._lock:
            return [rt for rt, rec in self._refresh_tokens.items() if self._rt_usable(rec)]

    def reuse_detected(self) -> int:
        """How many times a spent refresh token was presented (each revoked its family)."""
        with self._lock:
            return self._reuse_count

    def code_reuse_detected(self) -> int:
        """How many times an already exchanged authorization code was presented
        (each revoked the tokens issued for it, RFC 6749 4.1.2)."""
        with self._lock:
            return self._code_reuse_count

    def revoke_refresh_token(self, refresh_token: str) -> None:
        """Revoke one refresh token (KeyError if unknown).  Presenting it then gives
        invalid_grant, without reuse detection and without revoking its family."""
        with self._lock:
            self._refresh_tokens[refresh_token].revoked = True

    def revoke_family(self, token: str) -> None:
        """Revoke the whole grant family of an access or refresh token (KeyError if
        unknown or if the token has no family, e.g. client_credentials)."""
        with self._lock:
            rec: _Token | _RefreshToken | None = self._refresh_tokens.get(token) or self._tokens.get(token)
            if rec is None or rec.family is None:
                raise KeyError("no grant family for that token")
            self._revoked_families.add(rec.family)

    # -------------------------------------------------------- authorization endpoint

    def authorize_requests(self) -> int:
        """Number of ``GET /oauth/authorize`` requests (login-form answers included)."""
        with self._lock:
            return len(self._authorize_log)

    def last_authorize_params(self) -> dict[str, str]:
        """Query parameters (first value of each) of the latest authorize request.

        Raises LookupError if none arrived yet.
        """
        with self._lock:
            if not self._authorize_log:
                raise LookupError("no authorization request received yet")
            return dict(self._authorize_log[-1])

    def metadata(self) -> dict[str, Any]:
        """The RFC 8414 metadata served at the two ``/.well-known`` URLs."""
        advertise = self.send_iss if self.advertise_iss is None else self.advertise_iss
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.authorize_url,
            "token_endpoint": self.token_url,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": list(GRANT_TYPES_SUPPORTED),
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "token_endpoint_auth_signing_alg_values_supported": list(jwt_assertions.ALGORITHMS),
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": advertise,
        }

    def last_request(self) -> dict[str, Any]:
        """The most recent token request.

        Keys: ``method``, ``path``, ``url``, ``query`` (dict), ``headers`` (dict,
        lower-case names), ``content_type`` (media type of the ORIGINAL body, e.g.
        ``"application/json"``), ``body`` (original body text), ``form`` (dict if the
        body was a form, else None), ``json`` (parsed object if the body was JSON,
        else None), ``params`` (the parameters Authlib saw, JSON already converted),
        ``grant_type``, ``client_id`` (from Basic auth or the body),
        ``auth_method`` (``client_secret_basic`` if an ``Authorization: Basic``
        header was sent, else ``client_secret_post`` if ``client_secret`` was in the
        body, else ``none`` if ``client_id`` was, else None), ``status`` (HTTP
        status of the response).

        Raises LookupError if no token request arrived yet.
        """
        with self._lock:
            if not self._requests:
                raise LookupError("no token request received yet")
            return copy.deepcopy(self._requests[-1])

    def assertions(self) -> list[dict[str, Any]]:
        """Every RFC 7523 assertion verified: ``{"use": method or grant, "header": {...}, "claims": {...}}``."""
        with self._lock:
            return copy.deepcopy(self._assertions)

    def audiences(self) -> list[str]:
        return [self.assertion_audience or self.token_url]

    def _new_jti(self, key: str) -> bool:
        with self._lock:
            if key in self._jtis:
                return False
            self._jtis.add(key)
            return True

    def _record_assertion(self, use: str, header: dict[str, Any], claims: dict[str, Any]) -> None:
        with self._lock:
            self._assertions.append({"use": use, "header": dict(header), "claims": dict(claims)})

    def stop(self) -> None:
        """Shut the server down (idempotent)."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    # ------------------------------------------------------------------ internals

    def _lookup_user(self, username: str, password: str) -> _User | None:
        with self._lock:
            user = self._users.get(username)
        if user is None or not hmac.compare_digest(user.password.encode(), password.encode()):
            return None
        return user

    def _query_client(self, client_id: str) -> _Client | None:
        with self._lock:
            return self._clients.get(client_id)

    def _rt_usable(self, rec: _RefreshToken) -> bool:
        # Caller holds the lock.
        return not rec.spent and not rec.revoked and rec.family not in self._revoked_families

    def _new_refresh_token(self, client: _Client, user: _User, scope: str, family: str) -> str:
        # Caller holds the lock.
        value = secrets.token_urlsafe(32)
        self._refresh_tokens[value] = _RefreshToken(value, client, user, scope, family)
        return value

    def _active_refresh_token(self, refresh_token: str) -> _RefreshToken | None:
        """The usable record for a presented refresh token; a spent one is a reuse."""
        with self._lock:
            rec = self._refresh_tokens.get(refresh_token)
            if rec is None:
                return None
            if rec.spent:
                self._reuse_count += 1
                self._revoked_families.add(rec.family)
                return None
            return rec if self._rt_usable(rec) else None

    def _claim_refresh_token(self, rec: _RefreshToken) -> bool:
        """Spend a refresh token; False (and a reuse) if it was spent meanwhile."""
        with self._lock:
            if rec.spent:
                self._reuse_count += 1
                self._revoked_families.add(rec.family)
                return False
            if not self._rt_usable(rec):
                return False
            rec.spent = True
            return True

    def _save_code(self, code: _AuthCode) -> None:
        with self._lock:
            self._codes[code.code] = code

    def _active_code(self, code: str, client: _Client) -> _AuthCode | None:
        with self._lock:
            rec = self._codes.get(code)
            if rec is None or rec.client.client_id != client.client_id:
                return None
            if rec.used:
                self._code_reuse_count += 1
                self._revoked_families.add(rec.family)
                return None
            return None if rec.is_expired() else rec

    def _claim_code(self, rec: _AuthCode) -> bool:
        with self._lock:
            if rec.used:
                self._code_reuse_count += 1
                self._revoked_families.add(rec.family)
                return False
            rec.used = True
            return True

    def _session_user(self) -> _User | None:
        sid = flask_request.cookies.get(SESSION_COOKIE)
        if not sid:
            return None
        with self._lock:
            username = self._sessions.get(sid)
            return self._users.get(username) if username is not None else None

    def _generate_token(
        self,
        grant_type: str,
        client: _Client,
        user: _User | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        """Authlib token generator (registered as the "default" generator)."""
        from authlib.oauth2.rfc6750 import BearerTokenGenerator

        # Same scope policy as Authlib's bearer generator (None -> invalid_scope).
        allowed_scope: str = BearerTokenGenerator.get_allowed_scope(client, scope)
        lifetime = self.expires_in if expires_in is None else expires_in
        now = time.time()
        if self.jwt_tokens:
            claims: dict[str, Any] = {
                "iss": self.issuer,
                "sub": user.username if user is not None else client.client_id,
                "client_id": client.client_id,
                "iat": int(now),
                "exp": int(now) + lifetime,
                "jti": secrets.token_hex(8),
            }
            if allowed_scope:
                claims["scope"] = allowed_scope
            audience = flask_request.values.get("audience")
            if audience:
                claims["aud"] = audience
            access_token = _make_hs256_jwt(claims, self.jwt_secret)
        else:
            access_token = secrets.token_urlsafe(32)
        token: dict[str, Any] = {"access_token": access_token, "token_type": self.token_type}
        if not self.jwt_tokens:
            token["expires_in"] = lifetime
        if include_refresh_token and user is not None and client.check_grant_type("refresh_token"):
            token["refresh_token"] = secrets.token_urlsafe(32)
        if allowed_scope:
            token["scope"] = allowed_scope
        with self._lock:
            self._pending_expiry[access_token] = (now, lifetime)
        return token

    def _save_token(self, token: dict[str, Any], request: Any) -> None:
        """Authlib ``save_token`` hook: persist the issued token in memory."""
        access_token = token["access_token"]
        parent = request.refresh_token if isinstance(request.refresh_token, _RefreshToken) else None
        code = request.authorization_code if isinstance(request.authorization_code, _AuthCode) else None
        family: str | None = None
        if parent is not None:
            family = parent.family
        elif code is not None:
            family = code.family
        elif "refresh_token" in token:
            family = secrets.token_hex(8)
        with self._lock:
            issued_at, lifetime = self._pending_expiry.pop(access_token)
            self._tokens[access_token] = _Token(
                access_token=access_token,
                client=request.client,
                user=request.user,
                grant_type=request.payload.grant_type,
                scope=token.get("scope", ""),
                issued_at=issued_at,
                expires_in=lifetime,
                family=family,
            )
            self._issued.append(access_token)
            if "refresh_token" in token and family is not None:
                # RFC 6749 6: a rotated refresh token keeps the original scope even
                # if this refresh asked for less.
                scope = parent.scope if parent is not None else token.get("scope", "")
                rec = _RefreshToken(token["refresh_token"], request.client, request.user, scope, family)
                self._refresh_tokens[rec.refresh_token] = rec

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        app.config["OAUTH2_SCOPES_SUPPORTED"] = None
        authorization = _AuthorizationServer(app, query_client=self._query_client, save_token=self._save_token)
        authorization.oauth_test_server = self
        authorization.register_token_generator("default", self._generate_token)
        authorization.register_grant(_ClientCredentialsGrant)
        authorization.register_grant(_PasswordGrant)
        authorization.register_grant(_RefreshTokenGrant)
        authorization.register_grant(_AuthorizationCodeGrant, [_S256CodeChallenge(required=True)])
        authorization.register_extension(_IssuerParameter(self))
        jwt_assertions.register(authorization, self)

        def token_endpoint() -> Any:
            return authorization.create_token_response()

        def authorize_endpoint() -> Any:
            with self._lock:
                self._authorize_log.append(_first_values(list(flask_request.args.items(multi=True))))
            try:
                grant = authorization.get_consent_grant(end_user=None)
            except OAuth2Error as error:
                # Redirected (client + redirect_uri valid) or JSON 400 (they are not).
                return self._add_iss(authorization.handle_error_response(None, error))
            user = self._session_user()
            if user is None:
                next_url = flask_request.full_path if flask_request.query_string else flask_request.path
                return Response(_login_page(next_url), 200, {"Content-Type": "text/html; charset=utf-8"})
            # Auto-consent; Authlib adds code + state, _IssuerParameter adds iss.
            return authorization.create_authorization_response(grant_user=user, grant=grant)

        def login_endpoint() -> Any:
            next_url = flask_request.values.get("next") or AUTHORIZE_PATH
            if not next_url.startswith("/") or next_url.startswith("//"):
                next_url = AUTHORIZE_PATH  # no open redirects
            if flask_request.method == "GET":
                return Response(_login_page(next_url), 200, {"Content-Type": "text/html; charset=utf-8"})
            username = flask_request.form.get("username", "")
            user = self._lookup_user(username, flask_request.form.get("password", ""))
            if user is None:
                page = _login_page(next_url, "Invalid username or password.")
                return Response(page, 401, {"Content-Type": "text/html; charset=utf-8"})
            sid = secrets.token_urlsafe(24)
            with self._lock:
                self._sessions[sid] = user.username
            response = redirect(self.base_url + next_url, 302)
            response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Lax", path="/")
            return response

        def metadata_endpoint() -> Any:
            return Response(json.dumps(self.metadata()), 200, {"Content-Type": "application/json"})

        app.add_url_rule(TOKEN_PATH, "token", token_endpoint, methods=["POST"])
        app.add_url_rule(JSON_TOKEN_PATH, "token_json", token_endpoint, methods=["POST"])
        app.add_url_rule(AUTHORIZE_PATH, "authorize", authorize_endpoint, methods=["GET"])
        app.add_url_rule(LOGIN_PATH, "login", login_endpoint, methods=["GET", "POST"])
        for i, path in enumerate(METADATA_PATHS):
            app.add_url_rule(path, f"metadata{i}", metadata_endpoint, methods=["GET"])
        app.add_url_rule(HEALTH_PATH, "healthz", lambda: "ok", methods=["GET"])
        return app

    def _add_iss(self, response: Response) -> Response:
        """RFC 9207: redirected error responses carry ``iss`` too."""
        if self.send_iss and response.status_code in (302, 303) and response.location:
            response.location = add_params_to_uri(response.location, {"iss": self.issuer})
        return response

    def _middleware(self, app: _WSGIApp) -> _WSGIApp:
        """Record token requests; on the JSON URL, turn JSON bodies into form bodies."""

        def wsgi(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if environ.get("REQUEST_METHOD") != "POST" or path not in (
                TOKEN_PATH,
                JSON_TOKEN_PATH,
            ):
                return app(environ, start_response)

            body = _read_body(environ)
            _replace_body(environ, body)
            content_type = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
            text = body.decode("utf-8", errors="replace")
            record: dict[str, Any] = {
                "method": "POST",
                "path": path,
                "url": self.base_url + path,
                "query": _first_values(parse_qsl(environ.get("QUERY_STRING", ""))),
                "headers": _headers_of(environ),
                "content_type": content_type,
                "body": text,
                "form": None,
                "json": None,
                "params": {},
                "grant_type": None,
                "client_id": None,
                "auth_method": None,
                "status": None,
            }
            error: InvalidRequestError | None = None
            pairs: list[tuple[str, str]] = []
            if content_type == "application/json" or content_type.endswith("+json"):
                try:
                    parsed = json.loads(text) if text.strip() else None
                except ValueError:
                    parsed, error = None, InvalidRequestError("Request body is not valid JSON.")
                record["json"] = parsed
                if isinstance(parsed, dict):
                    for key, value in parsed.items():
                        pairs.extend((str(key), v) for v in _json_value_to_form(value))
                elif error is None:
                    error = InvalidRequestError("Request body must be a JSON object.")
                if path == JSON_TOKEN_PATH:
                    _replace_body(environ, urlencode(pairs).encode())
                    environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
                else:
                    # Plain token endpoint: Authlib gets the JSON untouched and answers
                    # like a real form-only server would (unsupported_grant_type).
                    error = None
            else:
                pairs = parse_qsl(text, keep_blank_values=True)
                record["form"] = _first_values(pairs)
            params = _first_values(pairs)
            # What Authlib sees: nothing for JSON sent to the form-only endpoint.
            record["params"] = {} if path == TOKEN_PATH and record["json"] is not None else params
            record["grant_type"] = params.get("grant_type")

            authz = record["headers"].get("authorization", "")
            basic_id: str | None = None
            if authz[:6].lower() == "basic ":
                record["auth_method"] = "client_secret_basic"
                try:
                    decoded = base64.b64decode(authz[6:].strip()).decode("utf-8")
                    basic_id = unquote(decoded.split(":", 1)[0])
                except (ValueError, UnicodeDecodeError):
                    basic_id = None
            elif "client_assertion" in params:
                record["auth_method"] = "client_assertion"
            elif "client_secret" in params:
                record["auth_method"] = "client_secret_post"
            elif "client_id" in params:
                record["auth_method"] = "none"
            record["client_id"] = basic_id or params.get("client_id")

            with self._lock:
                self._requests.append(record)

            def recording_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                with self._lock:
                    record["status"] = int(status.split()[0])
                if exc_info is not None:
                    return start_response(status, headers, exc_info)
                return start_response(status, headers)

            if error is not None:
                return _error_response(recording_start_response, error)
            hook = self.token_hook
            if hook is None:
                return app(environ, recording_start_response)
            hook("before", params)
            body_out = list(app(environ, recording_start_response))  # handled: spent and issued
            hook("after", params)
            return body_out

        return wsgi


def _wait_until_ready(base_url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base_url + HEALTH_PATH, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def start_oauth_server() -> OAuthServer:
    """Start a server on 127.0.0.1:<free port>; return once it answers HTTP."""
    app_ref: list[_WSGIApp] = []

    def dispatch(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        return app_ref[0](environ, start_response)

    httpd = make_server("127.0.0.1", 0, dispatch, threaded=True, request_handler=_QuietRequestHandler)
    port = httpd.server_address[1]
    base_url = f"http://127.0.0.1:{port}"
    server = OAuthServer(
        base_url=base_url,
        token_url=base_url + TOKEN_PATH,
        json_token_url=base_url + JSON_TOKEN_PATH,
    )
    app_ref.append(server._wsgi)
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"oauth-test-server-{port}",
        daemon=True,
    )
    server._httpd = httpd
    server._thread = thread
    thread.start()
    try:
        _wait_until_ready(base_url)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def oauth_server() -> Iterator[OAuthServer]:
    """A freshly started :class:`OAuthServer`, stopped after the test."""
    server = start_oauth_server()
    try:
        yield server
    finally:
        server.stop()
