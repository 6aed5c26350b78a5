"""Gateway mode, and routes that send requests on over TLS to an HTTPS upstream."""

from __future__ import annotations

import httpx

from .conftest import Upstream


def _header(info: dict, name: str) -> list[str]:
    return [v for k, v in info["headers"] if k.lower() == name.lower()]


async def test_gateway_strips_prefix_and_injects(make_proxy, upstream: Upstream, secret_env) -> None:
    secret_env("GW_TOKEN", "gw-token-5f5f5f5f")
    p = await make_proxy(
        f"""
        routes:
          - name: reports
            gateway: /reports
            upstream: http://{upstream.authority}/api/v1
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: bearer, token: "${{GW_TOKEN}}"}}
        """
    )
    p.secrets.add("gw-token-5f5f5f5f")
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{p.url}/reports/daily/summary?fmt=csv&a=%2F")
        r2 = await client.post(f"{p.url}/reports", content=b"abc")
        r3 = await client.get(f"{p.url}/reportsX/daily")
    assert r.status_code == 200
    info = r.json()
    assert info["raw_path"] == "/api/v1/daily/summary?fmt=csv&a=%2F"
    assert info["host"] == upstream.authority
    assert _header(info, "Authorization") == ["Bearer gw-token-5f5f5f5f"]
    assert r2.status_code == 200 and r2.json()["raw_path"] == "/api/v1/" and r2.json()["body_size"] == 3
    assert r3.status_code == 400
    line = p.access_lines()[0]
    assert "GET gateway" in line and f"{upstream.authority}" in line and "route=reports" in line


async def test_gateway_over_tls_with_route_ca_file(make_proxy, tls_upstream, secret_env) -> None:
    up, ca_path = tls_upstream
    secret_env("GW_TOKEN", "gw-token-tls-0000")
    p = await make_proxy(
        f"""
        routes:
          - name: secure
            gateway: /secure
            upstream: https://{up.authority}
            ca_file: {ca_path}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: bearer, token: "${{GW_TOKEN}}"}}
        """
    )
    p.secrets.add("gw-token-tls-0000")
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{p.url}/secure/hello")
    assert r.status_code == 200
    assert r.json()["path"] == "/hello"
    assert _header(r.json(), "Authorization") == ["Bearer gw-token-tls-0000"]


async def test_plain_request_sent_on_over_tls(make_proxy, tls_upstream, secret_env) -> None:
    """`GET http://h/...` to the proxy goes on over TLS because of `upstream: https://`."""
    up, ca_path = tls_upstream
    secret_env("K", "tls-upgrade-key-1234")
    p = await make_proxy(
        f"""
        routes:
          - name: upgrade
            match: api.example.com
            upstream: https://{up.authority}
            ca_file: {ca_path}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: api_key, header: X-Key, value: "${{K}}"}}
        """
    )
    p.secrets.add("tls-upgrade-key-1234")
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get("http://api.example.com/v1/things")
    assert r.status_code == 200
    assert r.json()["path"] == "/v1/things"
    assert _header(r.json(), "X-Key") == ["tls-upgrade-key-1234"]


async def test_untrusted_upstream_certificate_is_502_with_reason(make_proxy, tls_upstream, secret_env) -> None:
    up, _ = tls_upstream
    secret_env("K", "never-sent-key-9876")
    p = await make_proxy(
        f"""
        routes:
          - name: untrusted
            gateway: /u
            upstream: https://{up.authority}
            auth: {{type: api_key, header: X-Key, value: "${{K}}"}}
        """
    )
    p.secrets.add("never-sent-key-9876")
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{p.url}/u/x")
    p.bodies.append(r.text)
    assert r.status_code == 502
    body = r.json()
    assert body["error"] == "upstream_tls_error" and body["route"] == "untrusted"
    assert "certificate" in body["detail"] and "verif" in body["detail"]
    assert up.seen == []


async def test_verify_false_connects_and_is_flagged(make_proxy, tls_upstream, secret_env) -> None:
    up, _ = tls_upstream
    secret_env("K", "unverified-key-5555")
    p = await make_proxy(
        f"""
        routes:
          - name: insecure
            gateway: /i
            upstream: https://{up.authority}
            verify: false
            auth: {{type: api_key, header: X-Key, value: "${{K}}"}}
        """
    )
    p.secrets.add("unverified-key-5555")
    assert any("NOT verified" in w.message for w in p.runtime.snapshot.config.warnings)
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{p.url}/i/x")
    assert r.status_code == 200
    assert "note=unverified-tls" in p.access_lines()[-1]
