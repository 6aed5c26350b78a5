"""The cost of a parent proxy: small GETs through squid alone, authproxy alone, and authproxy chained through squid.

    python3 bench/parent.py [--rounds 3] [--duration 5] [--conns 64] [--https-port 443]

nginx on 127.0.0.1 is the upstream (plain HTTP and TLS, a 100-byte file, 401 unless
``Authorization: Bearer test-token`` arrives, so every 2xx through authproxy proves the
injection). squid-openssl is the parent, with Basic authentication (basic_ncsa_auth, an htpasswd
line from ``openssl passwd -apr1``). hey drives each target with the same load, round-robin:

- ``direct``: hey to nginx, sending the header itself;
- ``squid``: hey through squid (its credentials in the proxy URL), sending the header itself;
  HTTPS is a blind CONNECT tunnel;
- ``authproxy``: hey through authproxy (no parent), which injects the header; HTTPS intercepted;
- ``authproxy+squid``: the same authproxy config with ``upstream_proxy`` naming squid: plain
  GETs go absolute-form to squid on pooled connections, HTTPS intercepted and then a CONNECT
  tunnel through squid with TLS to nginx end to end.

Prints one markdown table of medians (req/s, p50 and p99 latency, the proxies' CPU ms per 1,000
requests read from /proc for their whole process groups: squid's with its auth helpers, authproxy's,
and both for the chain; non-2xx). On a shared machine CPU per request varies far less than req/s
does. Needs nginx, squid,
hey and openssl (``bash bench/setup.sh``); run as root from the project root (squid drops to the
``proxy`` user; port 443 avoids hey's SNI quirk, see README).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from constants import AUTH, HOST, SMALL_BODY, TOKEN
from procs import free_port, project_pythonpath, run, spawn, stop_all, wait_port

USER, PASSWORD = "bench", "bench-parent-password"
TARGETS = ("direct", "squid", "authproxy", "authproxy+squid")
GROUPS: dict[str, int] = {}  # process name -> its process group (spawn starts each in a session of its own)
CPU_OF = {"direct": (), "squid": ("squid",), "authproxy": ("authproxy",), "authproxy+squid": ("chained", "squid")}
TICK = os.sysconf("SC_CLK_TCK")


def group_cpu(names: tuple[str, ...]) -> float:
    """CPU seconds (user + system) used so far by every live process of the named groups."""
    total = 0
    wanted = {GROUPS[n] for n in names}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in wanted:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds of load per run (after 1 s of warm-up)")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--https-port", type=int, default=443)
    ap.add_argument("--workdir", default="")
    args = ap.parse_args()
    for tool in ("nginx", "squid", "hey", "openssl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"error: {tool} not found; run: bash bench/setup.sh")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="authproxy-parent-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    ports = {"http": free_port(), "squid": free_port(), "authproxy": free_port(), "chained": free_port()}
    try:
        ca = pki(work)
        start_nginx(work, ports["http"], args.https_port)
        start_squid(work, ports["squid"], args.https_port)
        for name, parent in (("authproxy", None), ("chained", ports["squid"])):
            start_authproxy(work, name, ports[name], ports["http"], args.https_port, ca, parent)
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for rnd in range(args.rounds):
            for scheme in ("http", "https"):
                for target in TARGETS:
                    r = load(target, scheme, ports, args)
                    results.setdefault((target, scheme), []).append(r)
                    print(f"round {rnd + 1} {scheme:5} {target:16} {r['rps']:8.0f} req/s "
                          f"p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms CPU {r['cpu']:.0f} ms/1k "
                          f"non-2xx {r['bad']:.0f}", flush=True)
        report(results, args, work)
    finally:
        stop_all()
    return 0


def pki(work: Path) -> Path:
    """A CA (the proxy's and the route's) and nginx's certificate for 127.0.0.1."""
    def ossl(*a: str) -> None:
        subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=work, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ossl("req", "-x509", *ec, "-days", "7", "-subj", "/CN=parent bench CA", "-keyout", "ca-key.pem", "-out", "ca.pem",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (work / "up.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    ossl("req", "-new", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "up-key.pem", "-out", "up.csr")
    ossl("x509", "-req", "-in", "up.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-set_serial", "7",
         "-days", "7", "-extfile", "up.ext", "-out", "up.pem")
    for key in ("ca-key.pem", "up-key.pem"):
        (work / key).chmod(0o600)
    return work / "ca.pem"


def start_nginx(work: Path, port: int, https_port: int) -> None:
    www = work / "www"
    www.mkdir(exist_ok=True)
    www.chmod(0o755)
    (www / "small.txt").write_bytes(SMALL_BODY)
    (www / "small.txt").chmod(0o644)
    user = "user nobody nogroup;" if os.geteuid() == 0 else ""
    conf = work / "nginx.conf"
    conf.write_text(f"""{user}
worker_processes 1;
pid {work}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-tmp;
  keepalive_requests 1000000;
  server {{
    listen {HOST}:{port};
    listen {HOST}:{https_port} ssl;
    ssl_certificate {work}/up.pem;
    ssl_certificate_key {work}/up-key.pem;
    root {www};
    if ($http_authorization != "{AUTH}") {{ return 401; }}
  }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    p = spawn([nginx, "-p", str(work), "-e", str(work / "nginx-error.log"), "-c", str(conf), "-g", "daemon off;"],
              work / "nginx.log")
    wait_port(port, p, work / "nginx.log")
    wait_port(https_port, p, work / "nginx.log")


def start_squid(work: Path, port: int, https_port: int) -> None:
    d = work / "squid"
    d.mkdir(exist_ok=True)
    line = subprocess.run(["openssl", "passwd", "-apr1", "-stdin"], input=PASSWORD, capture_output=True,
                          text=True, check=True).stdout.strip()
    (d / "htpasswd").write_text(f"{USER}:{line}\n")
    (d / "squid.conf").write_text(f"""http_port {HOST}:{port}
auth_param basic program /usr/lib/squid/basic_ncsa_auth {d}/htpasswd
auth_param basic children 4 startup=2
auth_param basic credentialsttl 1 hour
acl authenticated proxy_auth REQUIRED
acl tls_port port {https_port}
acl CONNECT method CONNECT
http_access deny CONNECT !tls_port
http_access allow authenticated
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_log {d}/cache.log
pid_filename {d}/squid.pid
coredump_dir {d}
netdb_filename none
pinger_enable off
via off
forwarded_for delete
shutdown_lifetime 0 seconds
max_filedescriptors 16384
""")
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "proxy:proxy", str(d)], check=True)
    squid = shutil.which("squid") or "/usr/sbin/squid"
    p = spawn([squid, "-N", "-f", str(d / "squid.conf")], work / "squid.log")
    GROUPS["squid"] = p.pid
    wait_port(port, p, work / "squid.log", timeout=30)


def start_authproxy(work: Path, name: str, port: int, up: int, https_port: int, ca: Path, parent: int | None) -> None:
    via = f"upstream_proxy: http://${{PARENT_USER}}:${{PARENT_PASSWORD}}@{HOST}:{parent}\n" if parent else ""
    routes = work / f"routes-{name}.yaml"
    routes.write_text(f"""listen: {HOST}:{port}
state_dir: {work}/state-{name}
ca_cert: {ca}
ca_key: {work}/ca-key.pem
limits: {{max_connections: 4096}}
{via}routes:
  - name: bench
    match: {HOST}:{up}
    auth: {{type: bearer, token: "${{BENCH_TOKEN}}"}}
  - name: bench-tls
    match: {HOST}:{https_port}
    ca_file: {ca}
    auth: {{type: bearer, token: "${{BENCH_TOKEN}}"}}
""")
    env = {"BENCH_TOKEN": TOKEN, "PARENT_USER": USER, "PARENT_PASSWORD": PASSWORD, "PYTHONPATH": project_pythonpath()}
    cmd = [sys.executable, "-m", "authproxy", "run", "-c", str(routes), "--log-level", "warning"]
    p = spawn(cmd, work / f"{name}.log", env=env)
    GROUPS[name] = p.pid
    wait_port(port, p, work / f"{name}.log", timeout=30)


def load(target: str, scheme: str, ports: dict[str, int], args: argparse.Namespace) -> dict[str, float]:
    url = f"http://{HOST}:{ports['http']}/small.txt" if scheme == "http" else f"https://{HOST}:{args.https_port}/small.txt"
    if args.https_port == 443 and scheme == "https":
        url = f"https://{HOST}/small.txt"
    cmd = ["hey", "-c", str(args.conns)]
    if target in ("direct", "squid"):
        cmd += ["-H", f"Authorization: {AUTH}"]
    proxy = {
        "squid": f"http://{USER}:{PASSWORD}@{HOST}:{ports['squid']}",
        "authproxy": f"http://{HOST}:{ports['authproxy']}",
        "authproxy+squid": f"http://{HOST}:{ports['chained']}",
    }.get(target)
    if proxy:
        cmd += ["-x", proxy]
    run([*cmd, "-z", "1s", url], timeout=60)  # warm-up: connections, leaves, the token
    cpu0 = group_cpu(CPU_OF[target])
    out = run([*cmd, "-z", f"{args.duration}s", url], timeout=args.duration + 60).stdout
    result = parse_hey(out)
    done = result["rps"] * args.duration
    result["cpu"] = (group_cpu(CPU_OF[target]) - cpu0) * 1e6 / done if done and CPU_OF[target] else float("nan")
    return result


def parse_hey(out: str) -> dict[str, float]:
    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")

    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+Get ", out))
    return {
        "rps": num(r"Requests/sec:\s+([\d.]+)"),
        "p50": num(r"50% in ([\d.]+) secs") * 1000,
        "p99": num(r"99% in ([\d.]+) secs") * 1000,
        "bad": float(sum(n for c, n in codes.items() if not 200 <= c < 300) + errors),
    }


def report(results: dict[tuple[str, str], list[dict[str, float]]], args: argparse.Namespace, work: Path) -> None:
    load1 = os.getloadavg()[0]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} cores, load {load1:.1f}; "
          f"medians of {args.rounds} rounds of {args.duration} s, {args.conns} connections (hey); logs in {work}\n")
    print("| target | plain GET req/s | p50 / p99 ms | CPU ms/1k | HTTPS GET req/s (intercepted or tunnelled) "
          "| p50 / p99 ms | CPU ms/1k | non-2xx |")
    print("|---|---|---|---|---|---|---|---|")
    for target in TARGETS:
        cells = []
        bad = 0.0
        for scheme in ("http", "https"):
            runs = results[(target, scheme)]
            med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99", "cpu")}
            bad += sum(r["bad"] for r in runs)
            cpu = "-" if med["cpu"] != med["cpu"] else f"{med['cpu']:.0f}"
            cells += [f"{med['rps']:,.0f}", f"{med['p50']:.1f} / {med['p99']:.1f}", cpu]
        print(f"| {target} | " + " | ".join(cells) + f" | {bad:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
