"""`authproxy login ROUTE`: the browser half of the authorization code grant.

Discovery (RFC 8414, then OpenID Connect Discovery), PKCE with S256 (RFC 7636),
`state`, a loopback redirect listener on 127.0.0.1 with a free port (RFC 8252
§7.3), and the `iss` check against mix-up attacks (RFC 9207). The refresh
token it gets is stored under the route's lock, after which the route behaves
as a `refresh_token` route.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import secrets
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from authproxy.config import Route
from authproxy.credentials.grants.authorization_code import AuthorizationCode
from authproxy.credentials.grants.base import GrantContext
from authproxy.credentials.grants.checks import clear_text, clear_text_reason
from authproxy.credentials.grants.oauth import request_token
from authproxy.credentials.oautherror import describe
from authproxy.credentials.tlsclient import Contexts
from authproxy.disk.tokenstore import TokenStore
from authproxy.errors import ProxyError, one_line
from authproxy.net.parent import Parent, aiohttp_args, aiohttp_failure, answered_407
from authproxy.secrecy.secrets import Value
from authproxy.tokens.retry import with_retries


class LoginError(Exception):
    """The login did not complete; the message is one sentence for the user."""


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoints:
    issuer: str | None
    authorization: str
    token: str
    iss_supported: bool


async def discover(
    session: aiohttp.ClientSession, issuer: str, via: Callable[[str], Parent | None] | None = None
) -> Endpoints:
    """RFC 8414 §3 first, then OpenID Connect Discovery; the issuer must match (§3.3).

    ``via``: the parent proxy for a URL (``upstream_proxy``); a parent that fails ends the login.
    """
    base = issuer.rstrip("/")
    tried = []
    untrusted = ""
    for url in (
        _rfc8414_url(issuer),
        f"{base}/.well-known/openid-configuration",
    ):
        tried.append(url)
        parent = via(url) if via is not None else None
        headers: dict[str, str] = {}
        try:
            proxy = aiohttp_args(parent, url, headers)
        except ProxyError as exc:
            raise LoginError(exc.detail) from None
        try:
            async with session.get(url, headers=headers, allow_redirects=False, **proxy) as resp:
                refused = answered_407(parent, resp) if parent is not None else None
                if refused is not None:
                    raise LoginError(refused.detail)
                if resp.status != 200:
                    continue
                meta = await resp.json(content_type=None)
        except aiohttp.ClientConnectorCertificateError as exc:
            # Behind TLS inspection its CA belongs in `extra_ca_file`: say so rather than "not found".
            why = getattr(exc.certificate_error, "verify_message", None) or "not trusted"
            untrusted = f"; its certificate failed TLS verification: {why}"
            continue
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            failed = aiohttp_failure(parent, exc) if parent is not None else None
            if failed is not None:
                raise LoginError(failed.detail) from None
            continue
        if not isinstance(meta, dict):
            continue
        if meta.get("issuer", "").rstrip("/") != base:
            raise LoginError(f"the discovery document at {url} names another issuer; refusing it.")
        auth, token = meta.get("authorization_endpoint"), meta.get("token_endpoint")
        if not isinstance(auth, str) or not isinstance(token, str):
            raise LoginError(f"the discovery document at {url} lacks the authorization or token endpoint.")
        methods = meta.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise LoginError("the authorization server does not support PKCE with S256.")
        iss_ok = bool(meta.get("authorization_response_iss_parameter_supported"))
        return Endpoints(meta["issuer"], auth, token, iss_ok)
    raise LoginError(f"no discovery document found for {issuer} (tried {', '.join(tried)}{untrusted}).")


def refuse_clear_text(ends: Endpoints) -> None:
    """A discovered endpoint gets the check the config's URLs got at load time (``clear_text``).

    An https issuer vouches for its document, not for where the document
    points: an http:// token endpoint would get the code, the PKCE verifier
    and the client secret in clear text.
    """
    for what, url in (("token endpoint", ends.token), ("authorization endpoint", ends.authorization)):
        if clear_text(url):
            raise LoginError(
                f"the discovered {what} {one_line(url)[:100]} {clear_text_reason('the login')}; refusing it."
            )


def _rfc8414_url(issuer: str) -> str:
    # RFC 8414 §3.1: the well-known segment goes between the host and the issuer's path.
    scheme, _, rest = issuer.partition("://")
    host, _, path = rest.partition("/")
    path = path.rstrip("/")
    return f"{scheme}://{host}/.well-known/oauth-authorization-server" + (f"/{path}" if path else "")


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)  # 86 characters of the unreserved set (RFC 7636 §4.1)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


_DONE_PAGE = """<!doctype html><meta charset="utf-8"><title>authproxy</title>
<p>{message}</p><p>You can close this window.</p>"""


async def login(
    route: Route,
    store: TokenStore,
    deadline: float,
    *,
    wait: float,
    open_browser: bool,
    say: Callable[[str], None],
    extra_ca: Path | None = None,
    via: Callable[[str], Parent | None] | None = None,
) -> str:
    """Run the whole flow; returns where the refresh token was stored.

    Discovery and the code exchange trust what every outbound connection
    does (tlsclient.py): the system roots plus ``extra_ca``. ``via``: the
    parent proxy for a URL (discovery, the code exchange); the browser and
    the loopback redirect never use one.
    """
    grant = route.auth
    if not isinstance(grant, AuthorizationCode):
        raise LoginError(f"route {route.name} is not an authorization_code route.")
    if route.missing:
        raise LoginError(f"route {route.name} cannot log in: {route.missing[0]}.")
    tls = Contexts(extra_ca)
    connector = aiohttp.TCPConnector(ssl=tls.get(tls.trust()))
    async with aiohttp.ClientSession(
        trust_env=False, cookie_jar=aiohttp.DummyCookieJar(), connector=connector
    ) as session:
        ends = await _endpoints(session, grant, via)
        verifier, challenge = pkce_pair()
        params, redirect_uri = await _authorize(
            route.name, grant, ends, challenge, wait=wait, open_browser=open_browser, say=say
        )
        code = _code(params, ends)
        ctx = GrantContext(route.name, lambda: session, deadline, store, tls=tls, via=via)
        record = await _exchange(grant, ends, ctx, code, redirect_uri, verifier)
    # Under the route's lock (or lease): a running proxy, or a replica, adopts it on its next fetch.
    return await store.replace(route.name, record)


async def _endpoints(
    session: aiohttp.ClientSession, grant: AuthorizationCode, via: Callable[[str], Parent | None] | None
) -> Endpoints:
    """The issuer's discovered endpoints, overridden by the configured URLs; or the configured URLs alone."""
    if grant.issuer is not None:
        ends = await discover(session, grant.issuer.reveal(), via)
        if grant.authorization_url is not None:
            ends = dataclasses.replace(ends, authorization=grant.authorization_url.reveal())
        if grant.client.token_url.reveal():
            ends = dataclasses.replace(ends, token=grant.client.token_url.reveal())
    else:
        assert grant.authorization_url is not None
        ends = Endpoints(None, grant.authorization_url.reveal(), grant.client.token_url.reveal(), False)
    refuse_clear_text(ends)
    return ends


