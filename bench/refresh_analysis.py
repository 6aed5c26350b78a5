"""The refresh extra's evidence: the upstream's admin answers, the workers, wrk_refresh.lua's records,
the proxy's log; the window and what the run failed to show."""

from __future__ import annotations

import http.client
import json
import math
import re
from pathlib import Path
from typing import Any

from constants import HOST
from logscan import scan_proxy_log


def ctl_json(port: int, method: str, path: str) -> dict[str, Any]:
    """A request to the refresh upstream's admin paths (straight, never through a proxy)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"{method} {path}: {resp.status} {body[:100]!r}")
    return dict(json.loads(body))


def worker_pids(log: Path) -> dict[int, int]:
    """authproxy --workers: worker number -> pid, from its `worker N (pid P) ready` lines."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return {int(n): int(p) for n, p in re.findall(r"worker (\d+) \(pid (\d+)\) ready", text)}


def shared_token_pid(state: Path, route: str) -> int | None:
    """The pid of the worker that wrote the route's shared token (authproxy/tokens/shared.py's record in
    the state store), None when there is none."""
    try:
        rec = json.loads((state / "tokens" / f"{route}.json").read_text())
        return int(rec["data"]["shared"]["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def maps_mention(pid: int, text: str) -> bool:
    """Does the process have a file whose path holds `text` mapped (a loaded C extension, say)?"""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any(text in ln for ln in f)
    except OSError:
        return False


Record = tuple[int, float, float, int, str]  # id, start, end (CLOCK_MONOTONIC s), status, X-Bench-Token


def read_refresh_records(prefix: Path) -> list[Record]:
    """wrk_refresh.lua's lines from every thread's file (PREFIX.1, ...), by answer time."""
    out: list[Record] = []
    for f in sorted(prefix.parent.glob(f"{prefix.name}.*")):
        with open(f) as lines:
            for ln in lines:
                p = ln.split()
                if len(p) == 5:
                    out.append((int(p[0]), float(p[1]), float(p[2]), int(p[3]), p[4]))
    out.sort(key=lambda r: r[2])
    return out


def pct(vals: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not vals:
        return None
    s = sorted(vals)
    return s[min(len(s), max(1, math.ceil(len(s) * q / 100))) - 1]


def latency_fields(prefix: str, recs: list[Record], span: float | None) -> dict[str, Any]:
    ms = [(r[2] - r[1]) * 1e3 for r in recs]
    out: dict[str, Any] = {f"{prefix}_n": len(recs)}
    if span:
        out[f"{prefix}_rps"] = len(recs) / span
    for name, q in (("p50", 50), ("p99", 99), ("max", 100)):
        out[f"{prefix}_{name}_ms"] = pct(ms, q)
    return out


def refresh_window(
    recs: list[Record], revoked: float, fetches: list[dict[str, Any]], skip: float = 0.5
) -> dict[str, Any]:
    """The refresh window of one run: from the revocation to the first 200 with a token issued after it.

    `before`: requests started `skip` s or more after the load began and answered before the
    revocation (the steady state); `window`: requests in flight during the window (started before its
    end, answered after the revocation); `after`: requests started after the window. Only requests
    paired with their start (the upstream echoed their X-Bench-Id) have a latency."""
    paired = [r for r in recs if r[0] >= 0 and r[1] >= 0]
    out: dict[str, Any] = {}
    new = [f for f in fetches if f["answered"] > revoked]
    out["fetches_before"] = len(fetches) - len(new)
    out["fetches_after"] = len(new)
    if not paired:
        return out
    t0 = min(r[1] for r in paired) + skip
    out["revoke_at_s"] = revoked - (t0 - skip)
    before = [r for r in paired if r[1] >= t0 and r[2] <= revoked]
    out.update(latency_fields("before", before, revoked - t0))
    end = None
    if new:
        out["revoke_to_fetch_ms"] = (new[0]["received"] - revoked) * 1e3
        out["fetch_ms"] = (new[0]["answered"] - new[0]["received"]) * 1e3
        issued = {f["token"] for f in new}
        end = min((r[2] for r in recs if r[3] == 200 and r[4] in issued), default=None)
    if end is None:
        return out  # no 200 with a new token: the window never closed (refresh_violations says so)
    out["window_ms"] = (end - revoked) * 1e3
    out["fetch_to_first_ms"] = (end - new[0]["answered"]) * 1e3
    out.update(latency_fields("window", [r for r in paired if r[1] < end and r[2] > revoked], None))
    out["window_answered"] = sum(1 for r in recs if revoked < r[2] < end)
    last = max(r[2] for r in paired)
    out.update(latency_fields("after", [r for r in paired if r[1] >= end], last - end))
    return out


def refresh_violations(row: dict[str, Any]) -> list[str]:
    """What the refresh run was to show and did not: one initial fetch, exactly one after the
    revocation, no 401 (nor any other error) reaching the client, a window that closed."""
    bad = []
    if row.get("fetches_before") != 1:
        bad.append(f"{row.get('fetches_before')} token fetches before the revocation (expected 1)")
    if row.get("fetches_after") != 1:
        bad.append(f"{row.get('fetches_after')} token fetches after the revocation (expected 1)")
    if row.get("client_401"):
        bad.append(f"{row['client_401']} 401s reached the client (expected 0)")
    if row.get("non2xx", 0) - row.get("client_401", 0) > 0:
        bad.append(f"{row['non2xx'] - row.get('client_401', 0)} other non-2xx reached the client")
    if row.get("errors"):
        bad.append(f"{row['errors']} socket errors ({row.get('error_detail')})")
    if row.get("unpaired"):
        bad.append(f"{row['unpaired']} answers without the request's X-Bench-Id")
    if "window_ms" not in row:
        bad.append("no 200 with a token issued after the revocation")
    if row.get("retry_skipped"):
        bad.append(f"{row['retry_skipped']} retry=skipped lines in the proxy's log")
    return bad


def wrk_refresh_fields(wrk_log: Path, records: Path, revoke: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """A refresh run's counts and its window: wrk's summary (in its log), wrk_refresh.lua's records
    (PREFIX `records`), the upstream's answer to the revocation and its stats."""
    found = re.search(r"WRKJSON (\{.*\})", wrk_log.read_text(errors="replace"))
    if not found:
        raise RuntimeError(f"wrk printed no summary; see {wrk_log}")
    j = json.loads(found.group(1))
    recs = read_refresh_records(records)
    kinds = ("connect", "read", "write", "timeout")
    out: dict[str, Any] = dict(
        requests=j["requests"],
        wrk_p99_ms=j["p99_us"] / 1e3,
        errors=sum(j[k] for k in kinds),
        error_detail=" ".join(f"{k}={j[k]}" for k in kinds if j[k]),
        non2xx=sum(1 for r in recs if not 200 <= r[3] < 300),
        client_401=sum(1 for r in recs if r[3] == 401),
        unpaired=sum(1 for r in recs if r[0] < 0),
        records=len(recs),
        upstream_401=stats["unauthorized_after_revoke"],
        upstream_refused_fetches=stats["refused_fetches"],
        revoked_token=revoke["token"],
        tokens=[f["token"] for f in stats["fetches"]],
    )
    out.update(refresh_window(recs, revoke["at"], stats["fetches"]))
    if stats["first_401_after_revoke"] is not None and "revoke_to_fetch_ms" in out:
        out["revoke_to_401_ms"] = (stats["first_401_after_revoke"] - revoke["at"]) * 1e3
        out["first_401_to_fetch_ms"] = out["revoke_to_fetch_ms"] - out["revoke_to_401_ms"]
    return out


def refresh_log_fields(log: Path) -> dict[str, Any]:
    """The proxy's log of a refresh run: its retry lines, non-2xx and problem lines, a few examples."""
    scan = scan_proxy_log(log)
    text = log.read_text(errors="replace")
    return dict(
        retry_done=text.count(" retry=done"),
        retry_skipped=text.count(" retry=skipped"),
        log_non2xx=scan["non2xx_lines"],
        log_problems=scan["problem_lines"],
        log_examples=scan["examples"][:4],
    )
