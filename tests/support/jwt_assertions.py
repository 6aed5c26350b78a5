# mypy: disable-error-code="import-untyped,misc,no-any-return"
"""RFC 7523 on the test authorization server (``oauth_server.py``): Authlib's own server side.

- ``private_key_jwt`` and ``client_secret_jwt`` client authentication: Authlib's
  :class:`JWTBearerClientAssertion`, once per method name; each verifies only the
  clients registered with its method (a client's ``jwt_key``: a public key, or
  the client secret as an HMAC key).
- The JWT bearer grant (RFC 7523 §2.1): Authlib's :class:`JWTBearerGrant`; an
  assertion's ``iss`` names the client (``OAuthServer.assertion_issuers`` maps
  other issuers, such as a Kubernetes API server, to a client id).

What a deployment configures, the test server sets as a real one would: the
audiences it accepts (``OAuthServer.assertion_audiences``, default the token
URL) and the algorithms (``ALGORITHMS``: joserfc leaves EdDSA off unless named,
so the decode names them; claims are checked by Authlib's own ``verify_claims``).
Exactly one ``aud`` is accepted: an array is refused. A ``jti`` seen before is
refused (Authlib's ``validate_jti`` hook). Every verified assertion's header and
claims are recorded for the tests (``OAuthServer.assertions``).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidGrantError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion, JWTBearerGrant
from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning

if TYPE_CHECKING:
    from tests.support.oauth_server import OAuthServer

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "ES512", "EdDSA", "Ed25519", "HS256", "HS384"]


def _decode(assertion: str, key: Any, error: type[Exception]) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)  # "EdDSA is deprecated via RFC 9864"
            return jwt.decode(assertion, key, algorithms=ALGORITHMS)
    except (JoseError, ValueError) as exc:
        raise error(description=getattr(exc, "description", None) or "Invalid JWT assertion.") from None


def _one_audience(claims: dict[str, Any], error: type[Exception]) -> None:
    if not isinstance(claims.get("aud"), str):
        raise error(description="The assertion must name exactly one audience.")


class ClientAssertion(JWTBearerClientAssertion):
    """One RFC 7523 §2.2 client authentication method of the test server."""

    def __init__(self, server: OAuthServer, method: str) -> None:
        super().__init__(validate_jti=True, leeway=60)
        self.test_server = server
        self.CLIENT_AUTH_METHOD = method

    def __call__(self, query_client: Any, request: Any) -> Any:
        assertion = request.form.get("client_assertion")
        if not assertion:
            return None
        _, claims = self.extract_assertion(assertion)
        client = query_client(claims.get("sub")) if isinstance(claims.get("sub"), str) else None
        if client is None or client.token_endpoint_auth_method != self.CLIENT_AUTH_METHOD:
            return None  # another method's client: that method verifies it
        return super().__call__(query_client, request)

    def get_audiences(self) -> list[str]:
        return self.test_server.audiences()

    def resolve_client_public_key(self, client: Any) -> Any:
        return client.jwt_key

    def validate_jti(self, claims: Any, jti: str) -> bool:
        return self.test_server._new_jti(f"{claims['sub']}:{jti}")

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        # Authlib's, with the algorithms named (see the module docstring).
        token = _decode(assertion, resolve_key, InvalidClientError)
        _one_audience(token.claims, InvalidClientError)
        self.verify_claims(token.claims)
        self.test_server._record_assertion(self.CLIENT_AUTH_METHOD, token.header, token.claims)
        return token.claims


class JWTBearer(JWTBearerGrant):
    """RFC 7523 §2.1 on the test server."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]

    @property
    def test_server(self) -> OAuthServer:
        return self.server.oauth_test_server

    def get_audiences(self) -> list[str]:
        return self.test_server.audiences()

    def resolve_issuer_client(self, issuer: str) -> Any:
        return self.test_server._query_client(self.test_server.assertion_issuers.get(issuer, issuer))

    def resolve_client_public_key(self, client: Any) -> Any:
        return client.jwt_key

    def authenticate_user(self, subject: str) -> Any:
        from tests.support.oauth_server import _User

        return _User(subject, "")

    def has_granted_permission(self, client: Any, user: Any) -> bool:
        return True

    def process_assertion_claims(self, assertion: str) -> Any:
        # Authlib's, with the algorithms named (see the module docstring).
        _, claims = self.extract_assertion(assertion)
        issuer = claims.get("iss")
        client = self.resolve_issuer_client(issuer) if isinstance(issuer, str) else None
        if client is None or client.jwt_key is None:
            raise InvalidGrantError(description="The client does not exist on this server.")
        token = _decode(assertion, self.resolve_client_public_key(client), InvalidGrantError)
        _one_audience(token.claims, InvalidGrantError)
        self.verify_claims(token.claims)
        if not self.test_server._new_jti(f"bearer:{issuer}:{token.claims.get('jti')}"):
            raise InvalidGrantError(description="JWT ID is used before.")
        self.test_server._record_assertion(JWT_BEARER, token.header, token.claims)
        return token.claims

    def validate_token_request(self) -> None:
        super().validate_token_request()
        # RFC 7521 §4.1 / 7523 §3.1: client authentication is optional with this grant; when the
        # client sends any, it must hold (Authlib's grant leaves it to the deployment).
        form = self.request.form
        if form.get("client_assertion") or form.get("client_secret") or self.request.headers.get("Authorization"):
            self.request.client = self.authenticate_token_endpoint_client()


def register(authorization: Any, server: OAuthServer) -> None:
    """Add RFC 7523's methods and grant to an Authlib ``AuthorizationServer``."""
    for method in ("private_key_jwt", "client_secret_jwt"):
        authorization.register_client_auth_method(method, ClientAssertion(server, method))
    authorization.register_grant(JWTBearer)
