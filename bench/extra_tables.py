"""The report's tables of the extras: starts and cold starts, scaling, idle RSS, refresh."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cells import add_notes, errs_cell, fmt, med, ok_rows, pick, rss_cell
from targets import Target

if TYPE_CHECKING:
    from harness import Bench


def cold_tables(b: Bench, runs: list[dict[str, Any]], cold: list[dict[str, Any]]) -> list[str]:
    a = b.args
    lines = [
        f"### Start and first requests, every target (static credential), medians of {a.repeat}",
        "",
        "Right after each round's start: curl, a new connection per request; the first request through a proxy "
        "opens its first upstream connection, and over HTTPS mints the leaf for 127.0.0.1.",
        "",
        "| target | start s (spawn to accepting) | idle RSS MB | 1st plain GET ms | 2nd plain GET ms "
        "| 1st HTTPS GET ms | 2nd HTTPS GET ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in b.targets.items():
        mine = [r for r in runs if r["target"] == name and "first" in r]
        if not mine:
            continue
        firsts = [r["first"] for r in mine]
        cells = [fmt(med(firsts, f"{n}_{s}_ms"), ".1f") for s in ("http", "https") for n in ("first", "second")]
        lines.append(
            f"| {t.display} | {fmt(med(mine, 'start_s'), '.2f') if t.is_proxy else '-'} "
            f"| {fmt(med(mine, 'idle_rss_mb'))} | {' | '.join(cells)} |"
        )
    explained = False
    for t in b.authproxies():  # a table per variant that ran the cold starts
        mine = [r for r in cold if r["target"] == t.name]
        if not mine:
            continue
        lines += [
            "",
            f"### Cold start with a token fetch ({t.display}, client_credentials), medians of {len(mine)}",
            "",
        ]
        if not explained:
            lines += [
                "A fresh authproxy with an empty state dir (no stored token) and one `client_credentials` route "
                f"(`client_secret_basic`) whose token endpoint is nginx on 127.0.0.1:{b.token_port} (a real HTTP "
                "POST answered with a JSON token; it checks the client's Basic credentials). The first GET "
                "through the proxy fetches the token, then is injected; the second uses the cached token.",
                "",
            ]
            explained = True
        lines += cold_table(mine)
    return lines


def cold_table(cold: list[dict[str, Any]]) -> list[str]:
    """One variant's cold starts: a measure per line, the median and every run."""
    own = med(cold, "token_endpoint_ms")
    lines = ["| measure | median | runs |", "|---|---|---|"]
    for key, what, spec in (
        ("token_endpoint_ms", "token endpoint alone: curl POST, new connection, ms", ".1f"),
        ("start_s", "start: spawn to accepting, s", ".2f"),
        ("first_ms", "1st GET through the proxy, token fetch included, ms", ".1f"),
        ("beyond_token_ms", "of which beyond the token endpoint's own time, ms", ".1f"),
        ("second_ms", "2nd GET (token cached), ms", ".1f"),
        ("spawn_to_first_s", "spawn to the 1st injected response, s", ".2f"),
        ("fetches", "token fetches per cold start (nginx's log)", ".0f"),
    ):
        lines.append(f"| {what} | {fmt(med(cold, key), spec)} | {' '.join(fmt(r.get(key), spec) for r in cold)} |")
    bad = [r for r in cold if r.get("errors") or "failed" in r]
    if bad:
        lines.append(f"\n{len(bad)} cold start(s) FAILED or not 200 with one fetch: {bad[0]}")
    if own is None:
        lines.append("\nThe token endpoint did not answer 200 to the direct POST.")
    return lines


