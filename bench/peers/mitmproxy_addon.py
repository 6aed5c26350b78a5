"""mitmproxy addon for bench/run.py: set `Authorization` on every request to the bench upstream.

Loaded with `mitmdump -s bench/peers/mitmproxy_addon.py`. The hook is `requestheaders`, which
runs once the request head is parsed, before any body, so it also applies to streamed bodies
(the bench sets `stream_large_bodies`). Setting the header replaces any value the client sent.
Plain absolute-form requests and requests decrypted inside an intercepted CONNECT both pass
through it; `flow.request.host` is the target host in both cases.

Environment (set by run.py): AUTHPROXY_BENCH_HOST (default 127.0.0.1), AUTHPROXY_BENCH_AUTH
(the header value, default "Bearer test-token").
"""

import os

UPSTREAM_HOST = os.environ.get("AUTHPROXY_BENCH_HOST", "127.0.0.1")
HEADER_VALUE = os.environ.get("AUTHPROXY_BENCH_AUTH", "Bearer test-token")


class SetAuthorization:
    def requestheaders(self, flow):
        if flow.request.host == UPSTREAM_HOST:
            flow.request.headers["Authorization"] = HEADER_VALUE


addons = [SetAuthorization()]
