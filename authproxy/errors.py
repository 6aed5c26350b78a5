"""Errors a client of the proxy can see, each with one status and one code.

The tree::

    ProxyError                      (500 internal_error)
    ├── BadRequest                  400 bad_request
    │   └── ProxyLoop               400 proxy_loop
    ├── AdminTokenRequired          401 admin_token_required
    │   └── AdminTokenInvalid       401 admin_token_invalid
    ├── Denied                      403 denied
    │   ├── DestinationDenied       403 destination_denied
    │   ├── PlaceholderRequired     403 placeholder_required
    │   └── PlaceholderMisdirected  403 placeholder_misdirected
    ├── ProxyAuthRequired           407 proxy_auth_required
    ├── MisdirectedRequest          421 misdirected_request
    │   └── AdminHostRefused        421 admin_host_refused
    ├── RequestTimeout              408 client_timeout
    ├── BodyTooLargeToSign          413 body_too_large_to_sign
    ├── UriTooLong                  414 uri_too_long
    ├── HeadersTooLarge             431 headers_too_large
    ├── NotImplementedByProxy       501 not_implemented
    ├── VersionNotSupported         505 http_version_not_supported
    ├── Unavailable                 503 unavailable
    │   ├── TooManyConnections      503 too_many_connections
    │   └── TokenStoreUnavailable   503 token_store_unavailable
    ├── CredentialUnavailable       502 credential_unavailable
    ├── TokenEndpointError          502 token_endpoint_error
    ├── TokenEndpointTimeout        504 token_endpoint_timeout
    ├── UpstreamError               502 upstream_error
    ├── UpstreamTLSError            502 upstream_tls_error
    ├── UnscrubbableEncoding        502 unscrubbable_encoding
    ├── UpstreamTimeout             504 upstream_timeout
    ├── UpstreamProxyError          502 upstream_proxy_error
    │   └── UpstreamProxyTimeout    504 upstream_proxy_error
    └── UpstreamProxyAuthFailed     502 upstream_proxy_auth_failed

Every one renders the same way (``render``): a JSON body
``{"error", "route", "detail"}`` and an ``X-Authproxy-Error`` header, so a
client can tell the proxy's answers from the upstream's. ``detail`` is one
sentence built by our code from values we chose to show, and it passes
through the redactor on the way out: a value from elsewhere in it (a token
endpoint's description, a helper's words) cannot carry a secret out in any
encoding.
"""

from __future__ import annotations

import json
from typing import ClassVar

from authproxy.secrecy.redact import redact


class ProxyError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, detail: str, route: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.route = route

    def with_route(self, route: str | None) -> ProxyError:
        if self.route is None:
            self.route = route
        return self


class BadRequest(ProxyError):
    status, code = 400, "bad_request"


class ProxyLoop(BadRequest):
    """The destination is the proxy itself: by the address it resolves to, or by our own ``Via`` entry."""

    status, code = 400, "proxy_loop"


class Denied(ProxyError):
    status, code = 403, "denied"


class DestinationDenied(Denied):
    """Unmatched traffic to an address the ``destinations`` policy denies."""

    status, code = 403, "destination_denied"


class PlaceholderRequired(Denied):
    """A ``require: placeholder`` route reached without its placeholder: no other credential may be used there."""

    status, code = 403, "placeholder_required"


class PlaceholderMisdirected(Denied):
    """A placeholder sent where its route does not go: an attempt to carry it off."""

    status, code = 403, "placeholder_misdirected"


class ProxyAuthRequired(ProxyError):
    status, code = 407, "proxy_auth_required"
    challenge: bytes = b'Basic realm="authproxy", charset="UTF-8"'


class AdminTokenRequired(ProxyError):
    """The admin listener wants its token (RFC 6750 §3.1: no error code when none was sent)."""

    status, code = 401, "admin_token_required"


class AdminTokenInvalid(AdminTokenRequired):
    code = "admin_token_invalid"


class RequestTimeout(ProxyError):
    status, code = 408, "client_timeout"


