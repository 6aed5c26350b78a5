"""The control plane's HTTP client for synchronous callers: aiohttp, imported lazily, in a private loop.

The data plane speaks to upstreams with the project's own client
(upstream/h1client.py); everything else that makes an HTTP request (token
endpoints, Bitwarden, the ``status`` command) uses aiohttp. Two of those
callers are synchronous: ``${bws:...}`` values are fetched while routes.yaml
loads, and ``authproxy status`` is a plain command. They call ``request``,
which runs one aiohttp request to completion in an event loop of its own, on
a thread of its own, so that it works the same whether or not the caller
runs inside an event loop (a reload does). aiohttp is imported on the first
call only: a proxy whose routes never fetch does not load it.

No proxy from the environment (the proxy itself may be it: ``trust_env=False``
keeps aiohttp from reading ``HTTPS_PROXY`` and ``NO_PROXY``), no redirects (a
bearer token or client secret goes to the URL given only). A parent proxy
(``upstream_proxy``) only when the caller names one: failures that are the
parent's raise ``ParentFailed``, whose message names it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from authproxy.errors import ProxyError
from authproxy.net.parent import Parent, aiohttp_args, aiohttp_failure, answered_407


class ParentFailed(ConnectionError):
    """The parent proxy failed the request (no connection, a 407, a refused CONNECT); the message names it."""


def request(
    method: str,
    url: str,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
    sslctx: ssl.SSLContext | None = None,
    parent: Parent | None = None,
) -> tuple[int, bytes]:
    """The status and body of one request (through ``parent`` when given); blocks until they are in.

    Raises ``ssl.SSLCertVerificationError`` for a certificate that is not
    trusted, ``TimeoutError`` past ``timeout``, and another ``OSError`` for
    any other failure to get an answer (``ParentFailed`` for the parent's).
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="authproxy-control") as pool:
        return pool.submit(asyncio.run, _request(method, url, timeout, headers, data, sslctx, parent)).result()


async def _request(
    method: str,
    url: str,
    seconds: float,
    headers: Mapping[str, str] | None,
    data: bytes | None,
    sslctx: ssl.SSLContext | None,
    parent: Parent | None,
) -> tuple[int, bytes]:
    import aiohttp  # the control plane's client, loaded only when it is needed

    sent = dict(headers or {})
    try:
        via = aiohttp_args(parent, url, sent)
    except ProxyError as exc:  # refused before anything is sent (clear text through the parent)
        raise ParentFailed(exc.detail) from None
    try:
        async with (
            asyncio.timeout(seconds),
            aiohttp.ClientSession(trust_env=False) as session,
            session.request(
                method, url, headers=sent, data=data, ssl=sslctx or True, allow_redirects=False, **via
            ) as resp,
        ):
            refused = answered_407(parent, resp) if parent is not None else None
            if refused is not None:
                raise ParentFailed(refused.detail)
            return resp.status, await resp.read()
    except aiohttp.ClientConnectorCertificateError as exc:
        raise exc.certificate_error from None  # the ssl error itself, with its verify_message
    except (TimeoutError, OSError, aiohttp.ClientError) as exc:
        failed = aiohttp_failure(parent, exc) if parent is not None else None
        if failed is not None:
            raise ParentFailed(failed.detail) from None
        if not isinstance(exc, aiohttp.ClientError) or isinstance(exc, OSError):
            raise
        raise ConnectionError(f"the answer could not be read ({type(exc).__name__})") from None
