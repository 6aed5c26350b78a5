"""The command line, run as a real process: check, token, run, exit codes, and no secret in any output."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.support.oauth_server import OAuthServer
from tests.support.proc import start_proxy

from .conftest import Upstream, assert_no_secrets

CC_SECRET = "cli-client-secret-4242"
API_KEY = "cli-api-key-abcdef12"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authproxy", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def good_config(tmp_path: Path, oauth_server: OAuthServer) -> Path:
    oauth_server.add_client("cli", CC_SECRET)
    return _write(
        tmp_path,
        f"""
        routes:
          - name: billing
            match: api.billing.example
            upstream: https://api.billing.example
            auth:
              type: client_credentials
              token_url: {oauth_server.token_url}
              client_id: cli
              client_secret: ${{CLI_CC_SECRET}}
          - name: keyed
            match: "*.keyed.example:8443/v2"
            auth: {{type: api_key, header: X-API-Key, value: "${{CLI_API_KEY}}"}}
          - name: legacy
            gateway: /legacy
            upstream: https://legacy.example/base
            auth: {{type: basic, username: u, password: "${{file:pw.txt}}"}}
        """,
    )


ENV = {"CLI_CC_SECRET": CC_SECRET, "CLI_API_KEY": API_KEY}


def test_check_prints_table_without_secrets(good_config: Path, tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_text("file-password-777\n")
    r = cli("check", "-c", str(good_config), env=ENV)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "MODE", "MATCH", "TYPE"]
    assert lines[1].split()[:4] == ["billing", "intercept", "api.billing.example", "client_credentials"]
    assert "${CLI_CC_SECRET}" in lines[1]
    assert lines[2].split()[:4] == ["keyed", "intercept", "*.keyed.example:8443/v2", "api_key"]
    assert lines[3].split()[:2] == ["legacy", "gateway"] and "${file:pw.txt}" in lines[3]
    # No warning; stderr says only which addresses unmatched traffic may not reach.
    assert [line.partition(":")[0] for line in r.stderr.splitlines()] == ["destinations for unmatched traffic"]
    assert_no_secrets([r.stdout, r.stderr], [CC_SECRET, API_KEY, "file-password-777"])


def test_check_warnings_and_strict(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        routes:
          - name: lit
            match: a.example
            auth: {type: api_key, value: literal-key-value-1}
          - name: unset
            match: b.example
            auth: {type: api_key, value: "${CLI_TEST_UNSET_VAR}"}
        """,
    )
    r = cli("check", "-c", str(path))
    assert r.returncode == 0
    warn = r.stderr.splitlines()
    assert warn[0] == (
        f"warning: {path}:5: routes[0].auth.value: a literal secret in the file; prefer ${{VAR}} or ${{file:PATH}}"
    )
    assert warn[1].startswith(f"warning: {path}:8: routes[1].auth.value: environment variable CLI_TEST_UNSET_VAR")
    assert "literal-key-value-1" not in r.stdout + r.stderr
    assert cli("check", "--strict", "-c", str(path)).returncode == 2


