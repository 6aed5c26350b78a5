"""The ``command`` grant with real helper processes (tests/helpers/cred_helper.py), through the proxy.

The helper counts its runs in a file and prints ``cmdtok-<run>-...``, so every
test can see how often the proxy ran it and which run's token went upstream.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from authproxy.config import load
from authproxy.credentials.grants.command import Command, parse_expiry
from authproxy.schema.problems import ConfigError, Problem

from .conftest import Proxy, Upstream, assert_no_secrets
from .helpers.cred_helper import FAKE_STDERR, FAKE_STDOUT, token

HELPER = Path(__file__).parent / "helpers" / "cred_helper.py"
TOKENS = [token(n) for n in range(1, 8)]


def _header(info: dict, name: str) -> list[str]:
    return [v for k, v in info["headers"] if k.lower() == name.lower()]


def _argv(mode: str, where: Path, arg: str = "") -> str:
    """A YAML flow list running the helper with this interpreter."""
    items = [sys.executable, str(HELPER), mode, str(where)] + ([arg] if arg else [])
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def _runs(where: Path) -> int:
    f = where / "runs"
    return len(f.read_text().splitlines()) if f.exists() else 0


async def _proxy(make_proxy, upstream: Upstream, argv: str, extra: str = "") -> Proxy:
    p: Proxy = await make_proxy(
        f"""
        routes:
          - name: cmd
            match: {upstream.authority}
            scrub: false  # the test reads the injected value back from the echo
            auth:
              type: command
              argv: {argv}
              {extra}
        """
    )
    p.secrets.update(TOKENS)
    p.secrets.update([FAKE_STDOUT, FAKE_STDERR])
    return p


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


# ---------------------------------------------------------------- happy paths


async def test_stdout_token_injected_and_cached_for_ttl(make_proxy, upstream: Upstream, tmp_path: Path) -> None:
    p = await _proxy(make_proxy, upstream, _argv("plain", tmp_path))
    async with httpx.AsyncClient(proxy=p.url) as client:
        rs = [await client.get(f"{upstream.url}/r{i}") for i in range(4)]
    assert [r.status_code for r in rs] == [200] * 4
    # stdout stripped (the helper ends its line with CRLF), Bearer by default, one run for all four.
    assert [_header(r.json(), "Authorization") for r in rs] == [[f"Bearer {token(1)}"]] * 4
    assert _runs(tmp_path) == 1
    lines = p.access_lines()
    assert "token=fetched" in lines[0] and all("token=cached" in line for line in lines[1:])


async def test_concurrent_first_requests_run_the_helper_once(make_proxy, upstream: Upstream, tmp_path: Path) -> None:
    p = await _proxy(make_proxy, upstream, _argv("plain", tmp_path))
    async with httpx.AsyncClient(proxy=p.url, limits=httpx.Limits(max_connections=20)) as client:
        rs = await asyncio.gather(*(client.get(f"{upstream.url}/c{i}") for i in range(20)))
    assert [r.status_code for r in rs] == [200] * 20
    assert _runs(tmp_path) == 1


async def test_custom_header_has_no_bearer_prefix(make_proxy, upstream: Upstream, tmp_path: Path) -> None:
    p = await _proxy(make_proxy, upstream, _argv("plain", tmp_path), "header: X-Vault-Token")
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/v1/secret")
    assert _header(r.json(), "X-Vault-Token") == [token(1)]
    assert _header(r.json(), "Authorization") == []


async def test_query_parameter(make_proxy, upstream: Upstream, tmp_path: Path) -> None:
    p = await _proxy(make_proxy, upstream, _argv("plain", tmp_path), "query: access_token")
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/q?a=1&access_token=client-own")
    assert r.status_code == 200
    assert r.json()["path"] == f"/q?a=1&access_token={token(1)}"
    assert _header(r.json(), "Authorization") == []
    assert "access_token" not in p.access_lines()[-1]


@pytest.mark.parametrize(
    ("mode", "extra"),
    [
        ("json-epoch", "json_field: credential.token\n              expiry_field: credential.expiry"),
        ("json-rfc3339", "json_field: status.token\n              expiry_field: status.expirationTimestamp"),
        ("json-expires-in", "json_field: access_token\n              expiry_field: expires_in"),
        ("jwt", ""),  # no expiry field: the JWT's exp says
    ],
)
async def test_expiry_from_output_then_run_again(
    make_proxy, upstream: Upstream, tmp_path: Path, mode: str, extra: str
) -> None:
    # The helper says its token lasts 2 s; ttl (an hour) must not override what the output says.
    p = await _proxy(
        make_proxy,
        upstream,
        _argv(mode, tmp_path, "2"),
        f"ttl: 3600\n              refresh_skew: 0\n              {extra}",
    )
    async with httpx.AsyncClient(proxy=p.url) as client:
        r1 = await client.get(f"{upstream.url}/a")
        r2 = await client.get(f"{upstream.url}/b")
        assert _runs(tmp_path) == 1
        await asyncio.sleep(2.3)
        r3 = await client.get(f"{upstream.url}/c")
    assert [r.status_code for r in (r1, r2, r3)] == [200] * 3
    first, third = _header(r1.json(), "Authorization")[0], _header(r3.json(), "Authorization")[0]
    assert _header(r2.json(), "Authorization")[0] == first
    assert first != third
    if mode != "jwt":
        assert (first, third) == (f"Bearer {token(1)}", f"Bearer {token(2)}")
    assert _runs(tmp_path) == 2
    # The token had expired: a new one was fetched in its place.
    assert "token=cached" in p.access_lines()[1] and "token=refreshed" in p.access_lines()[-1]


async def test_ttl_expiry_runs_the_helper_again(make_proxy, upstream: Upstream, tmp_path: Path) -> None:
    p = await _proxy(make_proxy, upstream, _argv("plain", tmp_path), "ttl: 1\n              refresh_skew: 0")
    async with httpx.AsyncClient(proxy=p.url) as client:
        await client.get(f"{upstream.url}/a")
        await asyncio.sleep(1.2)
        r = await client.get(f"{upstream.url}/b")
    assert _header(r.json(), "Authorization") == [f"Bearer {token(2)}"]
    assert _runs(tmp_path) == 2


async def test_401_reruns_the_helper_once_and_retries(make_proxy, upstream: Upstream, tmp_path: Path) -> None:
    p = await _proxy(make_proxy, upstream, _argv("plain", tmp_path))
    upstream.check_auth = lambda h: h == f"Bearer {token(2)}"
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.post(f"{upstream.url}/write", content=b"replay me")
        assert r.status_code == 200
        assert _header(r.json(), "Authorization") == [f"Bearer {token(2)}"]
        assert _runs(tmp_path) == 2
        r2 = await client.get(f"{upstream.url}/again")
    assert r2.status_code == 200 and _runs(tmp_path) == 2
    assert [s["body_size"] for s in upstream.seen[:2]] == [len(b"replay me")] * 2
    line = p.access_lines()[0]
    assert "token=retried" in line and "retry=done" in line


async def test_401_after_retry_goes_back_to_client(make_proxy, upstream: Upstream, tmp_path: Path) -> None:
    p = await _proxy(make_proxy, upstream, _argv("plain", tmp_path))
    upstream.check_auth = lambda h: False
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/never")
    assert r.status_code == 401 and "x-authproxy-error" not in r.headers
    assert _runs(tmp_path) == 2  # one forced re-run, one retry, no loop
    assert len(upstream.seen) == 2


async def test_environment_and_stdin(make_proxy, upstream: Upstream, tmp_path: Path, secret_env) -> None:
    secret_env("CMD_HELPER_SEEN", "from-the-proxy-env")
    p = await _proxy(make_proxy, upstream, _argv("env", tmp_path, "CMD_HELPER_SEEN"), "header: X-Seen")
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/e")
    assert _header(r.json(), "X-Seen") == ["from-the-proxy-env-1-stdin-empty"]


async def test_noisy_stderr_is_read_and_dropped(make_proxy, upstream: Upstream, tmp_path: Path) -> None:
    # ~300 KiB on stderr: more than a pipe holds, so the helper would block if nobody read it.
    p = await _proxy(make_proxy, upstream, _argv("noisy", tmp_path), "timeout: 20")
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/n")
    assert r.status_code == 200
    assert _header(r.json(), "Authorization") == [f"Bearer {token(1)}"]
    assert FAKE_STDERR not in "\n".join(p.lines())


# ---------------------------------------------------------------- failures


async def test_failing_helper_is_502_with_status_and_none_of_its_output(
    make_proxy, upstream: Upstream, tmp_path: Path
) -> None:
    # A helper run by path, relative to the config file's folder, as a user would write it.
    script = tmp_path / "get-token"
    script.write_text(f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(HELPER)!r}, run_name='__main__')\n")
    script.chmod(0o755)
    p = await _proxy(make_proxy, upstream, f'["./get-token", fail, "{tmp_path}", "3"]')
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
        p.bodies.append(r.text)
        assert r.status_code == 502
        body = r.json()
        assert body["error"] == "credential_unavailable" and body["route"] == "cmd"
        assert r.headers["x-authproxy-error"] == "credential_unavailable"
        assert "`get-token`" in body["detail"] and "exit status 3" in body["detail"]
        assert str(tmp_path) not in body["detail"]  # the base name only
        # Backoff: a second request right away does not run the helper again.
        r2 = await client.get(f"{upstream.url}/y")
        p.bodies.append(r2.text)
        assert r2.status_code == 502
    assert upstream.seen == []
    assert _runs(tmp_path) == 1
    everything = "\n".join([*p.lines(), *p.bodies])
    assert FAKE_STDOUT not in everything and FAKE_STDERR not in everything


@pytest.mark.parametrize(
    ("mode", "extra", "detail"),
    [
        ("multiline", "", "printed more than one line"),
        ("empty", "", "printed no credential"),
        ("big", "", "printed more than 64 KiB"),
        ("notjson", "json_field: token", "is not JSON"),
        ("json-epoch", "json_field: credential.nope", "has no string field `credential.nope`"),
        ("json-epoch", "json_field: credential", "has no string field `credential`"),
        (
            "json-epoch",
            "json_field: credential.token\n              expiry_field: credential.when",
            "has no `credential.when`",
        ),
        ("json-rfc3339", "json_field: status.token\n              expiry_field: status", "is not an expiry"),
    ],
)
async def test_unusable_output_is_502_without_quoting_it(
    make_proxy, upstream: Upstream, tmp_path: Path, mode: str, extra: str, detail: str
) -> None:
    p = await _proxy(make_proxy, upstream, _argv(mode, tmp_path, "60"), extra)
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    p.bodies.append(r.text)
    assert r.status_code == 502 and r.json()["error"] == "credential_unavailable"
    assert detail in r.json()["detail"]
    assert "cmdtok" not in r.text and "q9Zx7Lm2" not in r.text
    assert upstream.seen == []


async def test_hanging_helper_is_killed_with_its_children(make_proxy, upstream: Upstream, tmp_path: Path) -> None:
    p = await _proxy(make_proxy, upstream, _argv("hang", tmp_path), "timeout: 1")
    async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
        r = await client.get(f"{upstream.url}/x")
    p.bodies.append(r.text)
    # The helper's own timeout (1 s) ended it: the 504 says so (the client allowed 30 s).
    assert r.status_code == 504 and r.json()["error"] == "token_endpoint_timeout"
    assert "did not finish within 1 s" in r.json()["detail"]
    pids = [int(x) for x in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2  # the helper and the child it started
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)
    assert upstream.seen == []


async def test_missing_program_is_502(make_proxy, upstream: Upstream, tmp_path: Path) -> None:
    p = await _proxy(make_proxy, upstream, f'["{tmp_path}/no-such-helper", x]')
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    assert r.status_code == 502
    assert r.json()["detail"] == "the command `no-such-helper` cannot be started (No such file or directory)."


async def test_unset_variable_in_argv_is_502_naming_it(make_proxy, upstream: Upstream, tmp_path: Path) -> None:
    p = await _proxy(make_proxy, upstream, _argv("env", tmp_path, "${CMD_TEST_UNSET_ARG}"))
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/x")
    assert r.status_code == 502
    assert "CMD_TEST_UNSET_ARG" in r.json()["detail"]
    assert _runs(tmp_path) == 0


# ---------------------------------------------------------------- CLI and config


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authproxy", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).parent.parent,
    )


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n" + textwrap.dedent(text))
    return path


def test_token_command_check_and_failure(tmp_path: Path) -> None:
    where = tmp_path / "h"
    where.mkdir()
    path = _write(
        tmp_path,
        f"""
        routes:
          - name: cmd
            match: api.example
            auth: {{type: command, argv: {_argv("plain", where)}}}
          - name: q
            match: q.example
            auth: {{type: command, argv: {_argv("plain", where)}, query: key}}
          - name: broken
            match: b.example
            auth: {{type: command, argv: {_argv("fail", where, "7")}}}
          - name: secretarg
            match: s.example
            auth: {{type: command, argv: [op, read, "${{CMD_OP_REF}}"]}}
        """,
    )
    env = {"CMD_OP_REF": "op://vault/item/very-secret-ref-55"}
    r = _cli("token", "cmd", "-c", str(path))
    assert (r.returncode, r.stdout) == (0, "Authorization: Bearer ****\n"), r.stderr
    r = _cli("token", "cmd", "--show", "-c", str(path))
    assert (r.returncode, r.stdout) == (0, f"Authorization: Bearer {token(2)}\n")
    r = _cli("token", "q", "-c", str(path))
    assert (r.returncode, r.stdout) == (0, "?key=****\n")
    r_fail = _cli("token", "broken", "-c", str(path))
    assert r_fail.returncode == 1
    assert r_fail.stderr.startswith("error: route broken: the command `")
    assert "exit status 7" in r_fail.stderr
    r_check = _cli("check", "-c", str(path), env=env)
    assert r_check.returncode == 0, r_check.stderr
    rows = {line.split()[0]: line for line in r_check.stdout.splitlines()[1:]}
    assert rows["cmd"].split()[3] == "command" and f"argv={sys.executable}" in rows["cmd"]
    assert rows["secretarg"].endswith("argv=op")
    outputs = [r.stdout, r.stderr, r_fail.stdout, r_fail.stderr, r_check.stdout, r_check.stderr]
    assert_no_secrets(outputs, [FAKE_STDOUT, FAKE_STDERR, token(1), token(3), env["CMD_OP_REF"]])


def test_argv_reference_is_a_masked_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMD_OP_REF", "op://vault/item/very-secret-ref-55")
    cfg = load(
        _write(
            tmp_path, 'routes: [{name: a, match: a.example, auth: {type: command, argv: [op, read, "${CMD_OP_REF}"]}}]'
        )
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, Command)
    assert [a.reveal() for a in grant.argv] == ["op", "read", "op://vault/item/very-secret-ref-55"]
    assert [s.source for s in grant.secrets()] == ["${CMD_OP_REF}"]
    assert "very-secret" not in repr(grant) and grant.sources() == [("argv", "op")]
    assert grant._named_secrets() == []
    # Defaults: Authorization with Bearer, ttl 300, skew 60, timeout 30.
    assert (grant.header, grant.prefix, grant.query) == ("Authorization", "Bearer ", None)
    assert (grant.ttl, grant.refresh_skew(), grant.timeout) == (300.0, 60.0, 30.0)


def _errors(tmp_path: Path, auth: str) -> list[Problem]:
    path = _write(tmp_path, "routes:\n  - name: a\n    match: a.example\n    auth:\n      type: command\n" + auth)
    with pytest.raises(ConfigError) as info:
        load(path)
    return [p for p in info.value.problems if p.severity == "error"]


@pytest.mark.parametrize(
    ("auth", "where", "line", "message"),
    [
        ("      ttl: 5\n", "routes[0].auth", 6, "`argv` is required"),
        ("      argv: []\n", "routes[0].auth.argv", 7, "must name at least the program to run"),
        ("      argv: gcloud auth print-access-token\n", "routes[0].auth.argv", 7, "must be a list of strings"),
        ("      argv:\n        - gcloud\n        - {a: b}\n", "routes[0].auth.argv[1]", 9, "must be a string"),
        ("      argv: [gcloud, ~]\n", "routes[0].auth.argv[1]", 7, "must be a string"),
        ("      argv: [vault]\n      expiry_field: exp\n", "routes[0].auth.expiry_field", 8, "needs `json_field`"),
        ("      argv: [vault]\n      header: X-T\n      query: t\n", "routes[0].auth.query", 9, "not both"),
        (
            "      argv: [vault]\n      query: t\n      prefix: 'Bearer '\n",
            "routes[0].auth.prefix",
            9,
            "applies to a header",
        ),
        ("      argv: [vault]\n      timeout: 0\n", "routes[0].auth.timeout", 8, "must be a finite number >= 0.1"),
        ("      argv: [vault]\n      ttl: soon\n", "routes[0].auth.ttl", 8, "must be a number"),
        ("      argv: [vault]\n      json_field: a..b\n", "routes[0].auth.json_field", 8, "is not a field name"),
        ("      argv: [vault]\n      header: 'Bad Header'\n", "routes[0].auth.header", 8, "not a valid header name"),
        ("      argv: [vault]\n      shell: true\n", "routes[0].auth.shell", 8, "unknown key `shell`"),
    ],
)
def test_config_errors_have_path_and_line(tmp_path: Path, auth: str, where: str, line: int, message: str) -> None:
    errs = _errors(tmp_path, auth)
    assert len(errs) == 1, [str(e) for e in errs]
    assert (errs[0].path, errs[0].line) == (where, line), str(errs[0])
    assert message in errs[0].message


def test_parse_expiry_forms() -> None:
    now = 1_700_000_000.0
    assert parse_expiry(1_700_000_100, False, now) == 1_700_000_100
    assert parse_expiry("1700000100", False, now) == 1_700_000_100
    assert parse_expiry(1_700_000_100_000, False, now) == 1_700_000_100  # milliseconds
    assert parse_expiry("2023-11-14T22:15:00Z", False, now) == 1_700_000_100
    assert parse_expiry("2023-11-14T23:15:00.123456789+01:00", False, now) == pytest.approx(1_700_000_100.123456)
    assert parse_expiry("2023-11-14T22:15:00", False, now) == 1_700_000_100  # no zone: UTC
    assert parse_expiry(100, True, now) == now + 100
    assert parse_expiry("100", True, now) == now + 100
    for bad in ("soon", "", None, True, [], -5, float("nan")):
        assert parse_expiry(bad, False, now) is None
    assert parse_expiry("2023-11-14T22:15:00Z", True, now) is None


async def test_the_workers_metrics_folder_is_not_passed_to_the_helper(
    make_proxy, upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under `run --workers` the proxy's environment names its private metrics folder ($$ is a literal $).
    argv = '["sh", "-c", "printf %s tok-$${PROMETHEUS_MULTIPROC_DIR:-absent}-$${HOME:+home}"]'
    p = await _proxy(make_proxy, upstream, argv)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    async with httpx.AsyncClient(proxy=p.url) as client:
        r = await client.get(f"{upstream.url}/env")
    # The rest of the environment still reaches it (HOME here).
    assert _header(r.json(), "Authorization") == ["Bearer tok-absent-home"]
