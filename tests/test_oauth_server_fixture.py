"""Self-test of the Authlib-based OAuth test server in tests/support/oauth_server.py."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

if TYPE_CHECKING:
    from tests.support.oauth_server import OAuthServer

# Registers the ``oauth_server`` fixture (importing it directly would trip ruff F811).
pytest_plugins = ["tests.support.oauth_server"]


def _jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload))
    return claims


def test_client_credentials_basic_auth(oauth_server: OAuthServer) -> None:
    oauth_server.add_client("svc", "s3cret")
    resp = requests.post(
        oauth_server.token_url,
        data={"grant_type": "client_credentials", "scope": "read"},
        auth=("svc", "s3cret"),
        timeout=5,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "read"
    assert oauth_server.issued() == [body["access_token"]]
    assert oauth_server.is_valid(body["access_token"])
    assert resp.headers["Cache-Control"] == "no-store"

    last = oauth_server.last_request()
    assert last["auth_method"] == "client_secret_basic"
    assert last["headers"]["authorization"].startswith("Basic ")
    assert "client_secret" not in last["form"]
    assert last["client_id"] == "svc"
    assert last["content_type"] == "application/x-www-form-urlencoded"
    assert last["status"] == 200


def test_client_credentials_post_auth_and_extra_params(oauth_server: OAuthServer) -> None:
    oauth_server.add_client("svc", "s3cret", auth_method="client_secret_post")
    resp = requests.post(
        oauth_server.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": "svc",
            "client_secret": "s3cret",
            "audience": "https://api.example",
            "resource": "https://api.example/v1",
        },
        timeout=5,
    )
    assert resp.status_code == 200, resp.text
    assert "scope" not in resp.json()
    last = oauth_server.last_request()
    assert last["auth_method"] == "client_secret_post"
    assert "authorization" not in last["headers"]
    assert last["form"]["audience"] == "https://api.example"
    assert last["params"]["resource"] == "https://api.example/v1"

    # The client is registered for client_secret_post only; Basic is refused.
    resp = requests.post(
        oauth_server.token_url,
        data={"grant_type": "client_credentials"},
        auth=("svc", "s3cret"),
        timeout=5,
    )
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


def test_wrong_secret_is_invalid_client(oauth_server: OAuthServer) -> None:
    oauth_server.add_client("svc", "s3cret")
    resp = requests.post(
        oauth_server.token_url,
        data={"grant_type": "client_credentials"},
        auth=("svc", "wrong"),
        timeout=5,
    )
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    assert "WWW-Authenticate" in resp.headers
    assert oauth_server.issued() == []
    assert oauth_server.token_requests() == 1
    assert oauth_server.last_request()["status"] == 401


def test_other_authlib_errors(oauth_server: OAuthServer) -> None:
    oauth_server.add_client("svc", "s3cret", grant_types=("client_credentials",))
    oauth_server.add_user("alice", "pw")

    def post(data: dict[str, str]) -> requests.Response:
        return requests.post(oauth_server.token_url, data=data, auth=("svc", "s3cret"), timeout=5)

    resp = post({"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": "x"})
    assert (resp.status_code, resp.json()["error"]) == (400, "unsupported_grant_type")
    # Supported grant types the client is not registered for.
    resp = post({"grant_type": "authorization_code", "code": "x"})
    assert (resp.status_code, resp.json()["error"]) == (400, "unauthorized_client")
    resp = post({"grant_type": "refresh_token", "refresh_token": "x"})
    assert (resp.status_code, resp.json()["error"]) == (400, "unauthorized_client")
    resp = post({"grant_type": "password", "username": "alice", "password": "pw"})
    assert (resp.status_code, resp.json()["error"]) == (400, "unauthorized_client")
    resp = post({"grant_type": "client_credentials", "scope": "admin"})
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_scope")

    oauth_server.add_client("app", None, auth_method="none")
    resp = requests.post(
        oauth_server.token_url,
        data={"grant_type": "password", "client_id": "app", "username": "alice", "password": "no"},
        timeout=5,
    )
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")
    # client_credentials is for confidential clients only.
    resp = requests.post(
        oauth_server.token_url,
        data={"grant_type": "client_credentials", "client_id": "app"},
        timeout=5,
    )
    assert resp.json()["error"] == "invalid_client"
    assert oauth_server.issued() == []


def test_password_grant_public_client_form_and_json(oauth_server: OAuthServer) -> None:
    oauth_server.add_client("app", None, auth_method="none")
    oauth_server.add_user("alice", "pw")
    form = {
        "grant_type": "password",
        "client_id": "app",
        "username": "alice",
        "password": "pw",
        "scope": "read write",
    }

    resp = requests.post(oauth_server.token_url, data=form, timeout=5)
    assert resp.status_code == 200, resp.text
    assert resp.json()["scope"] == "read write"
    assert oauth_server.last_request()["auth_method"] == "none"

    resp = requests.post(oauth_server.json_token_url, json={**form, "extra": 1}, timeout=5)
    assert resp.status_code == 200, resp.text
    last = oauth_server.last_request()
    assert last["content_type"] == "application/json"
    assert last["json"]["username"] == "alice"
    assert last["form"] is None
    assert last["params"]["extra"] == "1"
    assert last["path"] == "/oauth/token-json"

    # The form-only endpoint does not understand JSON, like a real server.
    resp = requests.post(oauth_server.token_url, json=form, timeout=5)
    assert (resp.status_code, resp.json()["error"]) == (400, "unsupported_grant_type")
    # Malformed JSON on the JSON endpoint is an Authlib invalid_request.
    resp = requests.post(
        oauth_server.json_token_url,
        data="[1, 2]",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_request")

    assert len(oauth_server.issued()) == 2
    assert oauth_server.token_requests("password") == 3
    assert oauth_server.token_requests() == 4


def test_revoke_and_expiry(oauth_server: OAuthServer) -> None:
    oauth_server.add_client("svc", "s3cret")

    def fetch() -> str:
        resp = requests.post(
            oauth_server.token_url,
            data={"grant_type": "client_credentials"},
            auth=("svc", "s3cret"),
            timeout=5,
        )
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["access_token"]
        return token

    first, second = fetch(), fetch()
    assert first != second
    oauth_server.revoke(first)
    assert not oauth_server.is_valid(first)
    assert oauth_server.is_valid(second)
    oauth_server.revoke_all()
    assert not oauth_server.is_valid(second)
    assert not oauth_server.is_valid("never-issued")

    oauth_server.expires_in = 1
    short = fetch()
    assert oauth_server.last_request()["status"] == 200
    assert oauth_server.is_valid(short)
    time.sleep(1.1)
    assert not oauth_server.is_valid(short)
    assert oauth_server.issued() == [first, second, short]


def test_token_type_and_jwt_mode(oauth_server: OAuthServer) -> None:
    oauth_server.add_client("svc", "s3cret")
    oauth_server.token_type = "bearer"
    resp = requests.post(
        oauth_server.token_url,
        data={"grant_type": "client_credentials"},
        auth=("svc", "s3cret"),
        timeout=5,
    )
    assert resp.json()["token_type"] == "bearer"

    oauth_server.token_type = "Bearer"
    oauth_server.jwt_tokens = True
    oauth_server.expires_in = 120
    before = int(time.time())
    resp = requests.post(
        oauth_server.token_url,
        data={"grant_type": "client_credentials", "audience": "api"},
        auth=("svc", "s3cret"),
        timeout=5,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert "expires_in" not in body
    token = body["access_token"]
    assert token.count(".") == 2
    claims = _jwt_claims(token)
    assert before + 120 <= claims["exp"] <= int(time.time()) + 120
    assert claims["aud"] == "api"
    assert claims["client_id"] == "svc"
    assert oauth_server.is_valid(token)


def test_counters(oauth_server: OAuthServer) -> None:
    oauth_server.add_client("svc", "s3cret")
    oauth_server.add_user("bob", "pw")
    assert oauth_server.token_requests() == 0
    for _ in range(3):
        requests.post(
            oauth_server.token_url,
            data={"grant_type": "client_credentials"},
            auth=("svc", "s3cret"),
            timeout=5,
        )
    requests.post(
        oauth_server.json_token_url,
        json={"grant_type": "password", "username": "bob", "password": "pw"},
        auth=("svc", "s3cret"),
        timeout=5,
    )
    requests.get(oauth_server.base_url + "/healthz", timeout=5)  # not a token request
    assert oauth_server.token_requests() == 4
    assert oauth_server.token_requests("client_credentials") == 3
    assert oauth_server.token_requests("password") == 1
    assert oauth_server.token_requests("refresh_token") == 0
    assert len(oauth_server.issued()) == 4


def test_start_and_stop_without_fixture() -> None:
    from tests.support.oauth_server import start_oauth_server

    server = start_oauth_server()
    server.add_client("svc", "s3cret")
    resp = requests.post(
        server.token_url,
        data={"grant_type": "client_credentials"},
        auth=("svc", "s3cret"),
        timeout=5,
    )
    assert resp.status_code == 200
    server.stop()
    server.stop()  # idempotent
    try:
        requests.post(server.token_url, data={"grant_type": "client_credentials"}, timeout=1)
    except requests.ConnectionError:
        pass
    else:
        raise AssertionError("server still answering after stop()")


# --------------------------------------------------------------------------- refresh tokens


def _refresh(
    server: OAuthServer, rt: str, auth: tuple[str, str] | None = ("app", "s3cret"), **extra: str
) -> requests.Response:
    return requests.post(
        server.token_url, data={"grant_type": "refresh_token", "refresh_token": rt, **extra}, auth=auth, timeout=5
    )


def test_refresh_rotation_and_reuse_detection(oauth_server: OAuthServer) -> None:
    oauth_server.add_client("app", "s3cret", grant_types=("refresh_token",))
    seed = oauth_server.issue_refresh_token("app", scope="read")
    other = oauth_server.issue_refresh_token("app")  # a separate grant family
    assert oauth_server.refresh_tokens_valid() == [seed, other]

    resp = _refresh(oauth_server, seed)
    assert resp.status_code == 200, resp.text
    first = resp.json()
    assert first["refresh_token"] not in (seed, other)
    assert (first["scope"], first["expires_in"], first["token_type"]) == ("read", 3600, "Bearer")
    resp = _refresh(oauth_server, first["refresh_token"])
    assert resp.status_code == 200, resp.text
    second = resp.json()
    assert second["refresh_token"] not in (seed, first["refresh_token"])
    assert oauth_server.refresh_tokens_valid() == [other, second["refresh_token"]]
    assert oauth_server.is_valid(first["access_token"]) and oauth_server.is_valid(second["access_token"])
    assert oauth_server.reuse_detected() == 0

    # Replaying a spent refresh token: invalid_grant, and the whole family is revoked.
    resp = _refresh(oauth_server, seed)
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")
    assert oauth_server.reuse_detected() == 1
    assert not oauth_server.is_valid(first["access_token"])
    assert not oauth_server.is_valid(second["access_token"])
    assert oauth_server.refresh_tokens_valid() == [other]
    resp = _refresh(oauth_server, second["refresh_token"])  # revoked, not spent: no new reuse
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")
    assert oauth_server.reuse_detected() == 1

    # Other families are untouched.
    resp = _refresh(oauth_server, other)
    assert resp.status_code == 200, resp.text
    assert resp.json()["scope"] == "read write"
    assert oauth_server.token_requests("refresh_token") == 5
    assert oauth_server.issued_refresh_tokens()[:4] == [seed, other, first["refresh_token"], second["refresh_token"]]
    assert len(oauth_server.issued()) == 3


def test_refresh_without_rotation_and_errors(oauth_server: OAuthServer) -> None:
    oauth_server.add_client("app", "s3cret", grant_types=("refresh_token",))
    oauth_server.add_client("other", "s3cret", grant_types=("refresh_token",))
    oauth_server.add_client("public", None, auth_method="none", grant_types=("password", "refresh_token"))
    oauth_server.add_user("alice", "pw")
    oauth_server.rotate_refresh_tokens = False
    oauth_server.expires_in = 42
    seed = oauth_server.issue_refresh_token("app", scope="read write", user="bob")

    for _ in range(2):
        resp = _refresh(oauth_server, seed)
        assert resp.status_code == 200, resp.text
        assert "refresh_token" not in resp.json()
        assert resp.json()["expires_in"] == 42
    assert oauth_server.refresh_tokens_valid() == [seed]
    assert oauth_server.reuse_detected() == 0

    resp = _refresh(oauth_server, seed, scope="read")  # narrowing is allowed
    assert resp.json()["scope"] == "read"
    resp = _refresh(oauth_server, seed, scope="admin")
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_scope")
    resp = _refresh(oauth_server, seed, auth=("other", "s3cret"))  # not this client's token
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")
    resp = _refresh(oauth_server, "never-issued")
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")
    oauth_server.revoke_refresh_token(seed)
    resp = _refresh(oauth_server, seed)
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")
    assert oauth_server.reuse_detected() == 0
    assert oauth_server.refresh_tokens_valid() == []

    # The password grant issues a refresh token only to clients registered for it.
    oauth_server.rotate_refresh_tokens = True
    resp = requests.post(
        oauth_server.token_url,
        data={"grant_type": "password", "client_id": "public", "username": "alice", "password": "pw"},
        timeout=5,
    )
    assert resp.status_code == 200, resp.text
    rt = resp.json()["refresh_token"]
    resp = _refresh(oauth_server, rt, auth=None, client_id="public")
    assert resp.status_code == 200, resp.text
    assert resp.json()["refresh_token"] != rt
    oauth_server.add_client("plain", None, auth_method="none")
    resp = requests.post(
        oauth_server.token_url,
        data={"grant_type": "password", "client_id": "plain", "username": "alice", "password": "pw"},
        timeout=5,
    )
    assert "refresh_token" not in resp.json()

    # revoke_all() leaves refresh tokens usable unless asked.
    oauth_server.revoke_all()
    assert len(oauth_server.refresh_tokens_valid()) == 1
    oauth_server.revoke_all(refresh_tokens=True)
    assert oauth_server.refresh_tokens_valid() == []


# --------------------------------------------------------------------------- authorization code + PKCE

REDIRECT_URI = "http://127.0.0.1/callback"


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a.get("action", "")
        elif tag == "input" and "name" in a:
            self.fields[a["name"]] = a.get("value", "")


@contextmanager
def _callback_listener() -> Iterator[tuple[int, list[str]]]:
    """A tiny HTTP server standing in for the client's loopback redirect URI."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = b"done"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def _authorize_params(challenge: str, redirect_uri: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "cli",
        "redirect_uri": redirect_uri,
        "scope": "read",
        "state": "st-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }


