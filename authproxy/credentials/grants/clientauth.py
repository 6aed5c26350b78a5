"""How an OAuth client proves who it is to a token endpoint: the one place that turns
a grant's settings into the token request's headers and form fields.

- ``client_secret_basic`` (RFC 6749 §2.3.1): ``Authorization: Basic``, both parts
  form-urlencoded first; the default.
- ``client_secret_post`` (§2.3.1): ``client_id`` and ``client_secret`` in the body.
- ``private_key_jwt`` (RFC 7523 §2.2, §3; OpenID Connect Core §9): a JWT signed with
  ``signing_key``, sent as ``client_assertion`` with ``client_assertion_type``.
- ``client_secret_jwt`` (same): the JWT is an HMAC with the client secret, which
  itself never leaves the proxy.
- ``tls_client_auth`` (RFC 8705 §2.1.1): the ``client_id`` in the body, the proof
  the client certificate on the token endpoint's connection (``tlsclient.py``).

A public client (no secret, no key) sends its ``client_id`` in the body (§2.3.1, §3.2.1).
A new method is one more name in ``METHODS``, and in ``SECRETLESS`` when a secret is
not its proof; ``apply`` needs a branch only when the proof travels in the request.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import quote

from authproxy.credentials.signing import (
    HMAC_ALGS,
    HMAC_MIN_BYTES,
    SigningKey,
    fresh_claims,
    hmac_sign,
    read_signing_key,
)
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.redact import REDACTOR
from authproxy.secrecy.secrets import Secret, Value

METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "client_secret_jwt", "tls_client_auth")
# Methods that sign an assertion.
JWT_METHODS = ("private_key_jwt", "client_secret_jwt")
# Methods whose proof is not the client secret, and what it is instead.
SECRETLESS = {"private_key_jwt": "`signing_key`", "tls_client_auth": "the certificate"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"  # RFC 7523 §2.2


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """A grant's client authentication, read once from its ``auth:`` block."""

    method: str
    # The client's private key: private_key_jwt's, or the one a `jwt_bearer` grant signs its assertion with.
    key: SigningKey | None
    hmac_alg: str  # client_secret_jwt
    kid: str | None
    audience: str | None  # `assertion_audience`: one value, else the token_url

    def sources(self) -> list[tuple[str, str]]:
        """For ``check``: where the key is (its path or ``${VAR}``), never the PEM."""
        if self.key is None:
            return []
        source = self.key.pem.source
        return [("signing_key", "****" if "-----BEGIN" in source else source)]

    def apply(
        self,
        route: str,
        client_id: str | None,
        secret: str | None,
        token_url: str,
        headers: dict[str, str],
        params: dict[str, str],
    ) -> None:
        """Add the client's proof to a token request about to be sent to ``token_url``."""
        if self.method in JWT_METHODS and client_id is not None:
            claims = fresh_claims(client_id, client_id, self.audience or token_url)
            if self.method == "private_key_jwt":
                assert self.key is not None  # parse() made sure
                assertion = self.key.sign(claims, route)
            else:
                assertion = hmac_sign(claims, secret or "", self.hmac_alg, self.kid)
            # Good for LIFETIME seconds at that endpoint: as secret as a token meanwhile.
            REDACTOR.learn(assertion, slot=f"assertion:{route}")
            # RFC 7521 §4.2: client_id is optional beside an assertion; some servers (Entra ID) want it.
            params.update(client_id=client_id, client_assertion_type=ASSERTION_TYPE, client_assertion=assertion)
        elif client_id is not None and secret is not None and self.method == "client_secret_basic":
            pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif client_id is not None:
            params["client_id"] = client_id
            if secret is not None:
                params["client_secret"] = secret

    @classmethod
    def parse(
        cls, sec: Section, *, secret_required: bool, own_key: bool = False
    ) -> tuple[ClientAuth, Value | None, Secret | None]:
        """``client_auth`` and what it needs, with ``client_id`` and ``client_secret``.

        ``secret_required``: the grant is for confidential clients only
        (client_credentials), so it needs a client id and some proof.
        ``own_key``: the grant signs with ``signing_key`` itself (``jwt_bearer``),
        so the key may be there whatever ``client_auth`` says.
        """
        method = sec.choice("client_auth", METHODS, "client_secret_basic")
        client_id = sec.value("client_id", required=secret_required or method in JWT_METHODS or method in SECRETLESS)
        takes_secret = method not in SECRETLESS
        client_secret = sec.secret(
            "client_secret", required=(secret_required and takes_secret) or method == "client_secret_jwt"
        )
        if client_secret is not None and client_id is None:
            sec.error("client_secret", "`client_secret` needs a `client_id`")
        if client_secret is not None and not takes_secret:
            sec.error("client_secret", f"`{method}` authenticates with {SECRETLESS[method]}; remove `client_secret`")
        key = read_signing_key(sec)
        if method == "private_key_jwt" and not sec.has("signing_key"):
            sec.error(None, "`signing_key` is required with client_auth: private_key_jwt")
        if key is not None and method != "private_key_jwt" and not own_key:
            sec.error("signing_key", "`signing_key` is used with client_auth: private_key_jwt only")
        hmac_alg = _hmac_alg(sec, client_secret, key) if method == "client_secret_jwt" else "HS256"
        kid = key.kid if key is not None else sec.text("kid")
        if not sec.has("signing_key") and method != "client_secret_jwt":
            for stray in ("signing_alg", "kid"):
                if sec.has(stray):
                    sec.text(stray)
                    sec.error(stray, f"`{stray}` goes with `signing_key` or client_auth: client_secret_jwt")
        audience = sec.text("assertion_audience")
        if audience is not None and method not in JWT_METHODS and not own_key:
            what = "`assertion_audience` goes with client_auth: private_key_jwt or client_secret_jwt"
            sec.error("assertion_audience", what)
        return cls(method, key, hmac_alg, kid, audience), client_id, client_secret


def _hmac_alg(sec: Section, secret: Secret | None, key: SigningKey | None) -> str:
    """client_secret_jwt's algorithm; ``signing_alg`` names it unless a signing_key claims that key."""
    alg = "HS256" if key is not None else sec.text("signing_alg", default="HS256") or "HS256"
    if alg not in HMAC_ALGS:
        sec.error("signing_alg", f"client_secret_jwt signs with {', '.join(HMAC_ALGS)}, not `{alg}`")
        return "HS256"
    if secret is not None and not secret.missing and len(secret.reveal().encode()) < HMAC_MIN_BYTES[alg]:
        sec.warn(
            "client_secret",
            f"{alg} wants a key of {HMAC_MIN_BYTES[alg]} bytes or more (RFC 7518 §3.2); this secret is shorter",
        )
    return alg
