"""A sandboxed agent through the proxy: the OpenAI and Anthropic Python SDKs holding only placeholders.

The SDKs run in a process of their own, configured only by what
``authproxy env --placeholders`` prints, against a local HTTPS server that
speaks both APIs and checks the real keys. The server sees only the real
keys; nothing the SDKs received carries them.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
from pathlib import Path

import trustme
from aiohttp import web

from tests.support.llm_api import WORDS, LLMApi, app

from .conftest import assert_no_secrets

OPENAI_KEY = "sk-proj-REAL-openai-7d3f9a1b2c4e6f80"
ANTHROPIC_KEY = "sk-ant-api03-REAL-anthropic-5e8c1d2b"
ROOT = Path(__file__).resolve().parent.parent


async def _env(config: Path, port: int) -> dict[str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "authproxy", "env", "-c", str(config), "--listen", f"127.0.0.1:{port}",
        "--placeholders", stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and "API_KEY" not in k}
    for line in out.decode().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = value.strip("'")
    return env


async def test_openai_and_anthropic_sdks_hold_only_placeholders(make_proxy, secret_env, tmp_path: Path) -> None:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca_path = tmp_path / "api-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    api = LLMApi(OPENAI_KEY, ANTHROPIC_KEY)
    runner = web.AppRunner(app(api), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    secret_env("REAL_OPENAI", OPENAI_KEY)
    secret_env("REAL_ANTHROPIC", ANTHROPIC_KEY)
    try:
        p = await make_proxy(
            f"""
            routes:
              - name: openai
                match: api.openai.test
                upstream: https://127.0.0.1:{port}
                ca_file: {ca_path}
                auth:
                  type: api_key
                  prefix: "Bearer "
                  value: ${{REAL_OPENAI}}
                  placeholder: generate
                  placeholder_env: OPENAI_API_KEY
                  require: placeholder
              - name: anthropic
                match: api.anthropic.test
                upstream: https://127.0.0.1:{port}
                ca_file: {ca_path}
                auth:
                  type: api_key
                  header: x-api-key
                  value: ${{REAL_ANTHROPIC}}
                  placeholder: generate
                  placeholder_env: ANTHROPIC_API_KEY
                  require: placeholder
            """
        )
        p.secrets.update({OPENAI_KEY, ANTHROPIC_KEY})
        env = await _env(p.config_path, p.port)
        assert env["OPENAI_API_KEY"].startswith("authproxy-ph-openai-")
        assert env["ANTHROPIC_API_KEY"].startswith("authproxy-ph-anthropic-")
        env["OPENAI_BASE_URL"] = "https://api.openai.test/v1"
        env["ANTHROPIC_BASE_URL"] = "https://api.anthropic.test"
        env["PYTHONPATH"] = str(ROOT)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "tests/clients/agent_sdks.py"), env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-3000:]
    finally:
        await runner.cleanup()
    got = json.loads(out)
    text = "".join(WORDS)
    assert got["openai"] == text and got["anthropic"] == text
    assert got["openai_stream"] == WORDS and got["anthropic_stream"] == WORDS
    # The server was shown the real keys, only: never a placeholder, never anything else.
    assert api.refused == 0
    assert set(api.shown) == {f"Bearer {OPENAI_KEY}", ANTHROPIC_KEY}
    assert len(api.shown) == 4
    # Everything the SDKs received, and what they printed: no form of either key.
    assert any("text/event-stream" in line for line in got["received"])
    assert_no_secrets([out.decode(), err.decode(), *got["received"]], [OPENAI_KEY, ANTHROPIC_KEY])
    # A key of the workload's own instead of the placeholder is refused on a `require` route.
    env["OPENAI_API_KEY"] = "sk-proj-found-in-a-dotfile-0a1b2c3d"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "tests/clients/agent_sdks.py"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode != 0
    assert "PermissionDeniedError: Error code: 403" in err.decode()
    assert any("route=openai status=403" in x and "error=placeholder_required" in x for x in p.access_lines())
    assert len(api.shown) == 4  # the server never saw that request