def _exchange(server: OAuthServer, code: str, verifier: str, redirect_uri: str) -> requests.Response:
    data = {
        "grant_type": "authorization_code",
        "client_id": "cli",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    return requests.post(server.token_url, data=data, timeout=5)


def test_authorization_code_pkce_flow(oauth_server: OAuthServer) -> None:
    oauth_server.add_user("alice", "pw")
    oauth_server.add_client(
        "cli",
        None,
        auth_method="none",
        grant_types=("authorization_code", "refresh_token"),
        redirect_uris=(REDIRECT_URI,),
    )
    verifier, challenge = _pkce()
    browser = requests.Session()

    with _callback_listener() as (port, hits):
        redirect_uri = f"http://127.0.0.1:{port}/callback"
        resp = browser.get(oauth_server.authorize_url, params=_authorize_params(challenge, redirect_uri), timeout=5)
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        form = _FormParser()
        form.feed(resp.text)
        assert {"username", "password", "next"} <= set(form.fields)
        # Log in; requests follows /login -> /oauth/authorize -> the loopback callback.
        resp = browser.post(
            urljoin(resp.url, form.action),
            data={**form.fields, "username": "alice", "password": "pw"},
            timeout=5,
        )
        assert resp.status_code == 200 and resp.text == "done"
    assert len(hits) == 1
    callback = urlsplit(hits[0])
    assert callback.path == "/callback"
    query = {k: v[0] for k, v in parse_qs(callback.query).items()}
    assert query["state"] == "st-123"
    assert query["iss"] == oauth_server.base_url == oauth_server.issuer
    assert oauth_server.authorize_requests() == 2
    assert oauth_server.last_authorize_params()["code_challenge"] == challenge
    assert oauth_server.last_authorize_params()["redirect_uri"] == redirect_uri

    # Wrong verifier: invalid_grant (the code is not burnt by that).
    resp = _exchange(oauth_server, query["code"], _pkce()[0], redirect_uri)
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")
    resp = _exchange(oauth_server, query["code"], verifier, redirect_uri)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["token_type"], body["scope"], body["expires_in"]) == ("Bearer", "read", 3600)
    assert oauth_server.is_valid(body["access_token"])
    assert oauth_server.refresh_tokens_valid() == [body["refresh_token"]]
    assert oauth_server.token_requests("authorization_code") == 2

    # Already logged in: the next authorization redirects at once (read the Location).
    verifier2, challenge2 = _pkce()
    other_port_uri = "http://127.0.0.1:1/callback"
    resp = browser.get(
        oauth_server.authorize_url,
        params=_authorize_params(challenge2, other_port_uri, state="s2"),
        allow_redirects=False,
        timeout=5,
    )
    assert resp.status_code == 302
    location = urlsplit(resp.headers["Location"])
    assert (location.netloc, location.path) == ("127.0.0.1:1", "/callback")
    query2 = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert (query2["state"], query2["iss"]) == ("s2", oauth_server.base_url)
    resp = _exchange(oauth_server, query2["code"], verifier2, redirect_uri)  # redirect_uri mismatch
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")
    resp = _exchange(oauth_server, query2["code"], "x" * 10, other_port_uri)  # malformed verifier
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_request")

    # Replaying the exchanged code: invalid_grant, and its tokens are revoked.
    resp = _exchange(oauth_server, query["code"], verifier, redirect_uri)
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")
    assert oauth_server.code_reuse_detected() == 1
    assert not oauth_server.is_valid(body["access_token"])
    assert oauth_server.refresh_tokens_valid() == []


