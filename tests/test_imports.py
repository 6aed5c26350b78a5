"""What a running proxy loads: aiohttp only when a route's grant fetches from a token endpoint.

Observed from outside, as anyone could: a real ``authproxy run`` process, and
the shared objects in its ``/proc/PID/maps``. aiohttp's compiled extensions
(``_http_parser``, ``_http_writer``, ``_websocket``) are mapped as soon as any
part of it (client or web) is imported, so their absence means aiohttp was not.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.support.oauth_server import OAuthServer
from tests.support.proc import ProxyProcess, start_proxy

from .conftest import Upstream, assert_no_secrets

BEARER = "imports-bearer-token-5150"
CC_SECRET = "imports-client-secret-9090"

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/PID/maps")


def _aiohttp_extensions(p: ProxyProcess) -> set[str]:
    """The file names of aiohttp's compiled modules mapped into the proxy process."""
    maps = Path(f"/proc/{p.proc.pid}/maps").read_text()
    return set(re.findall(r"/aiohttp/(?:_websocket/)?(_\w+|\w+)\.[\w.-]*\.so$", maps, re.M))


async def _get_through(p: ProxyProcess, upstream: Upstream) -> None:
    """One request through the proxy, answered 200 by the upstream."""
    async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
        r = await client.get(f"{upstream.url}/one")
    assert r.status_code == 200, r.text


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(textwrap.dedent(text))
    return path


async def test_bearer_only_proxy_never_imports_aiohttp(tmp_path: Path, upstream: Upstream) -> None:
    path = _write(
        tmp_path,
        f"""
        state_dir: {tmp_path / "state"}
        routes:
          - name: local
            match: {upstream.authority}
            auth: {{type: bearer, token: "${{IMPORTS_BEARER}}"}}
        """,
    )
    p = start_proxy(path, env={"IMPORTS_BEARER": BEARER})
    try:
        await _get_through(p, upstream)
        assert ["Authorization", f"Bearer {BEARER}"] in upstream.seen[-1]["headers"]
        assert _aiohttp_extensions(p) == set(), p.stderr_text()
    finally:
        assert p.stop() == 0, p.stderr_text()
    assert_no_secrets(p.err_lines, [BEARER])


async def test_client_credentials_route_imports_aiohttp_at_start_and_fetches(
    tmp_path: Path, upstream: Upstream, oauth_server: OAuthServer
) -> None:
    """A table that will fetch imports the client at start, so no request waits on the import.

    Also the control that the maps check sees aiohttp. The session itself is
    made on the first fetch and closed at shutdown.
    """
    oauth_server.add_client("imports", CC_SECRET)
    path = _write(
        tmp_path,
        f"""
        state_dir: {tmp_path / "state"}
        routes:
          - name: local
            match: {upstream.authority}
            auth:
              type: client_credentials
              token_url: {oauth_server.token_url}
              client_id: imports
              client_secret: ${{IMPORTS_CC_SECRET}}
        """,
    )
    p = start_proxy(path, env={"IMPORTS_CC_SECRET": CC_SECRET})
    try:
        # Imported before any request: a cold import (~0.2 s) inside the first fetch, or inside the
        # refresh a burst of 401s waits on, made every waiting request that much slower.
        assert "_http_parser" in _aiohttp_extensions(p)
        await _get_through(p, upstream)
        issued = oauth_server.issued()
        assert len(issued) == 1
        assert ["Authorization", f"Bearer {issued[0]}"] in upstream.seen[-1]["headers"]
        assert "_http_parser" in _aiohttp_extensions(p)
    finally:
        assert p.stop() == 0, p.stderr_text()
    assert "Unclosed" not in p.stderr_text()  # the session made on first use is closed at shutdown
    assert_no_secrets(p.err_lines, [CC_SECRET, *oauth_server.issued()])


# The bound of `authproxy run` at rest, VmRSS of the one process. Measured with the shipped
# routes.yaml and uvloop on CPython 3.11 (x86-64, glibc): 35-36 MiB, of which ~14 MiB are the
# interpreter and the standard library's ssl/asyncio, ~9 MiB authproxy's own modules, yaml,
# prometheus_client and uvloop, the rest the heap. 45 MiB is the figure the proxy promises
# (docs/operations.md, "Memory"); the 10 MiB between leaves room for other builds of CPython, OpenSSL
# and the libraries, and fails when something heavy (aiohttp ~13 MiB, cryptography ~8 MiB,
# bcrypt) is loaded at start again.
AT_REST_KIB = 45 * 1024
HEAVY = ("/aiohttp/", "/cryptography/", "/bcrypt/", "/h11/")


def _status_kib(p: ProxyProcess, key: str) -> int:
    path = "smaps_rollup" if key == "Pss" else "status"
    for line in Path(f"/proc/{p.proc.pid}/{path}").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{p.proc.pid}/{path}")


async def test_shipped_routes_at_rest_stay_small(tmp_path: Path, upstream: Upstream) -> None:
    """`authproxy run` with the shipped routes.yaml: under 45 MiB of RSS, no heavy library loaded.

    The second start is measured: the first makes the local CA, which needs cryptography
    once; later starts check the CA's files with the ssl module and leave cryptography to
    the first intercepted host. The routes' variables are unset, as in a fresh install, so
    no route can fetch and aiohttp stays out too.
    """
    shipped = Path(__file__).resolve().parent.parent / "routes.yaml"
    config = tmp_path / "routes.yaml"
    config.write_text(shipped.read_text())
    env = {"HOME": str(tmp_path / "home")}
    first = start_proxy(config, env=env)
    assert first.stop() == 0, first.stderr_text()
    assert (tmp_path / "home/.local/state/authproxy/ca.pem").is_file()
    p = start_proxy(config, env=env)
    try:
        maps = Path(f"/proc/{p.proc.pid}/maps").read_text()
        assert [lib for lib in HEAVY if lib in maps] == [], "loaded at start"
        async with httpx.AsyncClient(proxy=p.url, timeout=30) as client:
            for i in range(20):  # unmatched traffic, tunnelled as `unmatched: tunnel` says
                r = await client.get(f"{upstream.url}/n{i}")
                assert r.status_code == 200, r.text
        rss, pss = _status_kib(p, "VmRSS"), _status_kib(p, "Pss")
        maps = Path(f"/proc/{p.proc.pid}/maps").read_text()
        assert [lib for lib in HEAVY if lib in maps] == [], "loaded by plain requests"
        assert pss <= rss
        assert rss < AT_REST_KIB, f"RSS {rss} KiB (PSS {pss} KiB) with the shipped routes.yaml"
    finally:
        assert p.stop() == 0, p.stderr_text()
