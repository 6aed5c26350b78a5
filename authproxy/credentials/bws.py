"""Bitwarden Secrets Manager: the login and secret calls, their answers checked, and the ``${bws:...}`` resolver.

The access token and cipher strings are ``bwscrypto``'s. Protocol only; the ``bws`` grant (``grants/bws.py``) and the
``${bws:SECRET_ID}`` references of routes.yaml (``Resolver``) are built on it.

What the public Bitwarden SDK does, and so what this module does:

- An access token is ``0.<access_token_id>.<client_secret>:<key>``: version
  ``0``, a UUID, a client secret, and 16 random bytes in base64 (padding
  optional).
- The 16 bytes are stretched into a 64-byte key: HMAC-SHA256 keyed with
  ``bitwarden-accesstoken`` over them (HKDF-Extract), then HKDF-Expand
  (SHA-256, info ``sm-access-token``) to 64 bytes: an AES-256-CBC key and an
  HMAC-SHA256 key, 32 bytes each.
- The identity server is asked ``POST <identity>/connect/token`` with
  ``grant_type=client_credentials``, ``scope=api.secrets``, ``client_id`` (the
  access token id) and ``client_secret``, and a ``Device-Type`` header. Its
  answer holds a JWT ``access_token`` whose ``organization`` claim names the
  organization, and an ``encrypted_payload``: a type-2 cipher string
  (``2.<iv>|<data>|<mac>``, base64 parts, MAC = HMAC-SHA256 over iv + data)
  encrypted with the stretched key, whose JSON ``encryptionKey`` is the
  organization's 64-byte key in base64.
- ``GET <api>/secrets/<id>`` with that JWT as a bearer token answers the
  secret with ``key`` (its name), ``value`` and ``note`` as cipher strings
  under the organization key, and its ``organizationId``.

Nothing here puts a token, a key, or a decrypted value into an exception
message or a ``repr``.
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from authproxy.credentials.bwscrypto import (
    AccessToken,
    SymmetricKey,
    b64_indifferent,
    decrypt,
    decrypt_text,
    derive_shareable_key,
    parse_access_token,
)
from authproxy.credentials.jwtclaims import jwt_claims
from authproxy.credentials.oautherror import describe
from authproxy.credentials.tlsclient import Trust, client_context
from authproxy.net import control
from authproxy.net.parent import Parent
from authproxy.secrecy.redact import REDACTOR
from authproxy.secrecy.secrets import Unresolved

# Where Bitwarden's cloud lives; self-hosted servers give identity_url + api_url.
REGIONS: dict[str, tuple[str, str]] = {
    "us": ("https://identity.bitwarden.com", "https://api.bitwarden.com"),
    "eu": ("https://identity.bitwarden.eu", "https://api.bitwarden.eu"),
}
SCOPE = "api.secrets"
# The SDK's DeviceType::SDK, sent in a Device-Type header.
DEVICE_TYPE_SDK = "21"
USER_AGENT = "authproxy"


__all__ = [
    "REGIONS",
    "AccessToken",
    "BwsError",
    "Login",
    "Resolver",
    "SecretFields",
    "SymmetricKey",
    "SyncClient",
    "decrypt",
    "decrypt_text",
    "derive_shareable_key",
    "login_form",
    "login_headers",
    "organization_key",
    "parse_access_token",
    "read_login",
    "read_secret",
    "secret_url",
    "token_url",
]


class BwsError(Exception):
    """Something went wrong talking to Bitwarden; the message is safe to show."""


# --------------------------------------------------------------------------- protocol


def token_url(identity_url: str) -> str:
    return identity_url.rstrip("/") + "/connect/token"


def secret_url(api_url: str, secret_id: str) -> str:
    return api_url.rstrip("/") + "/secrets/" + quote(secret_id, safe="")


def login_form(token: AccessToken) -> dict[str, str]:
    """The client-credentials body the SDK posts for an access token."""
    return {
        "scope": SCOPE,
        "client_id": token.access_token_id,
        "client_secret": token.client_secret,
        "grant_type": "client_credentials",
    }


def login_headers() -> dict[str, str]:
    return {"Accept": "application/json", "Device-Type": DEVICE_TYPE_SDK, "User-Agent": USER_AGENT}


@dataclass(frozen=True, slots=True, repr=False)
class Login:
    """What the identity server answered, checked."""

    access_token: str  # the JWT
    token_type: Any
    expires_in: Any
    encrypted_payload: str | None
    organization_id: str | None

    def __repr__(self) -> str:
        return f"Login(organization={self.organization_id})"


def read_login(body: dict[str, Any]) -> Login:
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise BwsError("the identity server's answer has no access_token")
    if any(c in access for c in "\r\n"):
        raise BwsError("the identity server's access_token holds a line break")
    payload = body.get("encrypted_payload")
    org = jwt_claims(access).get("organization")
    return Login(
        access_token=access,
        token_type=body.get("token_type"),
        expires_in=body.get("expires_in"),
        encrypted_payload=payload if isinstance(payload, str) and payload else None,
        organization_id=org if isinstance(org, str) and org else None,
    )


def organization_key(encrypted_payload: str, token: AccessToken) -> SymmetricKey:
    """Decrypt the identity server's ``encrypted_payload`` and take the organization key from it."""
    try:
        data = json.loads(decrypt(encrypted_payload, token.stretched))
    except ValueError as exc:
        raise BwsError(
            f"the identity server's encrypted_payload cannot be read with the access token's key: {exc}"
        ) from None
    encoded = data.get("encryptionKey") if isinstance(data, dict) else None
    if not isinstance(encoded, str):
        raise BwsError("the identity server's encrypted_payload holds no encryptionKey")
    try:
        return SymmetricKey.from_bytes(b64_indifferent(encoded))
    except ValueError:
        raise BwsError("the organization key in the encrypted_payload is not 64 bytes of base64") from None


