"""HTTPS through CONNECT: interception with the local CA, real clients set up by `authproxy env`."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Proxy, Upstream, assert_no_secrets, tool_env

KEY = "intercept-key-31415926"


def _header(info: dict, name: str) -> list[str]:
    return [v for k, v in info["headers"] if k.lower() == name.lower()]


async def _proxy(make_proxy, up: Upstream, ca_path: Path, secret_env, extra: str = "") -> Proxy:
    secret_env("ICPT_KEY", KEY)
    p = await make_proxy(
        f"""
        {extra}
        routes:
          - name: secure
            match: {up.authority}
            ca_file: {ca_path}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: api_key, header: X-Key, value: "${{ICPT_KEY}}"}}
        """
    )
    p.secrets.add(KEY)
    return p


def _client_ctx(p: Proxy) -> ssl.SSLContext:
    ca = p.runtime.ca
    assert ca is not None
    return ssl.create_default_context(cafile=str(ca.files.cert))


async def _run(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_curl_with_authproxy_env(make_proxy, tls_upstream, secret_env) -> None:
    up, ca_path = tls_upstream
    p = await _proxy(make_proxy, up, ca_path, secret_env)
    rc, out, err = await _run("curl", "-sS", "--fail-with-body", f"{up.url}/via-curl?q=1", env=tool_env(p))
    assert rc == 0, err
    info = json.loads(out)
    assert info["path"] == "/via-curl?q=1"
    assert _header(info, "X-Key") == [KEY]
    lines = p.access_lines()
    assert any("GET intercept" in x and "route=secure" in x and "status=200" in x for x in lines)


@pytest.mark.parametrize("client", ["requests", "httpx"])
async def test_python_clients_with_authproxy_env(make_proxy, tls_upstream, secret_env, client: str) -> None:
    up, ca_path = tls_upstream
    p = await _proxy(make_proxy, up, ca_path, secret_env)
    code = {
        "requests": f"import requests; r = requests.post('{up.url}/py', data=b'abc', timeout=30); print(r.text)",
        "httpx": f"import httpx; r = httpx.post('{up.url}/py', content=b'abc', trust_env=True, timeout=30); print(r.text)",
    }[client]
    rc, out, err = await _run(sys.executable, "-c", code, env=tool_env(p))
    assert rc == 0, err
    info = json.loads(out)
    assert info["method"] == "POST" and info["body_size"] == 3
    assert _header(info, "X-Key") == [KEY]


async def test_many_requests_over_one_intercepted_connection(make_proxy, tls_upstream, secret_env) -> None:
    up, ca_path = tls_upstream
    p = await _proxy(make_proxy, up, ca_path, secret_env)
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p), limits=httpx.Limits(max_connections=1)) as client:
        for i in range(25):
            r = await client.get(f"{up.url}/k{i}")
            assert r.status_code == 200 and _header(r.json(), "X-Key") == [KEY]
    for _ in range(100):  # the CONNECT's line is written when the tunnel closes
        connects = [x for x in p.access_lines() if "CONNECT intercept" in x]
        if connects:
            break
        await asyncio.sleep(0.05)
    assert len(connects) == 1
    assert len([x for x in p.access_lines() if "GET intercept" in x]) == 25


async def test_50_concurrent_connects(make_proxy, tls_upstream, secret_env) -> None:
    up, ca_path = tls_upstream
    p = await _proxy(make_proxy, up, ca_path, secret_env)
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p), limits=httpx.Limits(max_connections=50)) as client:
        rs = await asyncio.gather(*(client.get(f"{up.url}/c{i}") for i in range(50)))
    assert [r.status_code for r in rs] == [200] * 50
    assert all(_header(r.json(), "X-Key") == [KEY] for r in rs)
    assert p.runtime.ca is not None and p.runtime.ca.cached == 1  # one leaf, minted once


async def test_oauth_retry_inside_intercepted_connection(make_proxy, tls_upstream, oauth_server, secret_env) -> None:
    up, ca_path = tls_upstream
    secret_env("ICPT_CC", "icpt-cc-secret-777")
    oauth_server.add_client("svc", "icpt-cc-secret-777")
    up.check_auth = lambda h: bool(h and h.startswith("Bearer ") and oauth_server.is_valid(h[7:]))
    p = await make_proxy(
        f"""
        routes:
          - name: oauth
            match: {up.authority}
            ca_file: {ca_path}
            auth: {{type: client_credentials, token_url: {oauth_server.token_url}, client_id: svc,
                    client_secret: "${{ICPT_CC}}"}}
        """
    )
    p.secrets.add("icpt-cc-secret-777")
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        assert (await client.get(f"{up.url}/a")).status_code == 200
        oauth_server.revoke_all()
        assert (await client.put(f"{up.url}/b", content=b"again")).status_code == 200
    assert oauth_server.token_requests() == 2
    assert "token=retried" in p.access_lines()[-1]
    p.secrets.update(oauth_server.issued())


async def test_unmatched_path_inside_intercept_forwarded_without_credential(
    make_proxy, tls_upstream, secret_env
) -> None:
    up, ca_path = tls_upstream
    secret_env("ICPT_KEY", KEY)
    p = await make_proxy(
        f"""
        routes:
          - name: api-only
            match: {up.authority}/api
            ca_file: {ca_path}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: api_key, header: X-Key, value: "${{ICPT_KEY}}"}}
        """
    )
    p.secrets.add(KEY)
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        r1 = await client.get(f"{up.url}/api/x")
        r2 = await client.get(f"{up.url}/public")
    assert _header(r1.json(), "X-Key") == [KEY]
    # Not under /api: no credential, and the upstream is verified against the
    # system roots, which do not hold the test CA.
    assert r2.status_code == 502 and r2.json()["error"] == "upstream_tls_error"


async def test_wrong_upstream_certificate_is_502_with_reason(make_proxy, tls_upstream, secret_env) -> None:
    up, _ = tls_upstream
    secret_env("ICPT_KEY", KEY)
    p = await make_proxy(
        f"""
        routes:
          - name: no-ca
            match: {up.authority}
            scrub: false  # the test reads the injected value back from the echo
            auth: {{type: api_key, header: X-Key, value: "${{ICPT_KEY}}"}}
        """
    )
    p.secrets.add(KEY)
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        r = await client.get(f"{up.url}/x")
    p.bodies.append(r.text)
    assert r.status_code == 502
    assert r.json()["error"] == "upstream_tls_error" and r.json()["route"] == "no-ca"
    assert (
        "certificate verify failed" in r.json()["detail"]
        or "self-signed" in r.json()["detail"]
        or ("unable to get local issuer" in r.json()["detail"])
    )
    assert up.seen == []


async def test_tunnelled_host_keeps_its_own_certificate(make_proxy, tls_upstream, upstream) -> None:
    up, ca_path = tls_upstream
    p = await make_proxy(
        f"""
        routes:
          - name: elsewhere
            match: {upstream.authority}
            auth: {{type: api_key, header: X-Key, value: "tunnel-never-{1}"}}
        """
    )
    env = tool_env(p)
    # The client trusts only the upstream's own CA: it can only succeed if the
    # bytes go through untouched.
    rc, out, err = await _run("curl", "-sS", "--fail", "--cacert", str(ca_path), f"{up.url}/tunnelled", env=env)
    assert rc == 0, err
    info = json.loads(out)
    assert _header(info, "X-Key") == []
    for _ in range(200):  # a tunnel's line is written when both directions have closed
        if any("CONNECT tunnel" in x and "status=200" in x for x in p.access_lines()):
            break
        await asyncio.sleep(0.05)
    assert any("CONNECT tunnel" in x and "status=200" in x for x in p.access_lines())


async def test_deny_refuses_unmatched_connect(make_proxy, tls_upstream) -> None:
    up, _ = tls_upstream
    p = await make_proxy(
        """
        unmatched: deny
        routes:
          - name: other
            match: api.example.com
            auth: {type: api_key, value: "deny-test-key-1"}
        """
    )
    rc, _, err = await _run("curl", "-sS", "--fail", f"{up.url}/x", env=tool_env(p))
    assert rc != 0 and "403" in err


async def _tunnel(p: Proxy, authority: str) -> socket.socket:
    def connect() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        assert head.startswith(b"HTTP/1.1 200"), head
        return s

    return await asyncio.to_thread(connect)


async def test_sni_naming_another_host_is_refused(make_proxy, tls_upstream, secret_env) -> None:
    up, ca_path = tls_upstream
    p = await _proxy(make_proxy, up, ca_path, secret_env)
    raw = await _tunnel(p, up.authority)
    ctx = _client_ctx(p)
    ctx.check_hostname = False

    def handshake() -> None:
        with ctx.wrap_socket(raw, server_hostname="evil.example"):
            pass

    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(handshake)


async def test_host_header_for_another_host_is_421(make_proxy, tls_upstream, secret_env) -> None:
    up, ca_path = tls_upstream
    p = await _proxy(make_proxy, up, ca_path, secret_env)
    raw = await _tunnel(p, up.authority)
    ctx = _client_ctx(p)

    def exchange() -> bytes:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := tls.recv(65536):
                out += chunk
            return out

    resp = await asyncio.to_thread(exchange)
    assert resp.startswith(b"HTTP/1.1 421")
    assert b'"misdirected_request"' in resp
    assert up.seen == []


async def test_non_http_bytes_inside_tls_get_400(make_proxy, tls_upstream, secret_env) -> None:
    up, ca_path = tls_upstream
    p = await _proxy(make_proxy, up, ca_path, secret_env)
    raw = await _tunnel(p, up.authority)
    ctx = _client_ctx(p)

    def exchange() -> bytes:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"\x00\x01garbage garbage\r\n\r\n")
            out = b""
            while chunk := tls.recv(65536):
                out += chunk
            return out

    resp = await asyncio.to_thread(exchange)
    assert resp.startswith(b"HTTP/1.1 400")
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        assert (await client.get(f"{up.url}/still-serving")).status_code == 200


async def test_bytes_before_the_200_close_the_connect(make_proxy, tls_upstream, secret_env) -> None:
    up, ca_path = tls_upstream
    p = await _proxy(make_proxy, up, ca_path, secret_env)
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(f"CONNECT {up.authority} HTTP/1.1\r\nHost: {up.authority}\r\n\r\n".encode() + b"\x16\x03\x01early")
    resp = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert resp.startswith(b"HTTP/1.1 400")


async def test_tls_garbage_from_client_leaves_proxy_serving(make_proxy, tls_upstream, secret_env) -> None:
    up, ca_path = tls_upstream
    p = await _proxy(make_proxy, up, ca_path, secret_env)
    raw = await _tunnel(p, up.authority)
    raw.sendall(b"\x16\x03\x01\x00\x05hello-not-tls")
    await asyncio.to_thread(raw.recv, 100)
    raw.close()
    async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
        assert (await client.get(f"{up.url}/ok")).status_code == 200


def test_leaf_certificate_contents(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from authproxy.disk.ca import LocalCA, ensure_ca

    ca = LocalCA(ensure_ca(tmp_path / "st", None, None))
    for host, general in (("api.example.com", x509.DNSName), ("127.0.0.1", x509.IPAddress)):
        cert = x509.load_pem_x509_certificate(ca.leaf_pem(host))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(v) for v in san.get_values_for_type(general)] == [host]
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        assert cert.not_valid_before_utc < ca.cert.not_valid_before_utc or cert.serial_number > 0
        # openssl, the reference verifier, accepts the chain for that host.
        leaf = tmp_path / "leaf.pem"
        leaf.write_bytes(ca.leaf_pem(host))
        flag = "-verify_ip" if general is x509.IPAddress else "-verify_hostname"
        r = subprocess.run(
            ["openssl", "verify", "-purpose", "sslserver", flag, host, "-CAfile", str(ca.files.cert), str(leaf)],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr
    st = (tmp_path / "st").stat().st_mode & 0o777
    assert st == 0o700
    assert (tmp_path / "st" / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    ca.close()


async def test_closed_tls_connections_are_freed_without_the_cycle_collector(
    make_proxy, tls_upstream, secret_env
) -> None:
    """Both loops' SSL layers keep a protocol's bound buffer_updated after the connection is lost (lost.py).

    A client or upstream connection that kept its transport stayed in a cycle
    with the connection's OpenSSL state, freed only when the cycle collector
    happened to run: RSS at rest grew by ~300 KB per closed TLS connection.
    """
    import gc

    from authproxy.transport.stream import ClientStream
    from authproxy.upstream.h1client import H1Connection

    up, ca_path = tls_upstream
    p = await _proxy(make_proxy, up, ca_path, secret_env)
    gc.collect()
    gc.disable()
    try:
        for i in range(3):
            async with httpx.AsyncClient(proxy=p.url, verify=_client_ctx(p)) as client:
                r = await client.get(f"{up.url}/free{i}")
                assert r.status_code == 200 and _header(r.json(), "X-Key") == [KEY]
        await p.runtime.upstreams.close()  # the pooled upstream connections close too
        for _ in range(100):
            if not p.server.connections:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the loops call connection_lost on a later turn
        assert not p.server.connections
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        # Ours only: the test's clients and the aiohttp upstream have cycles of their own.
        cyclic = [type(o).__name__ for o in gc.garbage if isinstance(o, (H1Connection, ClientStream))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cyclic == []
    assert_no_secrets(p.lines(), [KEY])


async def test_enabling_interception_again_keeps_the_one_ca(make_proxy: Any) -> None:
    """Asked again (by a reload, or a second caller), the runtime hands back the CA it loaded."""
    p = await make_proxy("routes: []\n")
    first = p.runtime.ca
    assert first is not None
    assert p.runtime.enable_interception() is first
