"""proxy.py plugin for bench/run.py: set `Authorization` on every request to the bench upstream.

Loaded with `proxy --plugins proxypy_plugin.SetAuthorization` and this folder on PYTHONPATH.
proxy.py calls `handle_client_request` for each plain (absolute-form) request and, when TLS
interception is on (`--ca-*` flags), for each request decrypted inside a CONNECT tunnel. Inside
the tunnel the request is origin-form and the parser has no host, so the Host header names the
target. The CONNECT request itself is left alone. `add_header` keys headers by lower-case name,
so it replaces an `Authorization` the client sent instead of adding a second one.

Environment (set by run.py): AUTHPROXY_BENCH_HOST (default 127.0.0.1), AUTHPROXY_BENCH_AUTH
(the header value, default "Bearer test-token").
"""

import os

from proxy.http.proxy import HttpProxyBasePlugin

UPSTREAM_HOST = os.environ.get("AUTHPROXY_BENCH_HOST", "127.0.0.1").encode()
HEADER_VALUE = os.environ.get("AUTHPROXY_BENCH_AUTH", "Bearer test-token").encode()


def target_host(request):
    if request.host is not None:
        return request.host
    if request.has_header(b"host"):
        host = request.header(b"host")
        return host.rsplit(b":", 1)[0] if host.count(b":") == 1 else host
    return None


class SetAuthorization(HttpProxyBasePlugin):
    def handle_client_request(self, request):
        if not request.is_https_tunnel and target_host(request) == UPSTREAM_HOST:
            request.add_header(b"Authorization", HEADER_VALUE)
        return request
