"""What runs when: one target's round, the extras' loops, and the progress lines they print."""

from __future__ import annotations

import json
import subprocess
import time
from typing import TYPE_CHECKING, Any

from facts import code_fingerprint
from logscan import scan_peer_log, scan_proxy_log
from meter import load1, rss_bytes, tree_pids
from procs import stop
from targets import Target

if TYPE_CHECKING:
    from harness import Bench


def show(what: str, row: dict[str, Any]) -> None:
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items() if k not in ("scenario", "stop")}
    print(f"  {what}: {json.dumps(shown)}", flush=True)


def run_round(b: Bench, rep: int, t: Target, results: list[dict[str, Any]]) -> dict[str, Any]:
    """One target in one round: start it fresh, time its first requests, check it, run the scenarios."""
    proc: subprocess.Popen[bytes] | None = None
    tag = f"round{rep + 1}"
    info: dict[str, Any] = {"rep": rep, "target": t.name}
    log = b.proxy_log(t, tag) if t.is_proxy else None
    todo = [s for s in b.scenarios if t.runs(s)]
    try:
        if t.is_proxy:
            if t.is_authproxy:
                info["code"] = code_fingerprint()
            t0 = time.monotonic()
            proc = b.start(t, tag)
            info["start_s"] = round(time.monotonic() - t0, 3)
            info["idle_rss_mb"] = round(rss_bytes(tree_pids(proc.pid)) / 2**20, 1)
        info["first"] = b.first_requests(t)
        info["verify"] = b.verify(t)
        print(f"[round {rep + 1}/{b.args.repeat}] {t.name}: start {info.get('start_s', '-')} s, first {info['first']}")
        print(f"  verify {info['verify']}", flush=True)
        for name in todo:
            row: dict[str, Any] = {"scenario": name, "target": t.name, "rep": rep, "load1": load1()}
            try:
                row.update(b.run_scenario(name, t, proc, log))
            except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as e:
                row["failed"] = f"{type(e).__name__}: {e}"
            if proc is not None and proc.poll() is not None:
                died = f"{t.name} exited {proc.returncode}"
                row["failed"] = f"{row['failed']}; {died}" if "failed" in row else died
            results.append(row)
            show(name, row)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        info["failed"] = f"{type(e).__name__}: {e}"
        print(f"  {t.name} failed: {info['failed']}", flush=True)
        done = {r["scenario"] for r in results if r["target"] == t.name and r["rep"] == rep}
        results += [
            {"scenario": s, "target": t.name, "rep": rep, "failed": info["failed"]} for s in todo if s not in done
        ]
    finally:
        if proc is not None:
            info["stop"] = stop(proc)
            print(f"  {t.name} stop: {info['stop']}", flush=True)
        if log is not None and log.exists():
            info["log"] = str(log)
            if t.is_authproxy:
                scan = info["log_scan"] = scan_proxy_log(log)
                print(
                    f"  {t.name} log: {scan['access_lines']} access lines, {scan['non2xx_lines']} "
                    f"non-2xx, {scan['problem_lines']} warnings/errors/tracebacks",
                    flush=True,
                )
            else:
                info["log_scan"] = scan_peer_log([log, *sorted((b.work / t.name).glob("cache-*.log"))])
    return info


def run_cold(b: Bench, extras: list[Target], cold: list[dict[str, Any]]) -> None:
    """The cold extra: --cold-runs cold starts per variant, each row appended to `cold` as it comes."""
    for t in extras:
        print(f"[cold start with a token fetch: {t.display}]", flush=True)
        for i in range(b.args.cold_runs):
            try:
                row = b.cold(t, i)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                row = {"scenario": "cold", "target": t.name, "rep": i, "failed": f"{type(e).__name__}: {e}"}
            cold.append(row)
            show(f"cold {i + 1}", row)


def run_scaling(b: Bench, extras: list[Target], results: list[dict[str, Any]]) -> None:
    """The scaling extra: --repeat rounds of every variant's curve, its rows appended to `results`."""
    args = b.args
    for rep in range(args.repeat):  # the variants interleaved, as in the rounds
        for t in extras:
            print(f"[scaling, round {rep + 1}/{args.repeat}: {t.display}]", flush=True)
            try:
                results += b.scaling(t, rep)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                results.append({"scenario": "scaling", "target": t.name, "rep": rep, "conns": 0,
                                "failed": f"{type(e).__name__}: {e}"})  # fmt: skip


def run_idle(b: Bench, extras: list[Target], idle: list[dict[str, Any]]) -> None:
    """The idle extra: plain and intercepted, per variant, each row appended to `idle`."""
    for t in extras:
        for scheme in ("http", "https"):
            print(f"[idle keep-alive connections, {scheme}: {t.display}]", flush=True)
            try:
                row = b.idle(t, scheme)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                row = {"target": t.name, "scheme": scheme, "failed": f"{type(e).__name__}: {e}"}
            idle.append(row)
            show(f"idle {scheme}", row)


def run_refresh(b: Bench, extras: list[Target], refresh: list[dict[str, Any]]) -> None:
    """The refresh extra: --refresh-runs forced refreshes per variant, each row appended to `refresh`."""
    for t in extras:
        print(f"[forced token refresh under load: {t.display}]", flush=True)
        for i in range(b.args.refresh_runs):
            try:
                row = b.refresh(t, i)
            except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as e:
                row = {"scenario": "refresh", "target": t.name, "rep": i, "failed": f"{type(e).__name__}: {e}"}
            refresh.append(row)
            show(f"refresh {i + 1}", {k: v for k, v in row.items() if k not in ("log_examples", "tokens")})
