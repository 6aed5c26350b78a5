"""Generated placeholders with a shared token store: every replica swaps the same one.

Two `authproxy run` processes, each with its own state directory, share a real
redis-server. A workload given the placeholder that `authproxy env
--placeholders` printed (from a third state directory) is swapped by both; no
replica keeps a placeholder of its own on disk; the record in Redis is sealed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx

from authproxy.secrecy.sealing import Sealer
from tests.support.proc import start_proxy
from tests.support.redisd import RedisServer, redis_server

from .conftest import Upstream, assert_no_secrets

__all__ = ["redis_server"]

KEY = base64.b64encode(os.urandom(32)).decode()
API_KEY = "shared-ph-api-key-6Kp1vQ"


def _config(tmp: Path, i: int, redis: RedisServer, upstream: Upstream) -> Path:
    path = tmp / f"routes{i}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            state_dir: {tmp / f"state{i}"}
            token_store: {{url: "{redis.url}", key: "${{STORE_KEY}}"}}
            routes:
              - name: llm
                match: {upstream.authority}
                auth: {{type: api_key, header: X-API-Key, value: "${{API_KEY}}",
                        placeholder: generate, placeholder_env: LLM_API_KEY, require: placeholder}}
            """
        )
    )
    return path


def _env_placeholder(config: Path, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "authproxy", "env", "-c", str(config), "--placeholders"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr
    m = re.search(r"LLM_API_KEY=['\"]?(authproxy-ph-llm-[0-9a-f]{32})", out.stdout)
    assert m is not None, out.stdout
    return m.group(1)


async def test_replicas_swap_the_one_placeholder_the_store_holds(
    tmp_path: Path, redis_server: RedisServer, upstream: Upstream
) -> None:
    env = {"STORE_KEY": KEY, "API_KEY": API_KEY}
    # Printed for the workload before any replica runs: made in the store, not on this disk.
    placeholder = await asyncio.to_thread(_env_placeholder, _config(tmp_path, 0, redis_server, upstream), env)
    assert not (tmp_path / "state0" / "placeholders").exists()
    procs = [
        await asyncio.to_thread(start_proxy, _config(tmp_path, i, redis_server, upstream), env=env) for i in (1, 2)
    ]
    try:
        for p in procs:
            async with httpx.AsyncClient(proxy=p.url, timeout=20) as c:
                ok = await c.get(f"http://{upstream.authority}/v1/models", headers={"X-API-Key": placeholder})
                assert ok.status_code == 200, ok.text
                refused = await c.get(
                    f"http://{upstream.authority}/v1/models", headers={"X-API-Key": "sk-real-looking"}
                )
                assert refused.status_code == 403
                assert refused.json()["error"] == "placeholder_required"
        # What arrived upstream: the real key each time, never the placeholder.
        sent = [v for r in upstream.seen for k, v in r["headers"] if k.lower() == "x-api-key"]
        assert sent == [API_KEY, API_KEY]
        for i in (1, 2):
            assert not (tmp_path / f"state{i}" / "placeholders").exists()
        # The store's record is sealed: neither the placeholder nor the key is readable in Redis.
        client = redis_server.client()
        blobs = b"".join(client.get(k) or b"" for k in client.keys("*"))
        assert placeholder.encode() not in blobs and API_KEY.encode() not in blobs
        assert any(
            Sealer(base64.b64decode(KEY)).open(client.get(k), k.decode()).get("value") == placeholder
            for k in client.keys("*")
            if client.type(k) == b"string"
        )
        # Printed again (another state dir): the same value.
        again = await asyncio.to_thread(_env_placeholder, _config(tmp_path, 3, redis_server, upstream), env)
        assert again == placeholder
    finally:
        for p in procs:
            p.stop()
    assert_no_secrets([p.stderr_text() for p in procs], [API_KEY, KEY])