@dataclass(frozen=True, slots=True, repr=False)
class SecretFields:
    """A decrypted secret: its name (``key``), ``value`` and ``note``."""

    id: str
    key: str
    value: str
    note: str

    def __repr__(self) -> str:
        return f"SecretFields({self.id})"


def read_secret(body: Any, secret_id: str, org_key: SymmetricKey, organization_id: str | None) -> SecretFields:
    if not isinstance(body, dict):
        raise BwsError("the secrets API answered something that is not a JSON object")
    org = body.get("organizationId")
    if organization_id and isinstance(org, str) and org.lower() != organization_id.lower():
        raise BwsError("the secret belongs to another organization than the access token")
    out: dict[str, str] = {}
    for name in ("key", "value", "note"):
        enc = body.get(name)
        if enc is None and name != "value":
            out[name] = ""
            continue
        if not isinstance(enc, str):
            raise BwsError(f"the secret has no `{name}` cipher string")
        try:
            out[name] = decrypt_text(enc, org_key)
        except ValueError as exc:
            raise BwsError(f"the secret's {name} cannot be decrypted with the organization key: {exc}") from None
    return SecretFields(secret_id, out["key"], out["value"], out["note"])


def oauth_error(raw: bytes) -> str | None:
    """What may be shown of an OAuth error answer (``oautherror.describe``); None when it is none."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    said = describe(data) if isinstance(data, dict) else None
    return None if said is None else said[1]


# --------------------------------------------------------------------------- a small synchronous client


class SyncClient:
    """Fetches secrets while routes.yaml loads (that is synchronous): one login, then one GET per secret.

    No proxy from the environment (the proxy itself may be it), no redirects,
    TLS verified against the platform's roots plus ``ca_file`` (``extra_ca_file``; tlsclient.py).
    """

    def __init__(
        self,
        token: AccessToken,
        identity_url: str,
        api_url: str,
        timeout: float,
        ca_file: Path | None = None,
        via: Callable[[str], Parent | None] | None = None,
    ) -> None:
        self._via = via  # the parent proxy for a URL (`upstream_proxy`), or None
        self._token = token
        self._identity_url = identity_url
        self._api_url = api_url
        self._timeout = timeout
        self._ca_file = ca_file
        self._sslctx: ssl.SSLContext | None = None
        self._login: tuple[str, SymmetricKey, str | None] | BwsError | None = None
        self.requests = 0

    def __repr__(self) -> str:
        return f"SyncClient({self._token!r}, {self._identity_url}, {self._api_url})"

    def _open(self, method: str, url: str, headers: dict[str, str], data: bytes | None = None) -> tuple[int, bytes]:
        if self._sslctx is None:
            # The rule every outbound connection follows: system roots plus `extra_ca_file`.
            self._sslctx = client_context(Trust(extra_ca=self._ca_file))
        last = ""
        for attempt in range(2):  # one retry for a 429/5xx or a connection failure
            self.requests += 1
            try:
                parent = self._via(url) if self._via is not None else None
                status, body = control.request(
                    method, url, timeout=self._timeout, headers=headers, data=data, sslctx=self._sslctx, parent=parent
                )
            except ssl.SSLCertVerificationError as exc:
                raise BwsError(f"its TLS certificate is not trusted ({exc.verify_message})") from None
            except control.ParentFailed as exc:
                raise BwsError(str(exc).rstrip(".")) from None
            except OSError as exc:  # TLS errors and timeouts among them
                if isinstance(exc, TimeoutError):
                    last = f"it did not answer within {self._timeout:g} s"
                else:
                    last = f"it cannot be reached ({type(exc).__name__})"
                if attempt == 0:
                    time.sleep(0.5)
                continue
            if (status == 429 or status >= 500) and attempt == 0:
                last = f"it answered {status}"
                time.sleep(0.5)
                continue
            return status, body
        raise BwsError(last)

    def login(self) -> tuple[str, SymmetricKey, str | None]:
        """The bearer JWT, the organization key and the organization id; done once, failure included."""
        if isinstance(self._login, BwsError):
            raise self._login
        if self._login is not None:
            return self._login
        try:
            self._login = self._do_login()
        except BwsError as exc:
            self._login = exc
            raise
        return self._login

    def _do_login(self) -> tuple[str, SymmetricKey, str | None]:
        headers = {**login_headers(), "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        try:
            status, raw = self._open(
                "POST", token_url(self._identity_url), headers, urlencode(login_form(self._token)).encode()
            )
        except BwsError as exc:
            raise BwsError(f"the identity server {self._identity_url}: {exc}") from None
        if status != 200:
            err = oauth_error(raw) if status in (400, 401) else None
            what = f"refused the access token ({err})" if err else f"answered {status}"
            raise BwsError(f"the identity server {self._identity_url} {what}")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise BwsError(f"the identity server {self._identity_url} answered something that is not JSON")
        login = read_login(body)
        REDACTOR.learn(login.access_token, slot=f"bws:{self._identity_url}")
        if login.encrypted_payload is None:
            raise BwsError("the identity server's answer has no encrypted_payload (is this a Secrets Manager server?)")
        return login.access_token, organization_key(login.encrypted_payload, self._token), login.organization_id

    def get_secret(self, secret_id: str) -> SecretFields:
        bearer, org_key, org_id = self.login()
        headers = {"Authorization": f"Bearer {bearer}", "Accept": "application/json", "User-Agent": USER_AGENT}
        try:
            status, raw = self._open("GET", secret_url(self._api_url, secret_id), headers)
        except BwsError as exc:
            raise BwsError(f"the secrets API {self._api_url}: {exc}") from None
        if status == 404:
            raise BwsError("the secrets API answered 404: no such secret, or the access token may not read it")
        if status != 200:
            raise BwsError(f"the secrets API answered {status}")
        try:
            body = json.loads(raw)
        except ValueError:
            raise BwsError("the secrets API answered something that is not JSON") from None
        return read_secret(body, secret_id, org_key, org_id)


class Resolver:
    """``${bws:SECRET_ID}`` for ``secrets.interpolate``: each secret fetched once per load.

    A secret that cannot be had raises ``Unresolved`` naming its id and why,
    so the value is missing (its route answers 502) rather than the load failing.
    """

    def __init__(self, client: SyncClient | None, unavailable: str | None = None) -> None:
        self._client = client
        self._unavailable = unavailable
        self._cache: dict[str, str | Unresolved] = {}

    def __call__(self, secret_id: str) -> str:
        secret_id = secret_id.strip()
        try:
            secret_id = str(uuid.UUID(secret_id))
        except ValueError:
            raise ValueError(f"`${{bws:{secret_id}}}`: a Secrets Manager secret id is a UUID") from None
        hit = self._cache.get(secret_id)
        if hit is None:
            hit = self._cache[secret_id] = self._fetch(secret_id)
        if isinstance(hit, Unresolved):
            raise hit
        return hit

    def _fetch(self, secret_id: str) -> str | Unresolved:
        if self._client is None:
            return Unresolved(f"Bitwarden secret {secret_id} cannot be fetched ({self._unavailable})")
        try:
            return self._client.get_secret(secret_id).value
        except BwsError as exc:
            return Unresolved(f"Bitwarden secret {secret_id} cannot be fetched ({exc})")
