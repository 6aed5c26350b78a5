"""Talking to an OAuth 2.0 token endpoint (RFC 6749 §3.2, §5), shared by the fetching grants.

One attempt per call: a 429, a 5xx or a failed connection becomes a
``TokenEndpointError`` marked ``retryable`` (with the ``Retry-After`` it
sent), and the token layer (``tokens/retry.py``) decides whether to try
again. An OAuth error response becomes a ``TokenEndpointError`` that names
what ``oautherror.describe`` lets through (the ``error`` code, the redacted
``error_description``) and nothing else of the body.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from authproxy.credentials.grants.base import Credential, Grant, GrantContext
from authproxy.credentials.grants.checks import no_clear_text
from authproxy.credentials.grants.clientauth import ClientAuth
from authproxy.credentials.grants.dpop import DPoP, parse_dpop
from authproxy.credentials.jwtclaims import jwt_expiry
from authproxy.credentials.oautherror import describe
from authproxy.credentials.tlsclient import ClientCert, parse_client_cert
from authproxy.errors import TokenEndpointError, TokenEndpointTimeout
from authproxy.net.parent import aiohttp_args, aiohttp_failure, answered_407
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.redact import REDACTOR, learn_header_values
from authproxy.secrecy.secrets import Secret, Value

if TYPE_CHECKING:
    from authproxy.disk.tokenstore import TokenStore

# aiohttp and PyJWT are imported where a fetch uses them: the registry
# imports every grant module (so this one) at start, and a proxy whose grants
# never fetch (api_key, bearer, basic, command) need not load them.


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """The client half of every OAuth grant's ``auth:`` block."""

    token_url: Value
    client_id: Value | None
    client_secret: Secret | None
    auth: ClientAuth  # how the client proves itself: clientauth.py
    body: str
    scope: str | None
    audience: str | None
    extra: tuple[tuple[str, Value], ...]
    refresh_skew: float
    default_ttl: float
    # Presented to the token endpoint; with `tls_client_auth` it is how the client authenticates (RFC 8705 §2).
    client_cert: ClientCert | None = None
    dpop: DPoP | None = None  # RFC 9449: tokens bound to a key, a proof on every request

    @classmethod
    def parse(
        cls, sec: Section, *, secret_required: bool, token_url_required: bool = True, own_key: bool = False
    ) -> OAuthClient:
        token_url = sec.value("token_url", required=token_url_required) or Value("", "", ("token_url",))
        if not token_url.missing and not re.match(r"^https?://[^/]", token_url.text):
            sec.error("token_url", "must be an http:// or https:// URL")
        elif not token_url.missing:
            no_clear_text(sec, "token_url", token_url.text, "the client's credentials and tokens")
        auth, client_id, client_secret = ClientAuth.parse(sec, secret_required=secret_required, own_key=own_key)
        mtls = auth.method == "tls_client_auth"
        client_cert = parse_client_cert(sec)
        if mtls and client_cert is None and not sec.has("client_cert"):
            sec.error("client_auth", "`tls_client_auth` needs `client_cert` and `client_key` (RFC 8705 §2)")
        extra = sec.str_map("extra") or {}
        return cls(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            auth=auth,
            body=sec.choice("body", ("form", "json"), "form"),
            scope=sec.text("scope"),
            audience=sec.text("audience"),
            extra=tuple(extra.items()),
            refresh_skew=sec.number("refresh_skew", 60.0),
            default_ttl=sec.number("default_ttl", 300.0, minimum=1.0),
            client_cert=client_cert,
            dpop=parse_dpop(sec),
        )

    @property
    def client_auth(self) -> str:
        return self.auth.method

    def secrets(self) -> list[Secret]:
        return [s for _, s in self.named_secrets()]

    def named_secrets(self) -> list[tuple[str, Secret]]:
        out = [("client_secret", self.client_secret)] if self.client_secret is not None else []
        if self.client_cert is not None and self.client_cert.password is not None:
            out.append(("client_key_password", self.client_cert.password))
        return out

    def base_params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.scope:
            params["scope"] = self.scope
        if self.audience:
            params["audience"] = self.audience
        for k, v in self.extra:
            params[k] = v.reveal()
        return params


class OAuthClientGrant(Grant):
    """A grant that talks to a token endpoint as an OAuth client: its secrets and skew are the client's."""

    client: OAuthClient

    def secrets(self) -> list[Secret]:
        return self.client.secrets()

    def _named_secrets(self) -> list[tuple[str, Secret]]:
        return self.client.named_secrets()

    def refresh_skew(self) -> float:
        return self.client.refresh_skew

    def client_cert(self) -> ClientCert | None:
        return self.client.client_cert

    async def bind(self, cred: Credential, store: TokenStore, route: str) -> Credential:
        return cred if self.client.dpop is None else await self.client.dpop.bind(cred, store, route)

    def sources(self) -> list[tuple[str, str]]:
        dpop = self.client.dpop
        own = self.client.auth.sources() + ([("dpop", dpop.shown())] if dpop is not None else [])
        return super().sources() + own


def _retry_after(value: str | None) -> float | None:
    """RFC 9110 §10.2.3: seconds, or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def expiry_of(token: str, expires_in: Any, default_ttl: float) -> float:
    """``expires_in``, else the JWT's ``exp``, else the configured default."""
    now = time.time()
    if isinstance(expires_in, (int, float)) or (isinstance(expires_in, str) and expires_in):
        try:
            secs = float(expires_in)
            if math.isfinite(secs) and secs >= 0:
                return now + secs
        except ValueError:
            pass
    exp = jwt_expiry(token)
    return now + default_ttl if exp is None else exp


