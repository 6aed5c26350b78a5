"""`authproxy env` and local upstreams: NO_PROXY leaves loopback out when a route matches it.

The value is read back from the real command's output; the end-to-end tests run
a real `authproxy run`, an HTTPS upstream on 127.0.0.1 with its own CA (trustme)
that answers 401 without the route's token, and curl in a shell that only
evaluated what `authproxy env` printed. The "Local upstreams" example of
docs/clients.md is taken from that page itself and run as written, so the two
cannot drift.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from tests.support.proc import ProxyProcess, start_proxy

from .conftest import assert_no_secrets

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "local-upstream-token-6d2f83c1a9"
TIMEOUT = 60.0
DEFAULT = "localhost,127.0.0.1,::1"


def _env_output(config: Path, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "authproxy", "env", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def _config(tmp_path: Path, routes: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(f"state_dir: {tmp_path / 'st'}\nroutes:\n{textwrap.indent(textwrap.dedent(routes), '  ')}")
    return path


def _no_proxy(out: str) -> str:
    values = {v for n, v in re.findall(r"^export (NO_PROXY|no_proxy)='(.*)'$", out, re.M)}
    assert len(values) == 1, out
    return values.pop()


def _route(name: str, match: str, extra: str = "") -> str:
    return f"""
    - name: {name}
      match: "{match}"
      {extra}
      auth: {{type: bearer, token: "{TOKEN}"}}
    """


@pytest.mark.parametrize(
    "match",
    ["localhost", "LocalHost.", "localhost:8443", "127.0.0.1", "127.7.0.9:9000", "[::1]:8443", "*.localhost",
     "dev.localhost", "*.dev.localhost:*", "localhost/v1"],
)  # fmt: skip
def test_a_loopback_match_leaves_loopback_out_of_no_proxy(tmp_path: Path, match: str) -> None:
    out = _env_output(_config(tmp_path, _route("others", "api.example") + _route("dev", match)))
    first, *rest = out.splitlines()
    assert first.startswith("# NO_PROXY leaves out localhost, 127.0.0.1 and ::1 for route dev (it matches")
    assert "others" not in first
    assert _no_proxy(out) == ""
    assert all(line.startswith("export ") for line in rest)


@pytest.mark.parametrize(
    "routes",
    [
        _route("named", "api.test", "upstream: https://localhost:18443"),  # clients send api.test to the proxy
        _route("named", "localhost.example.com"),
        _route("named", "*.example.com"),
        _route("named", "10.1.2.3:8443"),
        _route("named", "localhostx"),
        '- {name: gw, gateway: /gw, upstream: "http://127.0.0.1:9000", auth: {type: bearer, token: x-token-x}}',
    ],
)
def test_other_routes_keep_the_default(tmp_path: Path, routes: str) -> None:
    out = _env_output(_config(tmp_path, routes))
    assert not out.startswith("#") and "#" not in out
    assert _no_proxy(out) == DEFAULT


def test_no_proxy_flag_sets_exactly_what_it_is_given(tmp_path: Path) -> None:
    path = _config(tmp_path, _route("dev", "localhost:8443"))
    for given in ("localhost,corp.example", "", DEFAULT):
        out = _env_output(path, "--no-proxy", given)
        assert _no_proxy(out) == given
        assert "#" not in out


def test_the_note_names_every_loopback_route_and_is_a_comment_in_each_shell(tmp_path: Path) -> None:
    path = _config(tmp_path, _route("one", "localhost:1") + _route("far", "api.example") + _route("two", "[::1]"))
    sh = _env_output(path)
    assert sh.splitlines()[0].startswith("# NO_PROXY leaves out localhost, 127.0.0.1 and ::1 for routes one, two (they")
    for shell in ("fish", "powershell"):
        lines = _env_output(path, "--shell", shell).splitlines()
        assert lines[0] == sh.splitlines()[0]  # `#` opens a comment in sh, fish and PowerShell alike
        assert "set -gx NO_PROXY ''" in lines or "$env:NO_PROXY = ''" in lines
    # sh runs what follows the comment: every variable is set.
    r = subprocess.run(
        ["sh", "-c", 'eval "$1"; printf "%s|%s|%s" "${NO_PROXY-unset}" "$HTTPS_PROXY" "$PIP_CERT"', "sh", sh],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert r.stdout == f"|http://127.0.0.1:8080|{tmp_path / 'st' / 'ca-bundle.pem'}", r.stderr


@asynccontextmanager
async def _local_service(tmp_path: Path) -> AsyncIterator[tuple[int, Path, list[bool]]]:
    """A service on 127.0.0.1 whose certificate names localhost (its own CA); yields port, CA path, credential seen."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    ca_path = tmp_path / "dev-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    seen: list[bool] = []

    async def handler(request: web.Request) -> web.Response:
        ok = request.headers.get("Authorization") == f"Bearer {TOKEN}"
        seen.append(ok)
        return web.Response(
            text=f"service saw {request.path}\n" if ok else "no credential\n", status=200 if ok else 401
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    try:
        yield runner.addresses[0][1], ca_path, seen
    finally:
        await runner.cleanup()


async def _shell(script: str, proxy: ProxyProcess, cwd: Path, home: Path) -> tuple[int, str, str]:
    """Runs `script` in sh as a user would, `authproxy` being this checkout pointed at the running proxy's port."""
    env = {
        k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.endswith(("_CA_BUNDLE", "CERT_FILE"))
    }
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), AP_PYTHON=sys.executable, AP_PORT=str(proxy.port))
    prelude = 'set -e\nauthproxy() { "$AP_PYTHON" -m authproxy "$@" --listen "127.0.0.1:$AP_PORT"; }\n'
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", prelude + script, cwd=cwd, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_route_on_localhost_is_reached_through_the_proxy(tmp_path: Path) -> None:
    async with _local_service(tmp_path) as (port, ca, seen):
        path = _config(tmp_path, _route("dev", f"localhost:{port}", f"ca_file: {ca}"))
        p = start_proxy(path)
        try:
            url = f"https://localhost:{port}/v1/things"
            rc, out, err = await _shell(f'eval "$(authproxy env -c {path})"\ncurl -sS {url}', p, tmp_path, tmp_path)
            assert (rc, out) == (0, "service saw /v1/things\n"), err
            assert seen == [True]
            # The same shell with the old default NO_PROXY goes straight to the
            # service, whose certificate the bundle does not trust (curl: 60).
            script = f'eval "$(authproxy env -c {path} --no-proxy {DEFAULT})"\ncurl -sS {url}'
            rc, out, err = await _shell(script, p, tmp_path, tmp_path)
            assert rc == 60 and seen == [True], err
        finally:
            assert p.stop() == 0, p.stderr_text()
        assert any(f"GET intercept localhost:{port} /v1/things route=dev status=200" in x for x in p.err_lines)
        assert_no_secrets(p.err_lines, [TOKEN])


