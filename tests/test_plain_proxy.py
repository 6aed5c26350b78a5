"""Plain-HTTP proxying with the static grants, through real clients (httpx, requests, curl)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import shutil

import httpx
import pytest
import requests

from .conftest import Proxy, Upstream


def _header(info: dict, name: str) -> list[str]:
    return [v for k, v in info["headers"] if k.lower() == name.lower()]


async def _api_key_proxy(make_proxy, upstream: Upstream, secret_env, extra: str = "") -> Proxy:
    key = secret_env("TEST_API_KEY", "ak-7f3e9c1d-secret-key")
    p = await make_proxy(
        f"""
        routes:
          - name: local
            match: {upstream.authority}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: api_key, header: X-API-Key, value: ${{TEST_API_KEY}}}}
        {extra}
        """
    )
    p.secrets.add(key)
    return p


async def test_api_key_header_injected_via_httpx(make_proxy, upstream: Upstream, secret_env) -> None:
    p = await _api_key_proxy(make_proxy, upstream, secret_env)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/hello?x=1", headers={"X-API-Key": "client-own"})
    assert r.status_code == 200
    info = r.json()
    # The client's own value is replaced, never sent alongside.
    assert _header(info, "X-API-Key") == ["ak-7f3e9c1d-secret-key"]
    assert info["path"] == "/hello?x=1"
    assert _header(info, "Proxy-Connection") == []
    line = p.access_lines()[-1]
    assert "GET plain" in line and "route=local" in line and "status=200" in line
    assert "/hello " in line and "x=1" not in line


async def test_api_key_query_parameter(make_proxy, upstream: Upstream, secret_env) -> None:
    key = secret_env("QKEY", "query-secret-value-123")
    p = await make_proxy(
        f"""
        routes:
          - name: q
            match: {upstream.authority}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: api_key, query: api_key, value: ${{QKEY}}}}
        """
    )
    p.secrets.add(key)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/search?q=a%20b&api_key=mine")
    assert r.status_code == 200
    assert r.json()["raw_path"] == "/search?q=a%20b&api_key=query-secret-value-123"
    assert "query-secret" not in "\n".join(p.lines())


async def test_basic_auth_and_existing_authorization_replaced(make_proxy, upstream: Upstream, secret_env) -> None:
    pw = secret_env("BASIC_PW", "b4sic-pa55word!")
    p = await make_proxy(
        f"""
        routes:
          - name: basic
            match: {upstream.authority}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: basic, username: alice, password: ${{BASIC_PW}}}}
        """
    )
    p.secrets.add(pw)
    r = await asyncio.to_thread(
        requests.get,
        f"{upstream.url}/b",
        proxies={"http": p.url},
        headers={"Authorization": "Bearer from-client"},
        timeout=10,
    )
    assert r.status_code == 200
    auth = _header(r.json(), "Authorization")
    assert auth == ["Basic " + base64.b64encode(b"alice:b4sic-pa55word!").decode()]


async def test_bearer_token_file_reread_when_it_changes(make_proxy, upstream: Upstream, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token-abcdef\n")
    upstream.check_auth = lambda h: h == "Bearer second-token-ghijkl"
    p = await make_proxy(
        f"""
        routes:
          - name: file
            match: {upstream.authority}
            auth: {{type: bearer, token_file: {token_file}}}
        """
    )
    p.secrets.update({"first-token-abcdef", "second-token-ghijkl"})
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/one")
        assert r.status_code == 401  # the upstream wants the second token
        assert "retry=skipped" in p.access_lines()[-1]  # unchanged file: nothing new to retry with
        token_file.write_text("second-token-ghijkl\n")
        r = await client.get(f"{upstream.url}/two")
        assert r.status_code == 200
    assert _header(upstream.seen[-1], "Authorization") == ["Bearer second-token-ghijkl"]


async def test_bearer_retries_once_when_file_changed_between(make_proxy, upstream: Upstream, tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old-token-1111111")
    p = await make_proxy(
        f"""
        routes:
          - name: file
            match: {upstream.authority}
            auth: {{type: bearer, token_file: {token_file}}}
        """
    )
    p.secrets.update({"old-token-1111111", "new-token-2222222"})
    calls = []

    def check(h: str | None) -> bool:
        calls.append(h)
        if len(calls) == 1:
            # A new token lands while the old one is being refused.
            token_file.write_text("new-token-2222222")
        return h == "Bearer new-token-2222222"

    upstream.check_auth = check
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.post(f"{upstream.url}/x", content=b"payload")
    assert r.status_code == 200
    assert calls == ["Bearer old-token-1111111", "Bearer new-token-2222222"]
    assert upstream.seen[-1]["body_size"] == 7
    assert "token=retried" in p.access_lines()[-1]


async def test_curl_through_http_proxy(make_proxy, upstream: Upstream, secret_env) -> None:
    curl = shutil.which("curl")
    assert curl, "curl is installed by the test command (apt) and must be on PATH"
    p = await _api_key_proxy(make_proxy, upstream, secret_env)
    proc = await asyncio.create_subprocess_exec(
        curl,
        "-sS",
        "-x",
        p.url,
        f"{upstream.url}/curl",
        "-d",
        "hello=1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "HTTP_PROXY": p.url},
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    import json

    info = json.loads(out)
    assert info["method"] == "POST" and info["body_size"] == 7
    assert _header(info, "X-API-Key") == ["ak-7f3e9c1d-secret-key"]


async def test_unmatched_host_passes_through_untouched(make_proxy, upstream: Upstream) -> None:
    p = await make_proxy(
        """
        routes:
          - name: other
            match: api.example.com
            auth: {type: basic, username: u, password: ${UNSET_PW_FOR_TEST}}
        """
    )
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/free", headers={"Authorization": "Bearer client-own"})
    assert r.status_code == 200
    assert _header(r.json(), "Authorization") == ["Bearer client-own"]
    assert "route=- " in p.access_lines()[-1]


async def test_unmatched_denied_under_deny(make_proxy, upstream: Upstream) -> None:
    p = await make_proxy(
        """
        unmatched: deny
        routes:
          - name: other
            match: api.example.com
            auth: {type: basic, username: u, password: ${UNSET_PW_FOR_TEST}}
        """
    )
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    assert r.status_code == 403
    assert r.headers["x-authproxy-error"] == "denied"
    assert r.json() == {
        "error": "denied",
        "route": None,
        "detail": f"{upstream.authority} matches no route and `unmatched` is deny.",
    }
    assert upstream.seen == []


async def test_missing_variable_gives_502_naming_it(make_proxy, upstream: Upstream) -> None:
    p = await make_proxy(
        f"""
        routes:
          - name: needs-var
            match: {upstream.authority}
            auth: {{type: api_key, value: ${{AUTHPROXY_TEST_NOT_SET}}}}
        """
    )
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    assert r.status_code == 502
    body = r.json()
    assert body["error"] == "credential_unavailable" and body["route"] == "needs-var"
    assert "AUTHPROXY_TEST_NOT_SET" in body["detail"]
    assert upstream.seen == []  # never sent without the credential


async def test_clear_text_to_non_loopback_refused(make_proxy) -> None:
    p = await make_proxy(
        """
        routes:
          - name: remote
            match: api.example.com
            auth: {type: api_key, value: ${AUTHPROXY_TEST_K}}
        """
    )
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get("http://api.example.com/x")
    assert r.status_code in (403, 502)
    # The missing variable answers first; with it set, the clear-text rule does.
    assert r.headers["x-authproxy-error"] in ("denied", "credential_unavailable")


async def test_clear_text_rule_names_the_fix(make_proxy, secret_env) -> None:
    secret_env("AUTHPROXY_TEST_K2", "k2-secret-value")
    p = await make_proxy(
        """
        routes:
          - name: remote
            match: api.example.com
            auth: {type: api_key, value: ${AUTHPROXY_TEST_K2}}
        """
    )
    p.secrets.add("k2-secret-value")
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get("http://api.example.com/x")
    assert r.status_code == 403
    assert "clear text" in r.json()["detail"] and "upstream: https://" in r.json()["detail"]


async def test_content_encoding_passed_through(make_proxy, upstream: Upstream, secret_env) -> None:
    p = await _api_key_proxy(make_proxy, upstream, secret_env)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/gzip", headers={"Accept-Encoding": "gzip"})
        assert r.status_code == 200
        assert r.headers["content-encoding"] == "gzip"
        # httpx decodes; the raw bytes must be the upstream's gzip stream, untouched.
        assert gzip.decompress(gzip.compress(r.content)) == b"hello compressed world" * 10
        raw = await client.get(f"{upstream.url}/gzip", headers={"Accept-Encoding": "gzip"})
        async with client.stream("GET", f"{upstream.url}/gzip") as s:
            compressed = b"".join([c async for c in s.aiter_raw()])
    assert gzip.decompress(compressed) == b"hello compressed world" * 10
    assert raw.headers.get("content-length") == str(len(compressed))


async def test_redirect_not_followed(make_proxy, upstream: Upstream, secret_env) -> None:
    p = await _api_key_proxy(make_proxy, upstream, secret_env)
    async with httpx.AsyncClient(proxy=p.url, follow_redirects=False) as client:
        r = await client.get(f"{upstream.url}/redirect")
    assert r.status_code == 302
    assert r.headers["location"] == "http://elsewhere.invalid/next"


async def test_hop_by_hop_headers_dropped(make_proxy, upstream: Upstream, secret_env) -> None:
    p = await _api_key_proxy(make_proxy, upstream, secret_env)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(
            f"{upstream.url}/h",
            headers={
                "Connection": "keep-alive, X-Private",
                "X-Private": "drop me",
                "Proxy-Authorization": "Basic Zm9vOmJhcg==",
                "Keep-Alive": "timeout=5",
                "X-Kept": "yes",
            },
        )
    info = r.json()
    names = {k.lower() for k, _ in info["headers"]}
    assert "x-private" not in names and "proxy-authorization" not in names
    assert "keep-alive" not in names
    assert _header(info, "X-Kept") == ["yes"]


async def test_keep_alive_many_requests_one_connection(make_proxy, upstream: Upstream, secret_env) -> None:
    p = await _api_key_proxy(make_proxy, upstream, secret_env)
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(proxy=p.url, limits=limits) as client:
        for i in range(20):
            r = await client.get(f"{upstream.url}/n{i}")
            assert r.status_code == 200
    assert len(p.server.connections) <= 1


@pytest.mark.parametrize("code", [204, 304, 404, 500])
async def test_upstream_statuses_pass_through(make_proxy, upstream: Upstream, secret_env, code: int) -> None:
    p = await _api_key_proxy(make_proxy, upstream, secret_env)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/status/{code}")
    assert r.status_code == code
    assert "x-authproxy-error" not in r.headers
    assert r.headers.get("x-upstream") == "yes"
