"""The server and pipeline tests again, on uvloop (the `fast` extra; `authproxy run --loop uvloop`).

uvloop's transports differ from asyncio's exactly where this proxy is delicate
(start_tls after CONNECT, half-close, backpressure), so the same tests run on both.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from .test_intercept import (  # noqa: F401  (collected again here, on uvloop)
    test_50_concurrent_connects,
    test_curl_with_authproxy_env,
    test_host_header_for_another_host_is_421,
    test_many_requests_over_one_intercepted_connection,
    test_non_http_bytes_inside_tls_get_400,
    test_oauth_retry_inside_intercepted_connection,
    test_tunnelled_host_keeps_its_own_certificate,
)
from .test_plain_proxy import (  # noqa: F401
    test_api_key_header_injected_via_httpx,
    test_content_encoding_passed_through,
    test_keep_alive_many_requests_one_connection,
    test_unmatched_host_passes_through_untouched,
)
from .test_raw_http import (  # noqa: F401
    test_cl_and_te_together_is_400_and_close,
    test_client_vanishing_mid_body_leaves_proxy_serving,
    test_connect_to_unmatched_is_a_blind_tunnel,
    test_expect_100_continue_answered_by_proxy,
    test_pipelined_requests_answered_in_order,
    test_upstream_reset_mid_body_aborts_only_that_client,
)
from .test_websocket import test_plain_ws_through_proxy, test_wss_through_intercepted_connect  # noqa: F401


@pytest.fixture(scope="module")
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy()


async def test_this_module_runs_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
