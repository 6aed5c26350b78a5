"""The report's tables of the rounds: side by side, small GETs, downloads, checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cells import add_notes, errs_cell, fmt, label, med, ok_rows, pick, ratio, rss_cell
from targets import SCENARIOS

if TYPE_CHECKING:
    from harness import Bench


def summary_table(b: Bench, results: list[dict[str, Any]]) -> list[str]:
    """One row per target, the main scenarios side by side (details in the tables below)."""
    a = b.args

    def load_cell(sc: str, name: str) -> str:
        rows, base = ok_rows(pick(results, sc, name)), ok_rows(pick(results, sc, "direct"))
        if sc not in b.scenarios or not b.targets[name].runs(sc):
            return "-"
        v = med(rows, "rps")
        return "FAILED" if v is None else f"{v:.0f} ({ratio(v, med(base, 'rps'), '.3f')})"

    def dl_cell(sc: str, name: str) -> str:
        rows = [r for r in ok_rows(pick(results, sc, name)) if not r["errors"]]
        base = [r for r in ok_rows(pick(results, sc, "direct")) if not r["errors"]]
        if sc not in b.scenarios or not b.targets[name].runs(sc):
            return "-"
        v = med(rows, "secs")
        if v is not None:
            return f"{v:.2f} ({ratio(v, med(base, 'secs'), '.1f')})"
        slow = [r for r in ok_rows(pick(results, sc, name)) if r.get("timed_out")]
        return f"> {a.download_timeout} s ({fmt(med(slow, 'mb_s'), '.1f')} MB/s)" if slow else "FAILED"

    def cpu_cell(sc: str, name: str) -> str:
        return fmt(med(ok_rows(pick(results, sc, name)), "cpu_ms_per_1k"), ".0f")

    lines = [
        f"| target | plain GET, {a.connections} conns: req/s (x direct) | CPU ms / 1k req "
        f"| plain GET, {a.wide_connections} conns: req/s (x direct) | CPU ms / 1k req "
        f"| HTTPS GET, {a.connections} conns (hey): req/s (x direct) | CPU ms / 1k req "
        "| 100 MB plain: s (x direct) | 100 MB HTTPS: s (x direct) | peak RSS MB | errors + non-2xx, all runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t in b.targets.items():
        if t.missing:
            lines.append(f"| {t.display} | {t.missing} | | | | | | | | | |")
            continue
        mine = [r for r in results if r["target"] == name and r["scenario"] in SCENARIOS]
        if not t.is_proxy:
            mine = [r for r in mine if r["scenario"] != "small_tls_wrk"]
        peaks = [med(ok_rows(pick(results, sc, name)), "peak_rss_mb") for sc in b.scenarios]
        peak = max((p for p in peaks if p is not None), default=None)
        failed = sum(1 for r in mine if "failed" in r)
        errs = sum(r.get("errors", 0) + r.get("non2xx", 0) for r in mine if "failed" not in r)
        err_cell = f"{errs}" + (f", {failed} runs FAILED" if failed else "")
        lines.append(
            f"| {t.display} | {load_cell('small', name)} | {cpu_cell('small', name)} "
            f"| {load_cell('small_wide', name)} | {cpu_cell('small_wide', name)} "
            f"| {load_cell('small_tls', name)} | {cpu_cell('small_tls', name)} "
            f"| {dl_cell('download', name)} | {dl_cell('download_tls', name)} | {fmt(peak)} | {err_cell} |"
        )
    return lines


def small_table(b: Bench, results: list[dict[str, Any]], scenario: str, notes: list[str]) -> list[str]:
    """One small-GET table: `small`/`small_wide` (wrk, plain HTTP) or `small_tls` (hey, HTTPS) with
    the `small_tls_wrk` reference row (wrk straight to nginx over TLS) when it was run."""
    a = b.args
    tls = scenario == "small_tls"
    conns = a.wide_connections if scenario == "small_wide" else a.connections
    if tls:
        title = (
            f"### Small GET: 100 B over HTTPS, keep-alive, {conns} connections (hey; through a proxy: "
            f"hey -x, an intercepted CONNECT per connection; {a.warmup} s warm-up + {a.duration} s), "
            f"medians of {a.repeat}"
        )
        conn_col = "TLS conns opened: client / to nginx"
    else:
        title = (
            f"### Small GET: 100 B over plain HTTP, keep-alive, {conns} connections "
            f"(wrk -t{min(a.threads, conns)}, {a.warmup} s warm-up + {a.duration} s), medians of {a.repeat}"
        )
        conn_col = "conns to nginx"
    lines = [
        title,
        "",
        f"| target | req/s | x direct | p50 ms | p99 ms | errors + non-2xx per run | {conn_col} "
        "| client CPU ms / 1k req | proxy peak RSS MB (+growth) | proxy CPU ms / 1k req | runs (req/s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = ok_rows(pick(results, scenario, "direct"))
    rows_by_label = [(label(b, name, scenario), scenario, name) for name in b.targets]
    if tls and "small_tls_wrk" in b.scenarios:
        rows_by_label.append(("direct (wrk), reference", "small_tls_wrk", "direct"))
    for lab, sc, name in rows_by_label:
        rows = pick(results, sc, name)
        if not rows:
            continue
        ok = ok_rows(rows)
        v = med(ok, "rps")
        if tls:
            conn = f"{fmt(med(ok, 'client_conns'), '.0f')} / {fmt(med(ok, 'nginx_conns'), '.0f')}"
            failed = med(ok, "client_tls_failed")
            conn += f" ({failed:.0f} client TLS failed)" if failed else ""
        else:
            conn = fmt(med(ok, "nginx_conns"), ".0f")
        lines.append(
            f"| {lab} | {fmt(v, '.0f')} | {ratio(v, med(base, 'rps'), '.3f')} "
            f"| {fmt(med(ok, 'p50_ms'), '.2f')} | {fmt(med(ok, 'p99_ms'), '.2f')} | {errs_cell(rows)} | {conn} "
            f"| {fmt(med(ok, 'client_cpu_ms_per_1k'), '.0f')} | {rss_cell(ok)} "
            f"| {fmt(med(ok, 'cpu_ms_per_1k'), '.0f')} | {' '.join(fmt(r.get('rps'), '.0f') for r in rows)} |"
        )
        add_notes(notes, rows, sc)
    return lines


def download_table(b: Bench, results: list[dict[str, Any]], scenario: str, notes: list[str]) -> list[str]:
    a = b.args
    what = (
        "HTTPS, curl --cacert (through a proxy: curl -x, an intercepted CONNECT)"
        if scenario == "download_tls"
        else "plain HTTP, curl"
    )
    lines = [
        f"### 100 MB download: {what}, after a 2 s pause, medians of {a.repeat}",
        "",
        "| target | time s | MB/s | x direct time | proxy peak RSS MB (+growth) | proxy CPU s | errors per run "
        "| runs (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = [r for r in ok_rows(pick(results, scenario, "direct")) if not r["errors"]]
    for name in b.targets:
        rows = pick(results, scenario, name)
        if not rows:
            continue
        ran = ok_rows(rows)  # RSS and CPU of a timed-out run count too (up to the timeout)
        ok = [r for r in ran if not r["errors"]]
        v = med(ok, "secs")
        if v is None and any(r.get("timed_out") for r in ran):
            speed = f"> {a.download_timeout} s | {fmt(med(ran, 'mb_s'), '.1f')} (until the timeout)"
        else:
            speed = f"{fmt(v, '.3f')} | {fmt(med(ok, 'mb_s'), '.0f')}"
        each = " ".join(
            f"timeout ({r['size'] / 2**20:.0f} MB)" if r.get("timed_out") else fmt(r.get("secs"), ".3f") for r in rows
        )
        lines.append(
            f"| {label(b, name, scenario)} | {speed} | {ratio(v, med(base, 'secs'), '.2f')} | {rss_cell(ran)} "
            f"| {fmt(med(ran, 'cpu_s'), '.2f')} | {errs_cell(rows, True)} | {each} |"
        )
        add_notes(notes, rows, scenario)
    return lines


def checks_table(b: Bench, runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "### Checks per target (curl, each round; a value that differed between rounds is listed per round)",
        "",
        "| target | plain: GET | replaces the client's Authorization | keep-alive | HTTPS: GET (curl verifies "
        "the minted certificate) | replaces the client's Authorization | keep-alive in the tunnel |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = ("http", "http_replaces", "http_keepalive", "https", "https_replaces", "https_keepalive")
    for name, t in b.targets.items():
        mine = [r.get("verify", {}) for r in runs if r["target"] == name and "verify" in r]
        if not mine:
            continue
        cells = []
        for k in keys:
            vals = [str(v.get(k, "-")) for v in mine]
            cells.append(vals[0] if len(set(vals)) == 1 else " / ".join(vals))
        lines.append(f"| {t.display} | {' | '.join(c.replace('|', '/') for c in cells)} |")
    return lines
