#!/usr/bin/env python3
"""authproxy benchmark: direct, authproxy and peer proxies side by side, in one run.

Starts nginx on 127.0.0.1 as the upstream, over plain HTTP and over TLS (a bench CA made in the
workdir signs its certificate; it answers 401 unless `Authorization: Bearer test-token` arrives,
so every 2xx proves the proxy injected the header), then alternates rounds in which every target
runs every scenario it can: direct (the client sets the header itself), authproxy (this
checkout), and the peers that are installed (--proxies): squid (request_header_add; ssl-bump
for HTTPS as `squid-bump`), tinyproxy (AddHeader, plain HTTP only), proxy.py (a plugin) and
mitmproxy (an addon). Every proxy is started fresh each round and stopped afterwards.

Scenarios (--scenarios):

  small          100-byte GET over plain HTTP, keep-alive, --connections (64) connections (wrk).
  small_wide     the same with --wide-connections (256).
  download       100 MB GET over plain HTTP with curl after a 2 s pause.
  download_tls   100 MB GET over HTTPS with curl --cacert (through a proxy: an intercepted CONNECT).
  small_tls      100-byte GET over HTTPS, keep-alive (hey): direct to nginx's TLS port, or through
                 an intercepted CONNECT (hey -x), each TLS connection kept for the whole run.
  small_tls_wrk  direct only: the same GET with wrk over TLS, the upstream's own limit.

After the rounds, for authproxy alone (--extras): `cold`, the first request after a start with an
empty token cache on a client_credentials route (a real token fetch from a token endpoint that
nginx serves); `scaling`, the plain small GET at --scaling-levels connections; `idle`, RSS per idle
keep-alive connection (plain and intercepted); `refresh`, a forced token refresh under load (the upstream
revokes the token mid-run: a burst of 401s, one fetch, and the latency the other requests see).

Load runs report req/s, p50/p99 latency, errors and non-2xx, connections opened, the client's
and the proxy's CPU time per 1000 requests and the proxy's peak RSS; downloads report seconds,
MB/s and the proxy's peak RSS and CPU. Medians over --repeat rounds are printed as markdown with
the ratio to direct; raw numbers go to WORKDIR/results.json, each process's log to WORKDIR/logs/.
Everything listens and connects on 127.0.0.1 only; every process started here is stopped (by
its own process group) on exit, Ctrl-C and errors included. Install with: bash bench/setup.sh.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import json
import os
import resource
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from constants import HOST, PROXY_ENV_VARS
from facts import code_fingerprint, machine_facts
from harness import Bench
from measured import Measured
from options import parse_args
from procs import stop_all
from report import render
from rounds import run_cold, run_idle, run_refresh, run_round, run_scaling
from targets import SCENARIOS, is_authproxy


def on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def prepare_process(args: argparse.Namespace) -> None:
    """No proxy from the environment, the highest open-files limit, the tools the run needs, and every
    process started here stopped on exit and on a signal."""
    for var in PROXY_ENV_VARS:  # nothing here may go through some other proxy
        os.environ.pop(var, None)
        os.environ.pop(var.upper(), None)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by nginx, the proxies and wrk
    need = {"curl", "openssl", *(SCENARIOS[s].tool for s in args.scenario_list)}
    need |= {"wrk"} if {"scaling", "refresh"} & set(args.extra_list) else set()
    for tool in sorted(need):
        if not shutil.which(tool):
            raise SystemExit(f"error: {tool} not found; run: bash bench/setup.sh")
    atexit.register(stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__)
    prepare_process(args)

    b = Bench(args)
    started = datetime.datetime.now().astimezone()
    command = shlex.join(["python3", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    m = Measured(command, started)
    results, runs = m.results, m.runs
    report = ""
    try:
        b.prepare()
        facts = m.facts = machine_facts(b)
        announce(b, facts)
        b.start_nginx()
        for scheme in ("http", "https"):
            gate = b.curl("/small.txt", None, scheme=scheme)
            if gate["code"] != 401:
                raise RuntimeError(f"nginx must answer 401 without the header over {scheme}, got {gate}")
        for rep in range(args.repeat):  # interleaved, so drifting noise hits every target alike
            for t in b.runnable():
                runs.append(run_round(b, rep, t, results))
        extras = b.authproxies(extras=True)  # the variants of --extras-workers
        if "cold" in args.extra_list:
            run_cold(b, extras, m.cold)
        if "scaling" in args.extra_list:
            run_scaling(b, extras, results)
        if "idle" in args.extra_list:
            run_idle(b, extras, m.idle)
        if "refresh" in args.extra_list:
            b.refresh_loop = "uvloop" if facts.get("uvloop") else "asyncio"
            run_refresh(b, extras, m.refresh)
        facts["authproxy_code_at_end"] = code_fingerprint()
        report = render(b, m)
        print("\n" + report)
    finally:
        stop_all()
        save(b, m, report)
    if args.out and report:
        Path(args.out).write_text(report + "\n")
    # Exit 1 when direct or any authproxy variant failed anywhere; the peers' errors are reported, not fatal.
    ours = [r for r in results + m.cold if r["target"] == "direct" or is_authproxy(r["target"])]
    failed = any("failed" in r or r.get("errors") or r.get("non2xx") for r in ours)
    failed = failed or any("failed" in r or r.get("errors") for r in m.idle)
    failed = failed or any("failed" in r or r.get("violations") for r in m.refresh)
    return 1 if failed else 0


def announce(b: Bench, facts: dict[str, Any]) -> None:
    """What this run uses: the workdir, the ports, what runs, the peers missing, the machine."""
    args = b.args
    ports = ", ".join(f"{t.name} {t.port}" for t in b.targets.values() if t.is_proxy)
    print(
        f"workdir {b.work}; nginx on {HOST}:{b.up_port} (TLS {b.https_port}, status {b.status_port}, token "
        f"{b.token_port}); proxies: {ports}; scenarios {','.join(b.scenarios)}; extras {','.join(args.extra_list)}"
    )
    for t in b.targets.values():
        if t.missing:
            print(f"{t.name}: {t.missing}")
    print(f"machine: {facts['cpus']} CPUs ({facts['cpu_model']}), {facts['proxy_stack']}", flush=True)


def save(b: Bench, m: Measured, report: str) -> None:
    """WORKDIR/results.json (everything measured, whatever got done) and results.md (the report)."""
    args = b.args
    out = {
        "command": m.command,
        "started": m.started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "args": vars(args),
        "ports": {
            "upstream": b.up_port,
            "https": b.https_port,
            "status": b.status_port,
            "token": b.token_port,
            **{t.name: t.port for t in b.targets.values() if t.is_proxy},
        },
        "targets": {
            n: {
                "label": t.display,
                "workers": t.workers,
                "how": t.how,
                "missing": t.missing,
                "insecure": t.insecure,
            }
            for n, t in b.targets.items()
        },
        "machine": m.facts,
        "runs": m.runs,
        "results": m.results,
        "cold": m.cold,
        "idle": m.idle,
        "refresh": m.refresh,
    }
    if b.work.exists():
        (b.work / "results.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
        if report:
            (b.work / "results.md").write_text(report + "\n")
        print(f"\nraw results: {b.work / 'results.json'}; logs: {b.logs}", flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; processes stopped", file=sys.stderr)
        sys.exit(130)