def authorization_value(token_type: Any, access_token: str) -> str:
    """``token_type + ' ' + access_token``; ``bearer`` in any case is sent as ``Bearer``.

    RFC 6750 names the scheme ``Bearer`` and RFC 6749 §5.1 makes token_type
    case-insensitive; some resource servers compare it case-sensitively.
    """
    kind = token_type if isinstance(token_type, str) and token_type.strip() else "Bearer"
    kind = kind.strip()
    if kind.lower() == "bearer":
        kind = "Bearer"
    return f"{kind} {access_token}"


@dataclass(frozen=True, slots=True)
class TokenResponse:
    credential: Credential
    body: dict[str, Any]


async def request_token(ctx: GrantContext, client: OAuthClient, params: dict[str, str]) -> TokenResponse:
    """POST to the token endpoint and turn the answer into a credential."""
    headers = {"Accept": "application/json"}
    cid = client.client_id.reveal() if client.client_id else None
    csecret = client.client_secret.reveal() if client.client_secret else None
    url = client.token_url.reveal()

    def authed(h: dict[str, str]) -> dict[str, str]:
        """The client's proof added for one attempt: an assertion's jti is good once (RFC 7523 §3)."""
        form = dict(params)
        client.auth.apply(ctx.route, cid, csecret, url, h, form)
        return form

    if client.dpop is None:
        body = await post_once(ctx, url, client.body, authed(headers), headers, cert=client.client_cert)
    else:
        cert = client.client_cert
        body = await client.dpop.token_post(
            ctx, url, headers, lambda h, seen: post_once(ctx, url, client.body, authed(h), h, cert=cert, seen=seen)
        )
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenEndpointError("the token endpoint's answer has no access_token.", ctx.route)
    if "\r" in access or "\n" in access:
        raise TokenEndpointError("the token endpoint's access_token holds a line break.", ctx.route)
    value = authorization_value(body.get("token_type"), access)
    # Known to the redactor from the moment they exist: the tokens, and the header as it will be sent.
    learn_header_values(f"route:{ctx.route}", [value])
    refresh = body.get("refresh_token")
    if isinstance(refresh, str):
        REDACTOR.learn(refresh, slot=f"refresh:{ctx.route}")
    expires = expiry_of(access, body.get("expires_in"), client.default_ttl)
    return TokenResponse(Credential(headers=(("Authorization", value),), expires_at=expires, secret=access), body)


async def post_once(
    ctx: GrantContext,
    url: str,
    kind: str,
    params: dict[str, str],
    headers: dict[str, str],
    who: str = "the token endpoint",
    cert: ClientCert | None = None,
    seen: Callable[[Mapping[str, str]], None] | None = None,
) -> dict[str, Any]:
    """POST a form (or JSON) body once, within ``ctx.deadline``; 429, 5xx and no connection are ``retryable``.

    ``seen`` is shown the response's headers, whatever its status (a DPoP nonce rides on any).
    """
    try:
        async with asyncio.timeout(ctx.deadline):
            return await _post(ctx, url, kind, params, headers, who, cert, seen)
    except TimeoutError:
        raise TokenEndpointTimeout(f"{who} did not answer within {ctx.deadline:g} s.", ctx.route) from None


async def _post(
    ctx: GrantContext,
    url: str,
    kind: str,
    params: dict[str, str],
    headers: dict[str, str],
    who: str,
    cert: ClientCert | None = None,
    seen: Callable[[Mapping[str, str]], None] | None = None,
) -> dict[str, Any]:
    import aiohttp  # see upstream.TokenSession: only a grant that fetches loads it

    kwargs: dict[str, Any] = {"json": params} if kind == "json" else {"data": params}
    parent = ctx.parent_for(url)
    if parent is not None:
        headers = dict(headers)
        kwargs.update(aiohttp_args(parent, url, headers))
    if url.startswith("https:"):
        # The system roots plus `extra_ca_file` (tlsclient.py), and the client certificate when given.
        kwargs["ssl"] = ctx.ssl(cert)
    try:
        async with ctx.session.post(url, headers=headers, allow_redirects=False, **kwargs) as resp:
            refused = answered_407(parent, resp, ctx.route) if parent is not None else None
            if refused is not None:
                raise refused
            raw = await resp.read()
            status = resp.status
            retry_after = _retry_after(resp.headers.get("Retry-After"))
            if seen is not None:
                seen(resp.headers)
    except aiohttp.ClientConnectorCertificateError as exc:
        # Not worth a retry: behind TLS inspection, its CA belongs in `extra_ca_file`.
        why = getattr(exc.certificate_error, "verify_message", None) or "not trusted"
        raise TokenEndpointError(f"the certificate of {who} failed TLS verification: {why}.", ctx.route) from None
    except (aiohttp.ClientError, OSError) as exc:
        failed = aiohttp_failure(parent, exc, ctx.route) if parent is not None else None
        if failed is not None:
            raise failed from None  # the parent's failure, naming it: no retry makes it succeed
        unreachable = f"{who} cannot be reached ({type(exc).__name__})."
        raise TokenEndpointError(unreachable, ctx.route, retryable=True) from None
    if status == 429 or status >= 500:
        raise TokenEndpointError(f"{who} answered {status}.", ctx.route, retryable=True, retry_after=retry_after)
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if status != 200 or not isinstance(data, dict):
        # RFC 6749 §5.2: the code, and the description redacted; never the body, which
        # an endpoint may fill with the request it got (client secret included).
        said = describe(data) if isinstance(data, dict) else None
        if said is not None:
            code, text = said
            msg = f"{who} answered {status} {text}".rstrip(".") + "."
            raise TokenEndpointError(msg, ctx.route, oauth_error=code)
        raise TokenEndpointError(f"{who} answered {status} without an OAuth JSON body.", ctx.route)
    return data