def scaling_table(b: Bench, t: Target, rows: list[dict[str, Any]], notes: list[str]) -> list[str]:
    """The scaling curve of one authproxy variant: a line per connection count."""
    a = b.args
    lines = [
        f"### Scaling: {t.display}, plain small GET (wrk) at 1 to {max(a.scaling_list)} connections, medians of "
        f"{a.repeat} (a fresh proxy per round, levels ascending, {a.warmup} s warm-up + {a.duration} s each)",
        "",
        "| connections | req/s | p50 ms | p99 ms | errors + non-2xx per run | conns to nginx "
        "| proxy peak RSS MB (+growth) | proxy CPU ms / 1k req | runs (req/s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for conns in a.scaling_list:
        mine = [r for r in rows if r["conns"] == conns]
        ok = ok_rows(mine)
        lines.append(
            f"| {conns} | {fmt(med(ok, 'rps'), '.0f')} | {fmt(med(ok, 'p50_ms'), '.2f')} "
            f"| {fmt(med(ok, 'p99_ms'), '.2f')} | {errs_cell(mine)} | {fmt(med(ok, 'nginx_conns'), '.0f')} "
            f"| {rss_cell(ok)} | {fmt(med(ok, 'cpu_ms_per_1k'), '.0f')} "
            f"| {' '.join(fmt(r.get('rps'), '.0f') for r in mine)} |"
        )
        add_notes(notes, mine, f"scaling {conns}")
    return lines


def idle_table(t: Target, rows: list[dict[str, Any]], explain: bool = True) -> list[str]:
    """RSS per idle connection of one authproxy variant: plain, then intercepted."""
    lines = [f"### RSS per idle keep-alive connection: {t.display}", ""]
    if explain:
        lines += [
            "A fresh proxy per line, one warm-up request, then N client connections (32 at a time) that each "
            "send one GET and stay open; RSS is read 2 s after the last one answered. Intercepted: each "
            "connection is a CONNECT, a TLS handshake verifying the minted leaf, then the GET inside.",
            "",
        ]
    lines += [
        "| connections | N (answered) | proxy RSS before MB | with N idle MB | KiB per connection "
        "| upstream conns opened | time to open all s | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['scheme']} | FAILED: {r['failed'][:100]} | | | | | | |")
            continue
        kind = "plain HTTP" if r["scheme"] == "http" else "intercepted HTTPS"
        ex = f" ({'; '.join(r['error_examples'])})" if r["errors"] else ""
        lines.append(
            f"| {kind} | {r['conns']} ({r['ok']}) | {r['rss_before_mb']:.1f} | {r['rss_after_mb']:.1f} "
            f"| {fmt(r['kb_per_conn'], '.0f')} | {fmt(r['upstream_conns'], '.0f')} | {r['opened_s']:.2f} "
            f"| {r['errors']}{ex} |"
        )
    return lines


def refresh_tables(b: Bench, results: list[dict[str, Any]], refresh: list[dict[str, Any]]) -> list[str]:
    """The forced refresh under load: a table per variant, a measure per line, the median and every run."""
    a = b.args
    lines = [
        f"### Forced token refresh under load ({a.connections} connections, the upstream revokes the token at "
        f"{a.refresh_revoke_at:g} s of {a.refresh_duration} s)",
        "",
        "Per run: a fresh upstream (`bench/refresh_upstream.py`, aiohttp on "
        f"{b.refresh_loop}: a resource that takes only the token its endpoint issued last, and an OAuth "
        f"client_credentials token endpoint that waits {a.refresh_delay_ms:g} ms per fetch) and a fresh authproxy "
        "(empty state dir) with one `client_credentials` route to it; one GET (the initial fetch), "
        f"{a.warmup} s of warm-up, then wrk (`wrk_refresh.lua`: every request timed, paired with its answer by "
        "an `X-Bench-Id` the upstream echoes). At the revocation the token is refused: the requests in flight "
        "get a 401 upstream, the proxy forces one fetch, they join it and are retried once. The window runs "
        "from the revocation to the first 200 with the new token. Steady state before: requests started "
        "0.5 s or more into the load and answered before the revocation; in the window: requests started "
        "before its end and answered after the revocation; after: started after the window.",
    ]
    for t in b.authproxies(extras=True):
        mine = [r for r in refresh if r["target"] == t.name]
        if mine:
            small = med(ok_rows(pick(results, "small", t.name)), "rps")
            lines += ["", f"#### {t.display}: {len(mine)} run(s)", "", *refresh_table(b, mine, small)]
    return lines


def refresh_table(b: Bench, mine: list[dict[str, Any]], small: float | None) -> list[str]:
    """One variant's refresh runs: a measure per line, the median and every run; then what went wrong."""
    a = b.args
    measures = [
        ("token fetches before the revocation (the initial one; expected 1)", "fetches_before", ".0f"),
        ("token fetches after the revocation (expected 1)", "fetches_after", ".0f"),
        ("401s the upstream sent after the revocation (the burst)", "upstream_401", ".0f"),
        ("proxy log: `retry=done` lines", "retry_done", ".0f"),
        ("proxy log: `retry=skipped` lines", "retry_skipped", ".0f"),
        ("401s seen by the client (expected 0)", "client_401", ".0f"),
        ("socket errors + other non-2xx at the client", "other_errors", ".0f"),
        ("revocation to the first 200 with the new token (the window), ms", "window_ms", ".1f"),
        ("of which: revocation to the first 401 the upstream sent, ms", "revoke_to_401_ms", ".1f"),
        ("of which: that 401 to the token request arriving (the proxy's reaction), ms", "first_401_to_fetch_ms", ".1f"),
        (f"of which: the token endpoint (its delay {a.refresh_delay_ms:g} ms), ms", "fetch_ms", ".1f"),
        ("of which: token answered to the first 200 with it, ms", "fetch_to_first_ms", ".1f"),
    ]
    for phase, what in (("before", "steady state before"), ("window", "in flight during the window"),
                        ("after", "after the window")):  # fmt: skip
        if phase != "window":
            measures.append((f"{what}: req/s", f"{phase}_rps", ".0f"))
        measures.append((f"{what}: requests", f"{phase}_n", ".0f"))
        measures += [(f"{what}: {q} ms", f"{phase}_{q}_ms", ".2f") for q in ("p50", "p99", "max")]
    measures += [
        ("requests answered inside the window", "window_answered", ".0f"),
        ("client (wrk) CPU ms / 1k req", "client_cpu_ms_per_1k", ".0f"),
        ("upstream (aiohttp) CPU ms / 1k req", "upstream_cpu_ms_per_1k", ".0f"),
        ("proxy CPU ms / 1k req", "cpu_ms_per_1k", ".0f"),
        ("proxy peak RSS MB", "peak_rss_mb", ".1f"),
    ]
    ok = [r for r in mine if "failed" not in r]
    lines = ["| measure | median | runs |", "|---|---|---|"]
    for what, key, spec in measures:
        lines.append(f"| {what} | {fmt(med(ok, key), spec)} | {' '.join(fmt(r.get(key), spec) for r in mine)} |")
    if small is not None:
        lines.append(f"\nFor scale: this variant's `small` scenario (nginx upstream, wrk) ran at {small:.0f} req/s.")
    notes: list[str] = []
    for r in mine:
        n = r["rep"] + 1
        if "failed" in r:
            notes.append(f"- run {n} FAILED: {r['failed']}")
        elif r.get("violations"):
            notes.append(f"- run {n}: {'; '.join(r['violations'])}.")
        if "refresh_fetcher" in r:
            loaded = ", ".join(f"worker {w}" for w in r.get("aiohttp_loaded", [])) or "none"
            notes.append(
                f"- run {n}: the initial token fetched by worker {r.get('initial_fetcher')}, the refresh by worker "
                f"{r['refresh_fetcher']}; aiohttp (the token client, imported on a worker's first fetch) was "
                f"loaded before the revocation in: {loaded}."
            )
        if len(r.get("tokens", [])) > 2:
            notes.append(f"- run {n}: tokens issued {', '.join(r['tokens'])} (revoked {r['revoked_token']}).")
        notes += [f"    - `{e}`" for e in r.get("log_examples", [])]
    return lines + (["", *notes] if notes else [])