def test_authorize_errors_and_switches(oauth_server: OAuthServer) -> None:
    oauth_server.add_user("alice", "pw")
    oauth_server.add_client(
        "cli", "s3cret", grant_types=("authorization_code",), redirect_uris=(REDIRECT_URI, "https://app.example/cb")
    )
    oauth_server.add_client("cc", "s3cret", redirect_uris=(REDIRECT_URI,))
    verifier, challenge = _pkce()
    browser = requests.Session()

    def authorize(**params: str) -> requests.Response:
        return browser.get(oauth_server.authorize_url, params=params, allow_redirects=False, timeout=5)

    def redirected_error(resp: requests.Response) -> dict[str, str]:
        assert resp.status_code == 302, resp.text
        return {k: v[0] for k, v in parse_qs(urlsplit(resp.headers["Location"]).query).items()}

    # Errors are checked before the login form; with a valid client + redirect_uri
    # they are redirected with state and iss.
    base = _authorize_params(challenge, "http://127.0.0.1:5000/callback")
    no_challenge = {k: v for k, v in base.items() if not k.startswith("code_challenge")}
    err = redirected_error(authorize(**no_challenge))
    assert (err["error"], err["state"], err["iss"]) == ("invalid_request", "st-123", oauth_server.base_url)
    assert redirected_error(authorize(**{**base, "code_challenge_method": "plain"}))["error"] == "invalid_request"
    no_method = {k: v for k, v in base.items() if k != "code_challenge_method"}
    assert redirected_error(authorize(**no_method))["error"] == "invalid_request"
    assert redirected_error(authorize(**{**base, "client_id": "cc"}))["error"] == "unauthorized_client"
    assert redirected_error(authorize(**{**base, "scope": "admin"}))["error"] == "invalid_scope"
    assert oauth_server.authorize_requests() == 5

    # Unregistered redirect URIs are never redirected to (RFC 8252: only the port may vary).
    for uri in (
        "http://127.0.0.1:5000/other",
        "http://localhost:5000/callback",
        "https://127.0.0.1/callback",
        "https://app.example:8443/cb",
    ):
        resp = authorize(**{**base, "redirect_uri": uri})
        assert (resp.status_code, resp.json()["error"]) == (400, "invalid_request"), uri
    resp = authorize(**{**base, "client_id": "nobody"})
    assert resp.status_code in (400, 401) and resp.json()["error"] == "invalid_client"

    # Bad password: 401 and the form again, no session.
    resp = browser.post(
        oauth_server.base_url + "/login", data={"username": "alice", "password": "no", "next": "/"}, timeout=5
    )
    assert resp.status_code == 401 and "<form" in resp.text
    assert authorize(**base).status_code == 200  # still the login form
    resp = browser.post(
        oauth_server.base_url + "/login",
        data={"username": "alice", "password": "pw", "next": "/oauth/authorize"},
        allow_redirects=False,
        timeout=5,
    )
    assert resp.status_code == 302

    # send_iss off: no iss; the metadata follows unless advertise_iss is set.
    oauth_server.send_iss = False
    query = redirected_error(authorize(**base))
    assert "iss" not in query and query["state"] == "st-123"
    assert (
        requests.get(oauth_server.base_url + "/.well-known/oauth-authorization-server", timeout=5).json()[
            "authorization_response_iss_parameter_supported"
        ]
        is False
    )
    oauth_server.send_iss = True

    # Confidential client: Basic auth + PKCE; an expired code is invalid_grant.
    resp = requests.post(
        oauth_server.token_url,
        data={
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": base["redirect_uri"],
            "code_verifier": verifier,
        },
        auth=("cli", "s3cret"),
        timeout=5,
    )
    assert resp.status_code == 200, resp.text
    assert "refresh_token" not in resp.json()  # client not registered for refresh_token
    oauth_server.code_expires_in = 0
    code = redirected_error(authorize(**base))["code"]
    resp = requests.post(
        oauth_server.token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": base["redirect_uri"],
            "code_verifier": verifier,
        },
        auth=("cli", "s3cret"),
        timeout=5,
    )
    assert (resp.status_code, resp.json()["error"]) == (400, "invalid_grant")


