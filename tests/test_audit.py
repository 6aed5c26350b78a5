"""The audit trail: one JSON line per decision, no secret in it, rotated by size, a file per worker."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx

from authproxy.ops.accesslog import AccessRecord
from authproxy.ops.audit import AuditLog, file_for
from tests.support.proc import start_proxy

from .conftest import Upstream, assert_no_secrets

KEY = "sk-live-audit-REAL-9d8c7b6a5f4e3d2c"
PH = "authproxy-ph-audit-00112233445566778899"


def _config(tmp_path: Path, upstream: Upstream, audit: str) -> Path:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        f"""
state_dir: {tmp_path / "state"}
audit: {audit}
routes:
  - name: api
    match: {upstream.authority}
    upstream: http://{upstream.authority}
    allow: [{{methods: [GET], paths: [/v1/]}}]
    auth:
      type: api_key
      header: X-API-Key
      value: ${{AUDIT_KEY}}
      placeholder: {PH}
      require: placeholder
"""
    )
    return cfg


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


async def test_one_line_per_decision_and_no_secret(upstream: Upstream, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    p = start_proxy(_config(tmp_path, upstream, str(log)), env={"AUDIT_KEY": KEY})
    try:
        async with httpx.AsyncClient(proxy=p.url, trust_env=False) as client:
            ok = await client.get(f"{upstream.url}/v1/a", headers={"Authorization": f"Bearer {PH}"})
            required = await client.get(f"{upstream.url}/v1/a", headers={"Authorization": "Bearer sk-live-mine-0011"})
            denied = await client.post(f"{upstream.url}/v1/a?k={PH}")
            misdirected = await client.get(f"http://localhost:{upstream.port}/x", headers={"X-K": PH})
            passed = await client.get(f"http://localhost:{upstream.port}/y")
        assert KEY not in ok.text
        statuses = [r.status_code for r in (ok, required, denied, misdirected, passed)]
        assert statuses == [200, 403, 403, 403, 200]
    finally:
        assert p.stop() == 0
    lines = _lines(log)
    assert len(lines) == 5
    a, b, c, d, e = lines
    assert a["route"] == "api" and a["credential"] == "api_key" and a["sources"] == ["${AUDIT_KEY}"]
    assert a["injected"] == ["header:X-API-Key"] and a["placeholder"] == "swapped" and a["allow"] == "allowed"
    assert a["token"] == "fetched" and a["status"] == 200 and a["error"] is None
    assert a["scrubbed"] == len(KEY)  # the echo sent the injected key back; the client got it masked
    assert b["placeholder"] == "refused: required" and b["status"] == 403 and b["injected"] is None
    assert c["allow"] == "denied" and c["error"] == "denied"
    assert d["placeholder"] == "refused: misdirected" and d["route"] is None
    assert e["destination"] == "allowed" and e["route"] is None and e["status"] == 200
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert_no_secrets([log.read_text(), p.stderr_text()], [KEY])
    assert PH not in p.stderr_text()  # the guard logs the route's name, not the placeholder


def test_rotated_by_size_keeping_some(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    audit = AuditLog(log, 4096, 2).start()
    try:
        for i in range(200):
            audit.record(AccessRecord(method="GET", mode="plain", host="h.test", path=f"/{i}", status=200))
    finally:
        audit.close()
    names = sorted(x.name for x in tmp_path.iterdir())
    assert names == ["a.log", "a.log.1", "a.log.2"]
    for name in names:
        size = (tmp_path / name).stat().st_size
        assert size <= 4096
        assert all(json.loads(x)["host"] == "h.test" for x in (tmp_path / name).read_text().splitlines())
    assert _lines(log)[-1]["path"] == "/199"  # the newest lines are in the file itself


async def test_a_file_per_worker(upstream: Upstream, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    p = start_proxy(_config(tmp_path, upstream, str(log)), "--workers", "2", env={"AUDIT_KEY": KEY})
    try:
        async with httpx.AsyncClient(proxy=p.url, trust_env=False) as client:
            for _ in range(4):
                r = await client.get(f"{upstream.url}/v1/a", headers={"Authorization": f"Bearer {PH}"})
                assert r.status_code == 200
    finally:
        assert p.stop() == 0
    files = [file_for(log, 1), file_for(log, 2)]
    assert [f.name for f in files] == ["audit.log.w1", "audit.log.w2"]
    assert all(f.exists() for f in files) and not log.exists()
    assert sum(len(_lines(f)) for f in files) == 4
