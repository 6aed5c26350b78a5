# mypy: disable-error-code="import-untyped,misc"
"""A real OAuth 2.0 authorization server (Authlib + Flask) for tests.

The server runs on ``127.0.0.1`` on a free port, in a background thread, using
werkzeug's threaded development server.  Token requests are handled by Authlib's
own grant classes (:class:`ClientCredentialsGrant` and
:class:`ResourceOwnerPasswordCredentialsGrant`), so success responses and errors
(``invalid_client`` 401, ``invalid_grant`` 400, ``unsupported_grant_type`` 400,
``invalid_scope`` 400, ...) are Authlib's spec-conformant JSON.

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
* ``GET /healthz``: liveness probe used by :func:`start_oauth_server`.

Nothing here writes to stderr: werkzeug request logging is disabled and Authlib's
debug logging (which would include issued tokens) is raised to WARNING, because
the proxy tests grep captured output for secrets.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import pytest
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6749.grants import (
    ClientCredentialsGrant,
    ResourceOwnerPasswordCredentialsGrant,
)
from authlib.oauth2.rfc6749.util import scope_to_list
from flask import Flask
from flask import request as flask_request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = ["OAuthServer", "oauth_server", "start_oauth_server"]

TOKEN_PATH = "/oauth/token"
JSON_TOKEN_PATH = "/oauth/token-json"
HEALTH_PATH = "/healthz"

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
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_endpoint_auth_method = auth_method
        self.grant_types = tuple(grant_types)
        self.scope = scope

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None

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
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        if self.client_secret is None:
            return False
        return hmac.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint == "token":
            return method == self.token_endpoint_auth_method
        return True

    def check_response_type(self, response_type: str) -> bool:
        return False

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
    ) -> None:
        self.access_token = access_token
        self.client = client
        self.user = user
        self.grant_type = grant_type
        self.scope = scope
        self.issued_at = issued_at
        self.expires_in = expires_in
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


# --------------------------------------------------------------------------- grants

# Order matters only for which method Authlib tries first; each client accepts
# exactly its own ``auth_method`` (see ``_Client.check_endpoint_auth_method``).
_CONFIDENTIAL_METHODS = ["client_secret_basic", "client_secret_post"]


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


class _AuthorizationServer(AuthorizationServer):
    """Authlib's Flask server with a back-reference to the test server."""

    oauth_test_server: OAuthServer


# --------------------------------------------------------------------------- helpers


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

    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _clients: dict[str, _Client] = field(default_factory=dict, init=False, repr=False)
    _users: dict[str, _User] = field(default_factory=dict, init=False, repr=False)
    _tokens: dict[str, _Token] = field(default_factory=dict, init=False, repr=False)
    _issued: list[str] = field(default_factory=list, init=False, repr=False)
    _pending_expiry: dict[str, tuple[float, int]] = field(default_factory=dict, init=False, repr=False)
    _requests: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)
    _httpd: BaseWSGIServer | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _app: Flask = field(init=False, repr=False)
    _wsgi: _WSGIApp = field(init=False, repr=False)

    def __post_init__(self) -> None:
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
    ) -> None:
        """Register (or replace) a client.

        ``auth_method`` is the only token endpoint auth method the client may use:
        ``client_secret_basic``, ``client_secret_post`` or ``none`` (public client,
        ``client_secret`` should be None; password grant only).  ``scope`` lists the
        scopes the client may request (``"*"`` allows any); requesting others gives
        ``invalid_scope``.
        """
        if auth_method not in ("client_secret_basic", "client_secret_post", "none"):
            raise ValueError(f"unsupported auth_method {auth_method!r}")
        if auth_method != "none" and not client_secret:
            raise ValueError(f"auth_method {auth_method!r} needs a client_secret")
        client = _Client(client_id, client_secret, auth_method, grant_types, scope)
        with self._lock:
            self._clients[client_id] = client

    def add_user(self, username: str, password: str) -> None:
        """Register (or replace) a resource owner for the password grant."""
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
        """True if the token was issued here and is neither revoked nor expired."""
        with self._lock:
            token = self._tokens.get(access_token)
            return token is not None and not token.is_revoked() and not token.is_expired()

    def revoke(self, access_token: str) -> None:
        """Revoke one issued token (KeyError if it was never issued here)."""
        with self._lock:
            self._tokens[access_token].revoked = True

    def revoke_all(self) -> None:
        with self._lock:
            for token in self._tokens.values():
                token.revoked = True

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
                "iss": self.base_url,
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
        if allowed_scope:
            token["scope"] = allowed_scope
        with self._lock:
            self._pending_expiry[access_token] = (now, lifetime)
        return token

    def _save_token(self, token: dict[str, Any], request: Any) -> None:
        """Authlib ``save_token`` hook: persist the issued token in memory."""
        access_token = token["access_token"]
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
            )
            self._issued.append(access_token)

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        app.config["OAUTH2_SCOPES_SUPPORTED"] = None
        authorization = _AuthorizationServer(app, query_client=self._query_client, save_token=self._save_token)
        authorization.oauth_test_server = self
        authorization.register_token_generator("default", self._generate_token)
        authorization.register_grant(_ClientCredentialsGrant)
        authorization.register_grant(_PasswordGrant)

        def token_endpoint() -> Any:
            return authorization.create_token_response()

        app.add_url_rule(TOKEN_PATH, "token", token_endpoint, methods=["POST"])
        app.add_url_rule(JSON_TOKEN_PATH, "token_json", token_endpoint, methods=["POST"])
        app.add_url_rule(HEALTH_PATH, "healthz", lambda: "ok", methods=["GET"])
        return app

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
            return app(environ, recording_start_response)

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