class BodyTooLargeToSign(ProxyError):
    """A request body over ``limits.replay_body`` on a route whose signature covers the body's hash (SigV4)."""

    status, code = 413, "body_too_large_to_sign"


class UriTooLong(ProxyError):
    status, code = 414, "uri_too_long"


class MisdirectedRequest(ProxyError):
    status, code = 421, "misdirected_request"


class AdminHostRefused(MisdirectedRequest):
    """The admin listener's ``Host:`` is not its own (see ``admingate``)."""

    code = "admin_host_refused"


class HeadersTooLarge(ProxyError):
    status, code = 431, "headers_too_large"


class NotImplementedByProxy(ProxyError):
    status, code = 501, "not_implemented"


class VersionNotSupported(ProxyError):
    """RFC 9110 §15.6.6: the request line names an HTTP version other than 1.0 and 1.1."""

    status, code = 505, "http_version_not_supported"


class Unavailable(ProxyError):
    status, code = 503, "unavailable"


class TooManyConnections(Unavailable):
    """One client address holds `limits.max_connections_per_client` connections already."""

    code = "too_many_connections"


class TokenStoreUnavailable(Unavailable):
    """The shared token store cannot be reached, and this request needs a fetch that must hold its lease."""

    code = "token_store_unavailable"


class CredentialUnavailable(ProxyError):
    status, code = 502, "credential_unavailable"


class TokenEndpointError(ProxyError):
    status, code = 502, "token_endpoint_error"

    def __init__(
        self,
        detail: str,
        route: str | None = None,
        oauth_error: str | None = None,
        permanent: bool = False,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail, route)
        self.oauth_error = oauth_error  # the OAuth `error` code, when the endpoint sent one
        self.permanent = permanent  # retrying cannot help (a spent refresh token): back off fully
        # A 429, a 5xx or no connection: the token layer tries again within its deadline,
        # no sooner than ``retry_after`` seconds when the endpoint said so (RFC 9110 §10.2.3).
        self.retryable = retryable
        self.retry_after = retry_after


class TokenEndpointTimeout(ProxyError):
    status, code = 504, "token_endpoint_timeout"


class UpstreamError(ProxyError):
    status, code = 502, "upstream_error"


class UpstreamTLSError(ProxyError):
    status, code = 502, "upstream_tls_error"


class UnscrubbableEncoding(ProxyError):
    """A scrubbed route's response is in a content coding the proxy cannot read: it fails closed."""

    status, code = 502, "unscrubbable_encoding"


class UpstreamTimeout(ProxyError):
    status, code = 504, "upstream_timeout"


class UpstreamProxyError(ProxyError):
    """The parent proxy (``upstream_proxy``) could not be reached, or refused to open the way."""

    status, code = 502, "upstream_proxy_error"


class UpstreamProxyTimeout(UpstreamProxyError):
    """The parent proxy did not answer in time: the parent's code, a timeout's status."""

    status = 504


class UpstreamProxyAuthFailed(ProxyError):
    """The parent proxy answered 407: it wants credentials, or refused the ones it got."""

    status, code = 502, "upstream_proxy_auth_failed"


_STATUS_FOR_HINT: dict[int, type[ProxyError]] = {
    400: BadRequest,
    408: RequestTimeout,
    431: HeadersTooLarge,
    501: NotImplementedByProxy,
}


def one_line(text: object) -> str:
    """Printable, on one line: text from elsewhere (an upstream, a token endpoint, a status answer)
    put in a message or on a terminal, so it can carry no line break and no escape sequence."""
    return "".join(c if c.isprintable() else " " for c in str(text))


def from_status_hint(status: int, detail: str) -> ProxyError:
    """Map h11's ``error_status_hint`` onto our tree (unknown hints are 400s)."""
    return _STATUS_FOR_HINT.get(status, BadRequest)(detail)


def render(err: ProxyError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of the JSON answer for ``err``."""
    body = json.dumps({"error": err.code, "route": err.route, "detail": redact(err.detail)}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-authproxy-error", err.code.encode()),
    ]
    if isinstance(err, ProxyAuthRequired):
        headers.append((b"proxy-authenticate", err.challenge))
    return err.status, headers, body