def test_discovery(oauth_server: OAuthServer) -> None:
    from authlib.oauth2 import rfc8414, rfc9207  # type: ignore[import-untyped]

    docs = [
        requests.get(oauth_server.base_url + path, timeout=5)
        for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")
    ]
    assert all(d.status_code == 200 and d.headers["Content-Type"] == "application/json" for d in docs)
    meta = docs[0].json()
    assert docs[1].json() == meta == oauth_server.metadata()
    assert meta["issuer"] == oauth_server.issuer == oauth_server.base_url
    assert meta["authorization_endpoint"] == oauth_server.authorize_url == oauth_server.base_url + "/oauth/authorize"
    assert meta["token_endpoint"] == oauth_server.token_url
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert {"authorization_code", "refresh_token", "client_credentials", "password"} <= set(
        meta["grant_types_supported"]
    )
    assert meta["authorization_response_iss_parameter_supported"] is True
    rfc8414.AuthorizationServerMetadata(meta).validate(metadata_classes=[rfc9207.AuthorizationServerMetadata])


def test_concurrent_refresh_with_one_token_is_a_reuse(oauth_server: OAuthServer) -> None:
    oauth_server.add_client("app", "s3cret", grant_types=("refresh_token",))
    seed = oauth_server.issue_refresh_token("app")
    barrier = threading.Barrier(4)
    results: list[requests.Response] = []

    def worker() -> None:
        barrier.wait()
        results.append(_refresh(oauth_server, seed))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Exactly one refresh wins; every other one is a reuse that revokes the family
    # (including the winner's new tokens), like oidc-provider.
    assert sorted(r.status_code for r in results) == [200, 400, 400, 400]
    assert oauth_server.reuse_detected() == 3
    winner = next(r.json() for r in results if r.status_code == 200)
    assert not oauth_server.is_valid(winner["access_token"])
    assert oauth_server.refresh_tokens_valid() == []
