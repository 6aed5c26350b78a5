"""The markdown report: its head, the tables in order, and the per-round lines."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from extra_tables import cold_tables, idle_table, refresh_tables, scaling_table
from round_tables import checks_table, download_table, small_table, summary_table

if TYPE_CHECKING:
    from harness import Bench
    from measured import Measured


def authproxy_round_lines(runs: list[dict[str, Any]]) -> list[str]:
    """One authproxy variant's rounds: code, start, stop and the scan of its log."""
    lines = []
    for r in runs:
        scan, st = r.get("log_scan", {}), r.get("stop", {})
        if r.get("failed") and "start_s" not in r:
            lines.append(f"- round {r['rep'] + 1}: FAILED to start: {r['failed']}")
            continue
        killed = " (KILLED)" if st.get("killed") else ""
        lines.append(
            f"- round {r['rep'] + 1}: code {r.get('code', '-')}; started in {r.get('start_s', '-')} s, idle RSS "
            f"{r.get('idle_rss_mb', '-')} MB; SIGTERM: exit {st.get('returncode', '-')}{killed} in "
            f"{st.get('stop_s', '-')} s; log: {scan.get('access_lines', 0)} access lines, "
            f"{scan.get('non2xx_lines', 0)} non-2xx, {scan.get('problem_lines', 0)} other lines"
            + (f"; FAILED: {r['failed']}" if r.get("failed") else "")
        )
        lines += [f"    - `{e}`" for e in scan.get("examples", [])[:4]]
    return lines


def render(b: Bench, m: Measured) -> str:
    """The whole markdown report: the head, every table, then the per-round lines."""
    head = report_head(b, m.command, m.started, m.facts, m.results)
    body = report_body(b, m.results, m.runs, m.cold, m.idle, m.refresh)
    tail = report_tail(b, m.runs)
    return "\n".join(head + body + tail)


def report_head(
    b: Bench, command: str, started: datetime.datetime, facts: dict[str, Any], results: list[dict[str, Any]]
) -> list[str]:
    """The command, the machine, the targets and the side-by-side table."""
    a = b.args
    code, code_end = facts.get("authproxy_code"), facts.get("authproxy_code_at_end")
    changed = f", CHANGED during the run (at the end {code_end}; per round below)" if code != code_end else ""
    peers = "; ".join(facts.get("peers", {}).values())
    return [
        f"Command: `{command}`, started {started.strftime('%Y-%m-%d %H:%M %Z')}.",
        f"Machine: {facts.get('cpus')} CPUs ({facts.get('cpu_model')}), {facts.get('mem_gb')} GB, "
        f"Linux {facts.get('kernel')}, load average {facts.get('load1_at_start')} at start; "
        f"{facts.get('proxy_stack')}; {facts.get('nginx')}; {facts.get('wrk')}; {facts.get('hey')}; "
        f"{facts.get('curl')}.",
        f"Peers: {peers or 'none'}.",
        f"authproxy source fingerprint (sha256 of authproxy/**/*.py): {code}{changed}.",
        "",
        "Targets:",
        "",
        *[f"- **{t.display}**: {t.missing or t.how}" for t in b.targets.values()],
        "",
        f"### Side by side: medians of {a.repeat} interleaved rounds ({a.warmup} s warm-up + {a.duration} s per "
        "load run; ratio to direct in brackets: req/s over direct's, download time over direct's)",
        "",
        *summary_table(b, results),
        "",
    ]


def report_body(
    b: Bench,
    results: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    cold: list[dict[str, Any]],
    idle: list[dict[str, Any]],
    refresh: list[dict[str, Any]],
) -> list[str]:
    """Every table in order, then the errors noted under them."""
    notes: list[str] = []
    parts: list[list[str]] = []
    for sc in ("small", "small_wide", "small_tls", "download", "download_tls"):
        if sc in b.scenarios:
            parts.append((small_table if sc.startswith("small") else download_table)(b, results, sc, notes))
    if "small_tls_wrk" in b.scenarios and "small_tls" not in b.scenarios:
        parts.append(small_table(b, results, "small_tls", notes))
    parts.append(cold_tables(b, runs, cold))
    for t in b.authproxies():  # the extras: a table per variant that ran them
        scaling = [r for r in results if r["scenario"] == "scaling" and r["target"] == t.name]
        if scaling:
            parts.append(scaling_table(b, t, scaling, notes))
    for i, t in enumerate(t for t in b.authproxies() if any(r["target"] == t.name for r in idle)):
        parts.append(idle_table(t, [r for r in idle if r["target"] == t.name], explain=i == 0))
    if refresh:
        parts.append(refresh_tables(b, results, refresh))
    parts.append(checks_table(b, runs))
    body = [ln for part in parts for ln in [*part, ""]]
    if notes:
        body += ["Errors (per run):", "", *notes, ""]
    return body


def report_tail(b: Bench, runs: list[dict[str, Any]]) -> list[str]:
    """Per round: each authproxy variant's start, stop and log; then the peers'."""
    tail: list[str] = []
    for t in b.authproxies():
        tail += [*([""] if tail else []), f"Per {t.display} round (a fresh process each round):", ""]
        tail += authproxy_round_lines([r for r in runs if r["target"] == t.name])
    peer_lines = peer_round_lines(b, runs)
    if peer_lines:
        tail += ["", "Peers (each started fresh every round):", "", *peer_lines]
    return tail


def peer_round_lines(b: Bench, runs: list[dict[str, Any]]) -> list[str]:
    """A line per peer: how it stopped each round and its log's problem lines, with a few examples."""
    peer_lines = []
    for name, t in b.targets.items():
        mine = [r for r in runs if r["target"] == name and t.is_proxy and not t.is_authproxy]
        if not mine:
            continue
        n = sum(r.get("log_scan", {}).get("problem_lines", 0) for r in mine)
        ex = {e for r in mine for e in r.get("log_scan", {}).get("examples", [])}
        st = " / ".join(
            f"exit {r.get('stop', {}).get('returncode', '-')}{' (KILLED)' if r.get('stop', {}).get('killed') else ''}"
            for r in mine
        )
        fails = [r["failed"] for r in mine if r.get("failed")]
        peer_lines.append(
            f"- {name}: stop per round: {st}; log lines with error/warning/traceback: {n}"
            + (f"; FAILED: {fails[0]}" if fails else "")
        )
        peer_lines += [f"    - `{e}`" for e in sorted(ex)[:3]]
    return peer_lines
