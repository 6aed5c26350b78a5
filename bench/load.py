"""Bench part: the load runs (wrk, hey) with the proxy metered, and the downloads."""

from __future__ import annotations

import json
import re
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clients import Clients
from constants import AUTH, BIG_BYTES, HOST, LUA
from logscan import connect_lines
from meter import Meter, rss_bytes, tree_pids
from procs import first_line, run
from targets import SCENARIOS, Target
from upstream import Upstream


class Load(Clients, Upstream):
    """The scenarios: load runs (wrk, hey) with the proxy metered, and the 100 MB downloads."""

    def wrk(
        self, port: int | None, secs: int, conns: int, scheme: str = "http", target: str | None = None
    ) -> dict[str, Any]:
        """wrk with wrk_absolute.lua; through a proxy, `target` (default nginx's /small.txt) is the
        absolute URL requested."""
        a = self.args
        if port:
            url, extra = f"http://{HOST}:{port}/", [target or self.url("/small.txt"), "-"]
        else:
            url, extra = self.url("/small.txt", scheme), ["-", AUTH]
        threads = min(a.threads, conns)
        cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--timeout", "5s", "-s", str(LUA)]
        r = run([*cmd, url, "--", *extra], secs + 30)
        m = re.search(r"WRKJSON (\{.*\})", r.stdout)
        if not m:
            raise RuntimeError(f"wrk exited {r.returncode}: {' '.join((r.stderr or r.stdout).split())[:200]}")
        return dict(json.loads(m.group(1)))

    def hey(self, port: int | None, secs: int) -> dict[str, Any]:
        """hey for `secs` s at --connections workers: HTTPS GETs straight to nginx's TLS port, or via
        `-x` (CONNECT, then TLS with the proxy's minted certificate; hey never verifies)."""
        cmd = ["hey", "-c", str(self.args.connections), "-z", f"{secs}s", "-t", "10"]
        if port:
            cmd += ["-x", f"http://{HOST}:{port}"]
        else:
            cmd += ["-H", f"Authorization: {AUTH}"]
        if self.https_port != 443:
            # hey copies Host, port included, into the TLS server name; a port-less Host makes it send
            # an IP, that is no SNI at all (see README, quirks).
            cmd += ["-host", HOST]
        r = run([*cmd, self.url("/small.txt", "https")], secs + 60)
        out = r.stdout
        m = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if not m:
            raise RuntimeError(f"hey exited {r.returncode}: {' '.join((r.stderr or out).split())[:200]}")
        codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
        errs = re.findall(r"^\s+\[(\d+)\]\s+(?!\d+ responses)(.*)$", out.split("Error distribution:")[-1], re.M)
        errs = errs if "Error distribution:" in out else []
        pct = dict(re.findall(r"(\d+)% in ([\d.]+) secs", out))
        return {
            "rps": float(m.group(1)),
            "p50_ms": float(pct["50"]) * 1e3 if "50" in pct else None,
            "p99_ms": float(pct["99"]) * 1e3 if "99" in pct else None,
            "requests": sum(codes.values()),
            "errors": sum(int(n) for n, _ in errs),
            "error_detail": "; ".join(f"{n}x {e[-100:]}" for n, e in errs[:3]),
            "non2xx": sum(n for c, n in codes.items() if not 200 <= c < 300),
            "codes": codes,
        }

    # -- scenarios -------------------------------------------------------------
    def _load(
        self, t: Target, proc: subprocess.Popen[bytes] | None, once: Callable[[int], dict[str, Any]], log: Path | None
    ) -> dict[str, Any]:
        """Warm-up, then the measured run of `once(secs)` with the proxy metered, the client's CPU
        time (RUSAGE_CHILDREN: only the client exits during the run) and nginx's accept counter.
        `log`: authproxy's log, whose CONNECT lines count the client's tunnels."""
        rss_before = rss_bytes(tree_pids(proc.pid)) if proc else 0
        if self.args.warmup:
            once(self.args.warmup)
        connects0 = connect_lines(log, settle=True) if log else (0, 0)  # the warm-up's tunnels too
        accepts0 = self.nginx_accepts()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with Meter(proc.pid if proc else None) as m:
            row = once(self.args.duration)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        accepts1 = self.nginx_accepts()
        client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        if row["requests"]:
            row["client_cpu_ms_per_1k"] = client_cpu * 1e3 / row["requests"] * 1000
        if accepts0 is not None and accepts1 is not None:
            row["nginx_conns"] = accepts1 - accepts0 - 1  # minus our own status request
        if log:
            connects1 = connect_lines(log, settle=True)
            row["client_conns"] = connects1[0] - connects0[0]
            row["client_tls_failed"] = connects1[1] - connects0[1]
        elif not t.is_proxy and "nginx_conns" in row:
            row["client_conns"] = row["nginx_conns"]
        row.update(m.fields(row["requests"]))
        if proc:  # growth counts from before the warm-up, which opens the connections
            row["start_rss_mb"] = rss_before / 2**20
        return row

    def wrk_once(self, port: int | None, conns: int, scheme: str = "http") -> Callable[[int], dict[str, Any]]:
        kinds = ("connect", "read", "write", "timeout")

        def once(secs: int) -> dict[str, Any]:
            j = self.wrk(port, secs, conns, scheme)
            return {
                "rps": j["requests"] / (j["duration_us"] / 1e6),
                "p50_ms": j["p50_us"] / 1e3,
                "p99_ms": j["p99_us"] / 1e3,
                "max_ms": j["max_us"] / 1e3,
                "requests": j["requests"],
                "errors": sum(j[k] for k in kinds),
                "error_detail": " ".join(f"{k}={j[k]}" for k in kinds if j[k]),
                "non2xx": j["status"],
            }

        return once

    def run_scenario(
        self, name: str, t: Target, proc: subprocess.Popen[bytes] | None, log: Path | None
    ) -> dict[str, Any]:
        port = t.port if t.is_proxy else None
        a = self.args
        if name in ("small", "small_wide", "small_tls_wrk"):
            conns = a.wide_connections if name == "small_wide" else a.connections
            scheme = SCENARIOS[name].scheme
            return self._load(t, proc, self.wrk_once(port, conns, scheme), None)
        if name == "small_tls":
            return self._load(t, proc, lambda secs: self.hey(port, secs), log if t.is_authproxy else None)
        return self.download(t, proc, SCENARIOS[name].scheme)

    def download(self, t: Target, proc: subprocess.Popen[bytes] | None, scheme: str) -> dict[str, Any]:
        # Right after a load run the next 100 MB GET is slowed for about a second; settle first.
        time.sleep(2)
        insecure = ("-k",) if t.insecure and scheme == "https" else ()
        with Meter(proc.pid if proc else None) as m:
            r = self.curl("/big.bin", t.port if t.is_proxy else None, self.client_headers(t),
                          timeout=self.args.download_timeout, scheme=scheme, extra=insecure)  # fmt: skip
        ok = r["code"] == 200 and r["size"] == BIG_BYTES
        return {
            "timed_out": "curl: (28)" in r["stderr"],
            "secs": r["secs"],
            "mb_s": r["size"] / 2**20 / r["secs"] if r["secs"] else 0.0,
            "size": r["size"],
            "errors": 0 if ok else 1,
            "error_detail": "" if ok else f"code={r['code']} size={r['size']} {first_line(r['stderr'])}",
            "non2xx": 0 if r["code"] == 200 else 1,
            **m.fields(None),
        }