def _clients_section(title: str) -> str:
    text = (ROOT / "docs" / "clients.md").read_text() + "\n## "
    start = text.index(f"\n## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _block(section: str, lang: str) -> str:
    blocks = re.findall(rf"^```{lang}\n(.*?)^```$", section, re.M | re.S)
    assert len(blocks) == 1, f"docs/clients.md, Local upstreams: expected one ```{lang} block"
    return str(blocks[0])


async def test_the_readme_local_upstream_example_as_written(tmp_path: Path) -> None:
    """docs/clients.md's YAML and commands, run by a new user: only the service's port and the token differ."""
    section = _clients_section("Local upstreams")
    yaml_text, commands = _block(section, "yaml"), _block(section, "sh").splitlines()
    first, second, rest = commands[0], commands[1], commands[2:]
    assert re.match(r"export LOCAL_API_TOKEN=\.\.\.\s", first), first
    assert re.match(r"authproxy run -c local\.yaml &\s", second), second
    assert "localhost:18443" in yaml_text and "${LOCAL_API_TOKEN}" in yaml_text
    home = tmp_path / "home"
    home.mkdir()
    async with _local_service(tmp_path) as (port, _ca, seen):
        # dev-ca.pem (the example's `ca_file`) is the service's CA, next to local.yaml.
        (tmp_path / "local.yaml").write_text(yaml_text.replace("localhost:18443", f"localhost:{port}"))
        p = start_proxy(tmp_path / "local.yaml", env={"LOCAL_API_TOKEN": TOKEN, "HOME": str(home)})
        try:
            script = f"export LOCAL_API_TOKEN={TOKEN}\n" + "\n".join(rest)
            rc, out, err = await _shell(script, p, tmp_path, home)
        finally:
            assert p.stop() == 0, p.stderr_text()
    assert (rc, out) == (0, "service saw /v1/things\n"), err
    assert seen == [True]
    assert any("GET intercept api.test:443 /v1/things route=local-api status=200" in x for x in p.err_lines)
    assert (home / ".local/state/authproxy/ca-bundle.pem").is_file()  # the default state_dir, as a user's
    assert_no_secrets(p.err_lines, [TOKEN])