def test_check_reports_every_error_with_file_path_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        unmatched: maybe
        routes:
          - name: a
            match: a.example
            allow: [{methods: [GET], pathz: [/v1/]}]
            auth: {type: api_key, value: "${X}", hedaer: X-Key}
          - name: b
            match: b.example
            auth:
              type: refresh_tokn
        """,
    )
    r = cli("check", "-c", str(path))
    assert r.returncode == 2
    errs = r.stderr.splitlines()
    assert f"error: {path}:2: unmatched: must be one of tunnel, deny, not `maybe`" in errs
    assert f"error: {path}:7: routes[0].auth.hedaer: unknown key `hedaer`" in errs
    assert f"error: {path}:6: routes[0].allow[0].pathz: unknown key `pathz`" in errs
    assert any(e.startswith(f"error: {path}:11: routes[1].auth.type: unknown grant type `refresh_tokn`") for e in errs)
    assert r.stdout == ""


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    r = cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {tmp_path / 'nope.yaml'}: (top): cannot read the file")


def test_token_masked_and_shown(good_config: Path, tmp_path: Path, oauth_server: OAuthServer) -> None:
    (tmp_path / "pw.txt").write_text("file-password-777\n")
    r = cli("token", "billing", "-c", str(good_config), env=ENV)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Authorization: Bearer ****\n"
    r2 = cli("token", "billing", "--show", "-c", str(good_config), env=ENV)
    assert r2.returncode == 0
    issued = oauth_server.issued()[-1]
    assert r2.stdout == f"Authorization: Bearer {issued}\n"
    r3 = cli("token", "keyed", "-c", str(good_config), env=ENV)
    assert r3.stdout == "X-API-Key: ****\n"
    r4 = cli("token", "legacy", "-c", str(good_config), env=ENV)
    assert r4.stdout == "Authorization: Basic ****\n"
    assert_no_secrets(
        [r.stdout, r.stderr, r3.stdout, r3.stderr, r4.stdout, r4.stderr],
        [CC_SECRET, API_KEY, "file-password-777", *oauth_server.issued()],
    )


def test_token_errors(good_config: Path, tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_text("file-password-777\n")
    r = cli("token", "nosuch", "-c", str(good_config), env=ENV)
    assert r.returncode == 2 and "no route named `nosuch`" in r.stderr
    bad = {**ENV, "CLI_CC_SECRET": "wrong-secret-0000"}
    r = cli("token", "billing", "-c", str(good_config), env=bad)
    assert r.returncode == 1
    assert r.stderr.startswith("error: route billing: the token endpoint answered 401 invalid_client")
    assert_no_secrets([r.stdout, r.stderr], ["wrong-secret-0000", CC_SECRET])
    unset = {"CLI_API_KEY": API_KEY}
    r = cli("token", "billing", "-c", str(good_config), env=unset)
    assert r.returncode == 1 and "CLI_CC_SECRET" in r.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert cli().returncode == 2
    assert cli("frobnicate").returncode == 2
    path = _write(tmp_path, "routes: []\n")
    r = cli("run", "-c", str(path), "--listen", "0.0.0.0:18999")
    assert r.returncode == 2 and "refusing to listen on 0.0.0.0" in r.stderr
    r = cli("run", "-c", str(path), "--listen", "nonsense")
    assert r.returncode == 2


def test_shipped_routes_yaml_loads_without_secrets() -> None:
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXAMPLE_", "BILLING_", "REPORTS_"))}
    r = subprocess.run(
        [sys.executable, "-m", "authproxy", "check"],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "EXAMPLE_API_KEY is not set" in r.stderr


async def test_run_serves_logs_and_drains_on_sigterm(tmp_path: Path, upstream: Upstream) -> None:
    path = _write(
        tmp_path,
        f"""
        routes:
          - name: local
            match: {upstream.authority}
            auth: {{type: api_key, header: X-API-Key, value: "${{CLI_API_KEY}}"}}
          - name: unset
            match: other.example
            auth: {{type: api_key, value: "${{CLI_TEST_UNSET_VAR}}"}}
        """,
    )
    p = start_proxy(path, "--log-format", "json", env=ENV)
    async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
        r = await client.get(f"{upstream.url}/first?key=zzz")
        assert r.status_code == 200
        slow = asyncio.create_task(client.get(f"{upstream.url}/slow?s=1.5"))
        await asyncio.sleep(0.4)
        p.proc.send_signal(15)
        r = await slow  # the request in flight finishes
        assert r.status_code == 200 and r.text == "slow done"
    assert await asyncio.to_thread(p.proc.wait, 20) == 0
    import json

    records = [json.loads(line) for line in p.err_lines if line.startswith("{")]
    access = [x for x in records if "status" in x]
    assert access[0]["method"] == "GET" and access[0]["mode"] == "plain"
    assert access[0]["route"] == "local" and access[0]["path"] == "/first"
    assert set(access[0]) >= {
        "time",
        "method",
        "mode",
        "host",
        "path",
        "route",
        "status",
        "bytes_in",
        "bytes_out",
        "ms",
        "token",
    }
    assert any("CLI_TEST_UNSET_VAR is not set" in x.get("message", "") for x in records)
    assert_no_secrets(p.err_lines, [API_KEY])


def _idle_intercepted(port: int, ca: Path, n: int) -> list[ssl.SSLSocket]:
    """Intercepted connections left idle after the handshake, as a client's pool keeps them."""
    ctx = ssl.create_default_context(cafile=str(ca))
    out = []
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        raw.sendall(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            got += raw.recv(1024)
        assert got.startswith(b"HTTP/1.1 200"), got
        out.append(ctx.wrap_socket(raw, server_hostname="127.0.0.1"))
    return out


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sigterm_ends_idle_intercepted_connections_at_once(tmp_path: Path, loop: str) -> None:
    """Idle intercepted keep-alive connections are not requests in flight: they must not hold the drain.

    The clients never answer the proxy's TLS close_notify (a pool does not read
    an idle connection). The grace is 60 s: the proxy used to wait all of it,
    then log a traceback per cancelled connection.
    """
    state = tmp_path / "state"
    path = _write(
        tmp_path,
        f"""
        state_dir: {state}
        timeouts: {{drain: 60}}
        routes:
          - name: local
            match: 127.0.0.1:9
            auth: {{type: api_key, header: X-API-Key, value: "${{CLI_API_KEY}}"}}
        """,
    )
    p = start_proxy(path, "--loop", loop, env=ENV)
    conns = _idle_intercepted(p.port, state / "ca.pem", 4)
    try:
        p.proc.send_signal(15)
        assert p.proc.wait(30) == 0
    finally:
        for c in conns:
            c.close()
        p.stop()
    assert not [line for line in p.err_lines if "Traceback" in line or "Exception in callback" in line]
    assert_no_secrets(p.err_lines, [API_KEY])


def test_ca_prints_path_first_then_how_to_trust(tmp_path: Path) -> None:
    path = _write(tmp_path, f"state_dir: {tmp_path / 'st'}\nroutes: []\n")
    r = cli("ca", "-c", str(path))
    assert r.returncode == 0, r.stderr
    first, *_rest = r.stdout.splitlines()
    assert first == str(tmp_path / "st" / "ca.pem")
    assert Path(first).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "update-ca-certificates" in r.stdout and 'eval "$(authproxy env' in r.stdout
    key = tmp_path / "st" / "ca-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "st").stat().st_mode & 0o777 == 0o700
    assert key.read_text().strip() not in r.stdout
    # A second run reuses the same CA.
    before = Path(first).read_bytes()
    assert cli("ca", "-c", str(path)).returncode == 0
    assert Path(first).read_bytes() == before


def test_env_for_each_shell(tmp_path: Path) -> None:
    path = _write(tmp_path, f"listen: 127.0.0.1:18181\nstate_dir: {tmp_path / 'st'}\nroutes: []\n")
    r = cli("env", "-c", str(path))
    assert r.returncode == 0, r.stderr
    env = dict(line.removeprefix("export ").split("=", 1) for line in r.stdout.splitlines())
    names = {"HTTP_PROXY", "HTTPS_PROXY", "WS_PROXY", "WSS_PROXY", "NO_PROXY"}
    for n in names:
        assert n in env and n.lower() in env
    assert env["HTTPS_PROXY"] == "'http://127.0.0.1:18181'"
    assert env["NO_PROXY"] == "'localhost,127.0.0.1,::1'"
    assert env["NODE_USE_ENV_PROXY"] == "'1'"
    bundle = str(tmp_path / "st" / "ca-bundle.pem")
    for n in (
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
        "CARGO_HTTP_CAINFO",
        "AWS_CA_BUNDLE",
        "DENO_CERT",
        "npm_config_cafile",
    ):
        assert env[n] == f"'{bundle}'"
    text = Path(bundle).read_text()
    ca = (tmp_path / "st" / "ca.pem").read_text()
    assert ca in text and text.count("BEGIN CERTIFICATE") > 10  # system roots plus ours
    fish = cli("env", "-c", str(path), "--shell", "fish", "--no-proxy", "").stdout.splitlines()
    assert "set -gx NO_PROXY ''" in fish and "set -gx HTTP_PROXY 'http://127.0.0.1:18181'" in fish
    ps = cli("env", "-c", str(path), "--shell", "powershell").stdout.splitlines()
    assert "$env:HTTPS_PROXY = 'http://127.0.0.1:18181'" in ps
    # What `authproxy env` prints is valid sh: eval it and read a variable back.
    out = subprocess.run(
        ["sh", "-c", f'eval "$({sys.executable} -m authproxy env -c {path})"; echo "$PIP_CERT"'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == bundle


async def test_status_command_reads_the_admin_listener(tmp_path: Path, upstream: Upstream) -> None:
    path = _write(
        tmp_path,
        f"""
        state_dir: {tmp_path / "st"}
        admin: 127.0.0.1:0
        routes:
          - name: local
            match: {upstream.authority}
            auth: {{type: api_key, header: X-API-Key, value: "${{CLI_API_KEY}}"}}
        """,
    )
    p = start_proxy(path, env=ENV)
    try:
        import re

        admin = ""
        for _ in range(100):  # logged just after "listening on"
            found = [m.group(1) for line in p.err_lines if (m := re.search(r"admin listener on (\S+)", line))]
            if found:
                admin = found[0]
                break
            await asyncio.sleep(0.05)
        assert admin, p.stderr_text()
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            assert (await client.get(f"{upstream.url}/s")).status_code == 200
        r = await asyncio.to_thread(cli, "status", "--admin", admin)
        assert r.returncode == 0, r.stderr
        assert "ROUTE" in r.stdout and "local" in r.stdout and "api_key" in r.stdout
        assert API_KEY not in r.stdout
    finally:
        assert p.stop() == 0
    r = cli("status", "-c", str(_write(tmp_path, "routes: []\n")))
    assert r.returncode == 2 and "no `admin:` listener" in r.stderr


def test_loop_choice(tmp_path: Path) -> None:
    path = _write(tmp_path, f"state_dir: {tmp_path / 'st'}\nroutes: []\n")
    for loop in ("asyncio", "uvloop"):
        p = start_proxy(path, "--loop", loop)
        assert p.stop() == 0, p.stderr_text()