async def _authorize(
    name: str,
    grant: AuthorizationCode,
    ends: Endpoints,
    challenge: str,
    *,
    wait: float,
    open_browser: bool,
    say: Callable[[str], None],
) -> tuple[dict[str, str], str]:
    """Send the user to the authorization endpoint and wait for the redirect: its parameters, and the redirect URI."""
    state = secrets.token_urlsafe(32)
    got: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

    async def callback(request: web.Request) -> web.Response:
        params = dict(request.query)
        if params.get("state") != state:
            # Not our login (or a forged redirect): ignore it, keep waiting.
            return web.Response(status=400, text="This is not the login authproxy is waiting for.")
        if not got.done():
            got.set_result(params)
        msg = "Login failed; see the terminal." if "error" in params else "authproxy is logged in."
        return web.Response(text=_DONE_PAGE.format(message=msg), content_type="text/html")

    app = web.Application()
    app.router.add_get(grant.redirect_path, callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", grant.redirect_port)
        try:
            await site.start()
        except OSError as exc:
            raise LoginError(
                f"cannot listen on 127.0.0.1:{grant.redirect_port} for the redirect ({exc.strerror})."
            ) from None
        port = int(runner.addresses[0][1])  # the port bound, when redirect_port is 0
        redirect_uri = f"http://127.0.0.1:{port}{grant.redirect_path}"
        query = {
            "response_type": "code",
            "client_id": grant.client.client_id.reveal() if grant.client.client_id else "",
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if grant.client.scope:
            query["scope"] = grant.client.scope
        sep = "&" if "?" in ends.authorization else "?"
        url = ends.authorization + sep + urlencode(query)
        say(f"Open this address in a browser to log in to route {name}:\n\n  {url}\n")
        if open_browser:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(webbrowser.open, url)
        try:
            return await asyncio.wait_for(got, wait), redirect_uri
        except TimeoutError:
            raise LoginError(f"nobody completed the login within {wait:g} s.") from None
    finally:
        await runner.cleanup()


def _code(params: dict[str, str], ends: Endpoints) -> str:
    """The authorization code of an accepted redirect from the expected issuer."""
    said = describe(params)
    if said is not None:
        # RFC 6749 §4.1.2.1: the code and, redacted, the description; nothing else of the redirect.
        raise LoginError(f"the authorization server refused: {said[1]}".rstrip(".") + ".")
    iss = params.get("iss")
    if iss is not None and ends.issuer is not None and iss.rstrip("/") != ends.issuer.rstrip("/"):
        raise LoginError("the redirect names another issuer than the one discovered (RFC 9207); refusing it.")
    if iss is None and ends.iss_supported:
        raise LoginError("the authorization server promises an `iss` parameter but sent none; refusing it.")
    code = params.get("code")
    if not code:
        raise LoginError("the redirect carried no authorization code.")
    return code


async def _exchange(
    grant: AuthorizationCode, ends: Endpoints, ctx: GrantContext, code: str, redirect_uri: str, verifier: str
) -> dict[str, Any]:
    """The code exchanged for tokens (RFC 6749 §4.1.3, RFC 7636 §4.5): the record the store keeps."""
    client = dataclasses.replace(grant.client, token_url=Value(ends.token, ends.token))
    params_tok = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    if grant.client.client_secret is None and grant.client.client_id is not None:
        params_tok["client_id"] = grant.client.client_id.reveal()
    try:
        resp = await with_retries(lambda c: request_token(c, client, params_tok), ctx)
    except ProxyError as err:
        raise LoginError(f"exchanging the code failed: {err.detail}") from None
    rt = resp.body.get("refresh_token")
    if not isinstance(rt, str) or not rt:
        raise LoginError("the authorization server issued no refresh token (ask for a scope such as offline_access).")
    return {
        "refresh_token": rt,
        "token_url": ends.token,
        "access": resp.credential.headers[0][1],
        "expires_at": resp.credential.expires_at,
        "logged_in_at": time.time(),
    }
