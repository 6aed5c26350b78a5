"""Self-test of the Authlib-based OAuth test server in tests/support/oauth_server.py."""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING, Any

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

    resp = post({"grant_type": "authorization_code", "code": "x"})
    assert (resp.status_code, resp.json()["error"]) == (400, "unsupported_grant_type")
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
