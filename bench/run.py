#!/usr/bin/env python3
"""authproxy benchmark: the same load direct to nginx and through authproxy, in one run.

Starts nginx on 127.0.0.1 as the upstream, over plain HTTP and over TLS (a bench CA made in the
workdir signs its certificate; it answers 401 unless `Authorization: Bearer test-token` arrives,
so every 2xx proves the proxy injected the header), then alternates rounds: direct (the client
sets the header itself) and authproxy (absolute-form requests or CONNECT; the proxy injects the
header; a fresh proxy every round, its CA = the bench CA). Scenarios (--scenarios):

  small          100-byte GET over plain HTTP, keep-alive, --connections connections (wrk).
  download       100 MB GET over plain HTTP with curl after a 2 s pause.
  small_tls      100-byte GET over HTTPS, keep-alive (hey): direct to nginx's TLS port, or through
                 an intercepted CONNECT (hey -x), each TLS connection kept for the whole run.
  small_tls_wrk  direct only: the same GET with wrk over TLS, the upstream's own limit (wrk
                 cannot CONNECT, so it has no authproxy row).
  download_tls   100 MB GET over HTTPS with curl --cacert (direct, or curl -x: intercepted).

Load runs report req/s, p50/p99 latency, errors and non-2xx, connections opened, the client's
and the proxy's CPU time per 1000 requests and the proxy's peak RSS; downloads report seconds,
MB/s and the proxy's peak RSS and CPU. Medians over --repeat rounds are printed as markdown with
the ratio to direct; raw numbers go to WORKDIR/results.json, each process's log to WORKDIR/logs/.
Everything listens and connects on 127.0.0.1 only; every process started here is stopped (by
its own process group) on exit, Ctrl-C and errors included. Needs nginx, wrk, hey, curl and
openssl: bash bench/setup.sh.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
LUA = HERE / "wrk_absolute.lua"
HOST = "127.0.0.1"
TOKEN = "test-token"
AUTH = f"Bearer {TOKEN}"
SMALL_BODY = b"authproxy bench upstream: 100 bytes, proof that the Authorization header arrived" + b"." * 100
SMALL_BODY = SMALL_BODY[:100]
BIG_MB = 100
BIG_BYTES = BIG_MB << 20
TARGETS = ("direct", "authproxy")
# name -> (scheme, direct only); run in this order within a round.
SCENARIOS: dict[str, tuple[str, bool]] = {
    "small": ("http", False),
    "download": ("http", False),
    "download_tls": ("https", False),
    "small_tls": ("https", False),
    "small_tls_wrk": ("https", True),
}
TOOLS = {"small": "wrk", "small_tls": "hey", "small_tls_wrk": "wrk", "download": "curl", "download_tls": "curl"}
PROXY_ENV_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


# --------------------------------------------------------------------------- processes
PROCS: list[subprocess.Popen[bytes]] = []


def spawn(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a long-running process in its own session (process group == its pid), output to log."""
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        out.flush()
        p = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    PROCS.append(p)
    return p


def stop(p: subprocess.Popen[bytes], grace: float = 15.0) -> dict[str, Any]:
    """SIGTERM to the process group, SIGKILL after `grace` s. Returns how it went."""

    def group_alive() -> bool:
        p.poll()  # reap the leader so a zombie does not count
        try:
            os.killpg(p.pid, 0)
            return True
        except ProcessLookupError:
            return False

    info: dict[str, Any] = {"exited_before_stop": p.poll() is not None}
    t0 = time.monotonic()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 3.0)):
        if not group_alive():
            break
        if sig == signal.SIGKILL:
            info["killed"] = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        end = time.monotonic() + wait
        while group_alive() and time.monotonic() < end:
            time.sleep(0.02)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(1)
    info["returncode"] = p.returncode
    info["stop_s"] = round(time.monotonic() - t0, 3)
    if p in PROCS:
        PROCS.remove(p)
    return info


def stop_all() -> None:
    for p in list(reversed(PROCS)):
        stop(p, grace=5.0)


def project_pythonpath() -> str:
    return os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))


def code_fingerprint() -> str:
    """sha256 over the proxy's source files: tells whether the code changed during a run."""
    h = hashlib.sha256()
    for f in sorted((PROJECT / "authproxy").rglob("*.py")):
        h.update(str(f.relative_to(PROJECT)).encode() + b"\0")
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def check_port_free(port: int) -> None:
    with socket.socket() as s:
        if s.connect_ex((HOST, port)) == 0:
            raise SystemExit(f"error: {HOST}:{port} is already in use by a process this script did not start")


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}; see {log}")
        try:
            socket.create_connection((HOST, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout:.0f} s; see {log}")


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """A bounded foreground command (wrk, curl). subprocess.run kills it on timeout or Ctrl-C."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# --------------------------------------------------------------------------- /proc meter
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def tree_pids(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of every process in the list (each counts all its threads)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / TICK


class Meter:
    """While active: peak RSS of the process tree under `pid` (sampled), its RSS at the start (one
    proxy serves every scenario of a round, and RSS does not shrink back), and the CPU time it used."""

    def __init__(self, pid: int | None, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak = self.start = 0
        self.cpu = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        assert self.pid is not None
        pids, refreshed = tree_pids(self.pid), time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - refreshed > 1.0:
                pids, refreshed = tree_pids(self.pid), time.monotonic()
            self.peak = max(self.peak, rss_bytes(pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> Meter:
        if self.pid:
            pids = tree_pids(self.pid)
            self._cpu0, self.start = cpu_seconds(pids), rss_bytes(pids)
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid and self._thread:
            self._stop.set()
            self._thread.join()
            pids = tree_pids(self.pid)
            self.peak = max(self.peak, rss_bytes(pids))
            self.cpu = cpu_seconds(pids) - self._cpu0

    def fields(self, requests: int | None) -> dict[str, Any]:
        if not self.pid:
            return {}
        f: dict[str, Any] = {"peak_rss_mb": self.peak / 2**20, "start_rss_mb": self.start / 2**20, "cpu_s": self.cpu}
        if requests:
            f["cpu_ms_per_1k"] = self.cpu * 1e3 / requests * 1000
        return f


# --------------------------------------------------------------------------- setup
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.logs = self.work / "logs"
        self.pki = self.work / "pki"
        self.ca_cert, self.ca_key = self.pki / "ca.pem", self.pki / "ca.key"
        self.up_cert, self.up_key = self.pki / "upstream.pem", self.pki / "upstream.key"
        self.scenarios: list[str] = args.scenario_list
        self.tls = any(SCENARIOS[s][0] == "https" for s in self.scenarios)
        taken: set[int] = set()

        def pick(port: int) -> int:
            while not port or port in taken:
                port = free_port()
            taken.add(port)
            return port

        self.up_port = pick(args.upstream_port)
        self.https_port = pick(args.https_port if args.https_port is not None else (443 if os.geteuid() == 0 else 0))
        self.status_port = pick(0)
        self.proxy_port = pick(args.proxy_port)
        self.nginx: subprocess.Popen[bytes] | None = None
        self.rep = 0  # the round being run (its proxy log is counted for CONNECT lines)

    def url(self, path: str, scheme: str = "http") -> str:
        if scheme == "https":
            return f"https://{HOST}{'' if self.https_port == 443 else f':{self.https_port}'}{path}"
        return f"http://{HOST}:{self.up_port}{path}"

    # -- files ---------------------------------------------------------------
    def prepare(self) -> None:
        for d in (self.work, self.logs, self.work / "www", self.work / "nginx-tmp", self.work / "state", self.pki):
            d.mkdir(parents=True, exist_ok=True)
        for old in self.logs.glob("*.log"):  # each run's logs start empty; big.bin is kept
            old.unlink()
        # nginx's workers run as `nobody` when started by root: they must be able to read www/.
        for d in (self.work, self.work / "www"):
            d.chmod(0o755)
        www = self.work / "www"
        (www / "small.txt").write_bytes(SMALL_BODY)
        big = www / "big.bin"
        if not big.exists() or big.stat().st_size != BIG_BYTES:
            print(f"writing {big} ({BIG_MB} MB of random bytes)", flush=True)
            tmp = big.with_suffix(".tmp")
            with open(tmp, "wb") as out:
                for _ in range(BIG_MB):
                    out.write(os.urandom(1 << 20))
            tmp.replace(big)
        for f in www.iterdir():
            f.chmod(0o644)
        self.make_pki()

    def make_pki(self) -> None:
        """A fresh bench CA (EC P-256) and nginx's certificate for 127.0.0.1, signed by it, each run.

        The CA signs nginx's certificate (the route's `ca_file` trusts it) and is also the proxy's
        own CA (`ca_cert`/`ca_key`), so curl --cacert CA verifies both the direct and the
        intercepted connection."""
        p = self.pki

        def ossl(*a: str) -> None:
            r = subprocess.run(["openssl", *a], capture_output=True, text=True, timeout=30, cwd=p)
            if r.returncode:
                raise RuntimeError(f"openssl {a[0]} failed: {r.stderr.strip()[-300:]}")

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        ossl("req", "-x509", *ec, "-days", "30", "-subj", "/CN=authproxy bench CA",
             "-keyout", str(self.ca_key), "-out", str(self.ca_cert),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash")  # fmt: skip
        (p / "upstream.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
        )
        ossl("req", "-new", *ec, "-subj", "/CN=127.0.0.1", "-keyout", str(self.up_key),
             "-out", str(p / "upstream.csr"))  # fmt: skip
        ossl("x509", "-req", "-in", str(p / "upstream.csr"), "-CA", str(self.ca_cert), "-CAkey", str(self.ca_key),
             "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "30",
             "-extfile", str(p / "upstream.ext"), "-out", str(self.up_cert))  # fmt: skip
        for f in (self.ca_key, self.up_key):
            f.chmod(0o600)

    # -- nginx ---------------------------------------------------------------
    def start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(nginx, os.X_OK):
            raise SystemExit("error: nginx not found; run: bash bench/setup.sh")
        for port in (self.up_port, self.https_port, self.status_port):
            check_port_free(port)
        # Point every temp path compiled into this nginx at the workdir, so it runs as non-root too.
        built = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
        temps = "\n".join(
            f"  {kind}_temp_path {self.work}/nginx-tmp/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            if f"--http-{kind.replace('_', '-')}-temp-path" in built
        )
        user = "  # not root: nginx keeps the current user" if os.geteuid() else "user nobody nogroup;"
        conf = self.work / "nginx.conf"
        conf.write_text(f"""# generated by bench/run.py
{user}
worker_processes {self.args.nginx_workers};
pid {self.work}/nginx.pid;
error_log {self.logs}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
{temps}
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  open_file_cache max=16;
  default_type application/octet-stream;
  ssl_session_cache shared:SSL:1m;
  server {{
    listen {HOST}:{self.up_port};
    listen {HOST}:{self.https_port} ssl;
    ssl_certificate {self.up_cert};
    ssl_certificate_key {self.up_key};
    root {self.work}/www;
    # Every benchmarked 2xx proves the header arrived: no header, no file.
    if ($http_authorization != "{AUTH}") {{ return 401 "missing or wrong Authorization\\n"; }}
  }}
  server {{
    # Connection counters (accepts handled requests): how many connections each run opened.
    listen {HOST}:{self.status_port};
    location = /status {{ stub_status; }}
  }}
}}
""")
        log = self.logs / "nginx.log"
        cmd = [nginx, "-p", str(self.work), "-e", str(self.logs / "nginx-error.log"), "-c", str(conf)]
        cmd += ["-g", "daemon off;"]
        self.nginx = spawn(cmd, log)
        for port in (self.up_port, self.https_port, self.status_port):
            wait_port(port, self.nginx, log)

    def nginx_accepts(self) -> int | None:
        """nginx's count of accepted connections so far (stub_status), None if it cannot be read."""
        try:
            with socket.create_connection((HOST, self.status_port), 5) as s:
                s.sendall(f"GET /status HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
        except OSError:
            return None
        m = re.search(rb"\n\s*(\d+)\s+\d+\s+\d+\s*\n", data)
        return int(m.group(1)) if m else None

    # -- authproxy -------------------------------------------------------------
    def write_routes(self) -> Path:
        path = self.work / "routes.yaml"
        path.write_text(f"""# generated by bench/run.py
listen: {HOST}:{self.proxy_port}
state_dir: {self.work}/state
ca_cert: {self.ca_cert}
ca_key: {self.ca_key}
routes:
  - name: bench
    match: {HOST}:{self.up_port}
    auth: {{type: bearer, token: "${{BENCH_TOKEN}}"}}
  - name: bench-tls
    match: {HOST}:{self.https_port}
    ca_file: {self.ca_cert}
    auth: {{type: bearer, token: "${{BENCH_TOKEN}}"}}
""")
        return path

    def proxy_log(self, rep: int) -> Path:
        return self.logs / f"authproxy-round{rep + 1}.log"

    def start_proxy(self, rep: int) -> subprocess.Popen[bytes]:
        check_port_free(self.proxy_port)
        routes = self.write_routes()
        log = self.proxy_log(rep)
        cmd = [self.args.python, "-m", "authproxy", "run", "-c", str(routes)]
        cmd += ["--log-level", self.args.proxy_log_level]
        env = {"BENCH_TOKEN": TOKEN, "PYTHONPATH": project_pythonpath()}  # this checkout, installed or not
        p = spawn(cmd, log, env=env, cwd=self.work)
        wait_port(self.proxy_port, p, log)
        return p

    # -- clients ---------------------------------------------------------------
    def curl(
        self,
        path: str,
        via_proxy: bool,
        headers: tuple[str, ...] | list[str] = (),
        out: str = "/dev/null",
        timeout: float = 30,
        scheme: str = "http",
    ) -> dict[str, Any]:
        cmd = ["curl", "-sS", "-o", out, "-w", "%{http_code} %{size_download} %{time_total}"]
        cmd += ["--max-time", str(timeout), "--noproxy", "", "--cacert", str(self.ca_cert)]
        if via_proxy:
            cmd += ["-x", f"http://{HOST}:{self.proxy_port}"]
        for h in headers:
            cmd += ["-H", h]
        r = run([*cmd, self.url(path, scheme)], timeout + 15)
        code, size, secs = ([*r.stdout.split(), "000", "0", "0"])[:3]
        return {"code": int(code), "size": int(size), "secs": float(secs), "stderr": r.stderr.strip()}

    def verify(self, via_proxy: bool) -> dict[str, Any]:
        """One request per path with curl: the header must reach nginx (200 and the right body)."""
        body = self.work / "verify.out"
        out: dict[str, Any] = {}
        hdr = [] if via_proxy else [f"Authorization: {AUTH}"]
        oks = []
        schemes = sorted({SCENARIOS[s][0] for s in self.scenarios}, key=("http", "https").index)
        for scheme in schemes:
            key = "small" if scheme == "http" else "https"
            r = self.curl("/small.txt", via_proxy, hdr, out=str(body), scheme=scheme)
            ok = r["code"] == 200 and body.read_bytes() == SMALL_BODY
            out[key] = "200, body intact" if ok else f"{r['code']} {r['stderr'][:120]}".strip()
            if scheme == "http":
                out["keepalive"] = self.keepalive(via_proxy)
            else:
                out["https_keepalive"] = self.keepalive_tls(via_proxy)
            if via_proxy:  # the client's own Authorization must be replaced, never forwarded alongside
                r = self.curl("/small.txt", True, ["Authorization: Bearer wrong-client-token"], scheme=scheme)
                out[f"{key}_client_header_replaced" if scheme == "https" else "client_header_replaced"] = (
                    r["code"] == 200
                )
            oks.append(ok)
        out["ok"] = all(oks)
        return out

    def keepalive(self, via_proxy: bool) -> str:
        """Two GETs, one after the other, on one connection: does the second one get an answer?"""
        port = self.proxy_port if via_proxy else self.up_port
        target = self.url("/small.txt") if via_proxy else "/small.txt"
        auth = "" if via_proxy else f"Authorization: {AUTH}\r\n"
        req = f"GET {target} HTTP/1.1\r\nHost: {HOST}:{self.up_port}\r\n{auth}\r\n".encode()
        heads: list[bytes] = []
        try:
            with socket.create_connection((HOST, port), 5) as s:
                s.settimeout(5)
                buf = b""
                for _ in range(2):
                    s.sendall(req)
                    while b"\r\n\r\n" not in buf:
                        chunk = s.recv(65536)
                        if not chunk:
                            return f"no: closed after {len(heads)} response(s), headers {heads[-1:]!r}"
                        buf += chunk
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    heads.append(head.split(b"\r\n")[0])
                    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    need = int(m.group(1)) if m else 0
                    while len(buf) < need:
                        chunk = s.recv(65536)
                        if not chunk:
                            return "no: closed mid-body"
                        buf += chunk
                    buf = buf[need:]
        except OSError as e:
            return f"no: {type(e).__name__} after {len(heads)} response(s) ({e})"
        return "yes" if all(h.split()[1:2] == [b"200"] for h in heads) else f"answers: {heads!r}"

    def keepalive_tls(self, via_proxy: bool) -> str:
        """curl fetches the URL twice in one invocation: the second GET must reuse the first
        connection (for the proxy: the same CONNECT tunnel and TLS session inside it)."""
        cmd = ["curl", "-sS", "--max-time", "20", "--noproxy", "", "--cacert", str(self.ca_cert)]
        cmd += ["-w", "%{http_code} %{num_connects}\\n", "-o", "/dev/null", "-o", "/dev/null"]
        if via_proxy:
            cmd += ["-x", f"http://{HOST}:{self.proxy_port}"]
        else:
            cmd += ["-H", f"Authorization: {AUTH}"]
        url = self.url("/small.txt", "https")
        r = run([*cmd, url, url], 35)
        answers = [ln.split() for ln in r.stdout.splitlines() if ln.strip()]
        if len(answers) == 2 and all(a[0] == "200" for a in answers) and answers[1][1] == "0":
            return "yes"
        return f"no: {answers} {r.stderr.strip()[:120]}".strip()

    def wrk(self, via_proxy: bool, secs: int, scheme: str = "http") -> dict[str, Any]:
        a = self.args
        if via_proxy:
            url, extra = f"http://{HOST}:{self.proxy_port}/", [self.url("/small.txt"), "-"]
        else:
            url, extra = self.url("/small.txt", scheme), ["-", AUTH]
        cmd = ["wrk", f"-t{a.threads}", f"-c{a.connections}", f"-d{secs}s", "--timeout", "5s", "-s", str(LUA)]
        r = run([*cmd, url, "--", *extra], secs + 30)
        m = re.search(r"WRKJSON (\{.*\})", r.stdout)
        if not m:
            raise RuntimeError(f"wrk exited {r.returncode}: {' '.join((r.stderr or r.stdout).split())[:200]}")
        return dict(json.loads(m.group(1)))

    def hey(self, via_proxy: bool, secs: int) -> dict[str, Any]:
        """hey for `secs` s at --connections workers: HTTPS GETs straight to nginx's TLS port, or via
        `-x` (CONNECT, then TLS with the proxy's minted certificate; hey never verifies)."""
        cmd = ["hey", "-c", str(self.args.connections), "-z", f"{secs}s", "-t", "10"]
        if via_proxy:
            cmd += ["-x", f"http://{HOST}:{self.proxy_port}"]
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
    def _load(self, proxy: subprocess.Popen[bytes] | None, once: Any) -> dict[str, Any]:
        """Warm-up, then the measured run of `once(secs)` with the proxy metered, the client's CPU
        time (RUSAGE_CHILDREN: only the client exits during the run) and nginx's accept counter."""
        rss_before = rss_bytes(tree_pids(proxy.pid)) if proxy else 0
        if self.args.warmup:
            once(self.args.warmup)
        log = self.proxy_log(self.rep) if proxy else None
        connects0 = self._connect_lines(log, settle=True) if log else None  # the warm-up's tunnels too
        accepts0 = self.nginx_accepts()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with Meter(proxy.pid if proxy else None) as m:
            row = once(self.args.duration)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        accepts1 = self.nginx_accepts()
        client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        if row["requests"]:
            row["client_cpu_ms_per_1k"] = client_cpu * 1e3 / row["requests"] * 1000
        if accepts0 is not None and accepts1 is not None:
            row["nginx_conns"] = accepts1 - accepts0 - 1  # minus our own status request
        if log:
            row["client_conns"] = self._connect_lines(log, settle=True) - (connects0 or 0)
        elif "nginx_conns" in row:
            row["client_conns"] = row["nginx_conns"]
        row.update(m.fields(row["requests"]))
        if proxy:  # growth counts from before the warm-up, which opens the connections
            row["start_rss_mb"] = rss_before / 2**20
        return row

    def _connect_lines(self, log: Path | None, settle: bool = False) -> int:
        """CONNECT access lines in the proxy's log: one per client tunnel, written when it closes
        (so after the client exits; with `settle`, wait until the count stops moving)."""
        if log is None or not log.exists():
            return 0

        def count() -> int:
            with open(log, errors="replace") as f:
                return sum(1 for ln in f if " CONNECT " in ln and ACCESS_STATUS.search(ln))

        n, end = count(), time.monotonic() + 3
        while settle and time.monotonic() < end:
            time.sleep(0.3)
            n, prev = count(), n
            if n == prev:
                break
        return n

    def small(self, proxy: subprocess.Popen[bytes] | None) -> dict[str, Any]:
        return self._wrk_scenario(proxy, "http")

    def small_tls_wrk(self, proxy: subprocess.Popen[bytes] | None) -> dict[str, Any]:
        return self._wrk_scenario(proxy, "https")

    def _wrk_scenario(self, proxy: subprocess.Popen[bytes] | None, scheme: str) -> dict[str, Any]:
        via = proxy is not None
        kinds = ("connect", "read", "write", "timeout")

        def once(secs: int) -> dict[str, Any]:
            j = self.wrk(via, secs, scheme)
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

        row = self._load(proxy, once)
        if via:  # wrk over plain HTTP through the proxy: its client connections are not CONNECTs
            row.pop("client_conns", None)
        return row

    def small_tls(self, proxy: subprocess.Popen[bytes] | None) -> dict[str, Any]:
        return self._load(proxy, lambda secs: self.hey(proxy is not None, secs))

    def download(self, proxy: subprocess.Popen[bytes] | None, scheme: str = "http") -> dict[str, Any]:
        # Right after a load run the next 100 MB GET is slowed for about a second; settle first.
        time.sleep(2)
        hdr = [] if proxy else [f"Authorization: {AUTH}"]
        with Meter(proxy.pid if proxy else None) as m:
            r = self.curl("/big.bin", proxy is not None, hdr, timeout=self.args.download_timeout, scheme=scheme)
        ok = r["code"] == 200 and r["size"] == BIG_BYTES
        return {
            "secs": r["secs"],
            "mb_s": r["size"] / 2**20 / r["secs"] if r["secs"] else 0.0,
            "size": r["size"],
            "errors": 0 if ok else 1,
            "error_detail": "" if ok else f"code={r['code']} size={r['size']} {r['stderr'][:120]}",
            "non2xx": 0 if r["code"] == 200 else 1,
            **m.fields(None),
        }

    def download_tls(self, proxy: subprocess.Popen[bytes] | None) -> dict[str, Any]:
        return self.download(proxy, "https")


# --------------------------------------------------------------------------- proxy log
ACCESS_STATUS = re.compile(r" status=(\d{3}) ")
QUIET = re.compile(r"^\S+ (info|debug) ")


def scan_proxy_log(log: Path) -> dict[str, Any]:
    """Count the proxy's non-2xx access lines, warnings/errors and tracebacks; keep a few examples."""
    out: dict[str, Any] = {"access_lines": 0, "non2xx_lines": 0, "problem_lines": 0, "tracebacks": 0}
    examples: list[str] = []
    with open(log, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = ACCESS_STATUS.search(line)
            if m:
                out["access_lines"] += 1
                if not m.group(1).startswith("2"):
                    out["non2xx_lines"] += 1
                    if len(examples) < 8:
                        examples.append(line[:300])
                continue
            if line.startswith("Traceback"):
                out["tracebacks"] += 1
            # Anything else that is not an info/debug line or our own "=== command" header: warnings,
            # errors, tracebacks and stray output all count.
            if line.strip() and not line.startswith("=== ") and not QUIET.match(line):
                out["problem_lines"] += 1
                if len(examples) < 8:
                    examples.append(line[:300])
    out["examples"] = examples
    return out


# --------------------------------------------------------------------------- report
def med(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def ratio(v: float | None, base: float | None, spec: str) -> str:
    return fmt(v / base if v is not None and base else None, spec)


def rss_cell(rows: list[dict[str, Any]]) -> str:
    """Median peak RSS, and in brackets its median growth over the RSS the run started with."""
    peak = med(rows, "peak_rss_mb")
    growth = [r["peak_rss_mb"] - r["start_rss_mb"] for r in rows if "start_rss_mb" in r]
    return "-" if peak is None else f"{peak:.1f} (+{statistics.median(growth):.1f})" if growth else f"{peak:.1f}"


def small_table(b: Bench, results: list[dict[str, Any]], scenario: str, notes: list[str]) -> list[str]:
    """One small-GET table: `small` (wrk, plain HTTP) or `small_tls` (hey, HTTPS) with the
    `small_tls_wrk` reference row (wrk straight to nginx over TLS) when it was run."""
    a = b.args
    tls = scenario == "small_tls"
    if tls:
        title = (
            f"### Small GET: 100 B over HTTPS, keep-alive, {a.connections} connections (hey; authproxy: "
            f"hey -x, an intercepted CONNECT per connection; {a.warmup} s warm-up + {a.duration} s), "
            f"medians of {a.repeat}"
        )
        conns = "TLS conns opened: client / to nginx"
    else:
        title = (
            f"### Small GET: 100 B over plain HTTP, keep-alive, {a.connections} connections "
            f"(wrk -t{a.threads}, {a.warmup} s warm-up + {a.duration} s), medians of {a.repeat}"
        )
        conns = "conns to nginx"
    lines = [
        title,
        "",
        f"| target | req/s | x direct | p50 ms | p99 ms | errors + non-2xx per run | {conns} "
        "| client CPU ms / 1k req | proxy peak RSS MB (+growth) | proxy CPU ms / 1k req | runs (req/s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = [r for r in results if r["scenario"] == scenario and r["target"] == "direct" and "failed" not in r]
    rows_by_label: list[tuple[str, str, str]] = [
        (f"direct ({TOOLS[scenario]})" if tls else "direct", scenario, "direct"),
        (f"authproxy ({TOOLS[scenario]} -x)" if tls else "authproxy", scenario, "authproxy"),
    ]
    if tls and "small_tls_wrk" in b.scenarios:
        rows_by_label.append(("direct (wrk), reference", "small_tls_wrk", "direct"))
    for label, sc, t in rows_by_label:
        rows = [r for r in results if r["scenario"] == sc and r["target"] == t]
        if not rows:
            continue
        ok = [r for r in rows if "failed" not in r]
        v = med(ok, "rps")
        errs = " / ".join("FAILED" if "failed" in r else f"{r['errors']} + {r['non2xx']}" for r in rows)
        if tls:
            conn = f"{fmt(med(ok, 'client_conns'), '.0f')} / {fmt(med(ok, 'nginx_conns'), '.0f')}"
        else:
            conn = fmt(med(ok, "nginx_conns"), ".0f")
        lines.append(
            f"| {label} | {fmt(v, '.0f')} | {ratio(v, med(base, 'rps'), '.3f')} "
            f"| {fmt(med(ok, 'p50_ms'), '.2f')} | {fmt(med(ok, 'p99_ms'), '.2f')} | {errs} | {conn} "
            f"| {fmt(med(ok, 'client_cpu_ms_per_1k'), '.0f')} | {rss_cell(ok)} "
            f"| {fmt(med(ok, 'cpu_ms_per_1k'), '.0f')} | {' '.join(fmt(r.get('rps'), '.0f') for r in rows)} |"
        )
        notes += [
            f"- {sc}, {t}, round {r['rep'] + 1}: {r.get('failed') or r['error_detail']}"
            for r in rows
            if r.get("failed") or r.get("error_detail")
        ]
    return lines


def download_table(b: Bench, results: list[dict[str, Any]], scenario: str, notes: list[str]) -> list[str]:
    a = b.args
    what = (
        "HTTPS, curl --cacert (authproxy: curl -x, an intercepted CONNECT)"
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
    base = [r for r in results if r["scenario"] == scenario and r["target"] == "direct" and "failed" not in r]
    for t in TARGETS:
        rows = [r for r in results if r["scenario"] == scenario and r["target"] == t]
        ok = [r for r in rows if "failed" not in r and not r["errors"]]
        v = med(ok, "secs")
        errs = " / ".join("FAILED" if "failed" in r else str(r["errors"]) for r in rows)
        lines.append(
            f"| {t} | {fmt(v, '.3f')} | {fmt(med(ok, 'mb_s'), '.0f')} | {ratio(v, med(base, 'secs'), '.2f')} "
            f"| {rss_cell(ok)} | {fmt(med(ok, 'cpu_s'), '.2f')} | {errs} "
            f"| {' '.join(fmt(r.get('secs'), '.3f') for r in rows)} |"
        )
        notes += [
            f"- {scenario}, {t}, round {r['rep'] + 1}: {r.get('failed') or r['error_detail']}"
            for r in rows
            if r.get("failed") or r.get("error_detail")
        ]
    return lines


def table(b: Bench, results: list[dict[str, Any]]) -> str:
    notes: list[str] = []
    parts: list[list[str]] = []
    for sc in ("small", "download", "small_tls", "download_tls"):
        if sc in b.scenarios:
            fn = small_table if sc.startswith("small") else download_table
            parts.append(fn(b, results, sc, notes))
    if "small_tls_wrk" in b.scenarios and "small_tls" not in b.scenarios:
        parts.append(small_table(b, results, "small_tls", notes))
    lines = [ln for part in parts for ln in [*part, ""]]
    if notes:
        lines += ["Errors:", *notes]
    return "\n".join(lines).rstrip("\n")


def tool_version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]


def machine_facts(python: str) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    probe = (
        "import sys, ssl, authproxy, aiohttp, h11\n"
        "try:\n import uvloop; uv = uvloop.__version__\nexcept ImportError:\n uv = 'not installed'\n"
        "print(f'python {sys.version.split()[0]}, authproxy {authproxy.__version__}, "
        "aiohttp {aiohttp.__version__}, h11 {h11.__version__}, uvloop {uv}, {ssl.OPENSSL_VERSION}')"
    )
    env = {**os.environ, "PYTHONPATH": project_pythonpath()}
    r = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=30, env=env)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "proxy_stack": r.stdout.strip() or f"? ({r.stderr.strip()[-200:]})",
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": tool_version(["wrk", "-v"]),
        "curl": tool_version(["curl", "--version"]),
        "hey": "hey " + tool_version(["dpkg-query", "-W", "-f", "${Version}", "hey"]),
        "load1_at_start": load1(),
        "authproxy_code": code_fingerprint(),
    }


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="rounds (direct, authproxy) interleaved; default 3")
    ap.add_argument("--duration", type=int, default=10, help="seconds of measured load per run; default 10")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each run")
    ap.add_argument("--quick", action="store_true", help="a fast check: --repeat 1 --duration 3 --warmup 1")
    ap.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {', '.join(SCENARIOS)}; default: all of them",
    )
    ap.add_argument("--connections", type=int, default=64, help="wrk and hey connections; default 64")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads; default 1 (a 2-core machine)")
    ap.add_argument("--workdir", default="/tmp/authproxy-bench-project", help="configs, files, logs, results")
    ap.add_argument("--upstream-port", type=int, default=0, help="nginx port on 127.0.0.1; default: free")
    ap.add_argument(
        "--https-port",
        type=int,
        default=None,
        help="nginx TLS port on 127.0.0.1; default 443 as root (hey puts Host's port into the TLS SNI), else free",
    )
    ap.add_argument("--proxy-port", type=int, default=0, help="authproxy port on 127.0.0.1; default: free")
    ap.add_argument("--nginx-workers", type=int, default=1, help="nginx worker_processes; default 1")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs `-m authproxy`")
    ap.add_argument(
        "--proxy-log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="authproxy --log-level; info (the default) writes one access line per request",
    )
    ap.add_argument("--download-timeout", type=int, default=90, help="curl --max-time for the 100 MB GET")
    ap.add_argument("--out", help="also write the markdown report here")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.duration, args.warmup = 1, 3, 1
    if min(args.repeat, args.duration, args.connections, args.threads) < 1 or args.warmup < 0:
        ap.error("--repeat, --duration, --connections and --threads must be >= 1")
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        ap.error(f"--scenarios: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(SCENARIOS)}")
    args.scenario_list = [s for s in SCENARIOS if s in chosen]  # always in the canonical order
    return args


def on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for var in PROXY_ENV_VARS:  # nothing here may go through some other proxy
        os.environ.pop(var, None)
        os.environ.pop(var.upper(), None)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by nginx, proxy and wrk
    need = {"curl", "openssl", *(TOOLS[s] for s in args.scenario_list)}
    for tool in sorted(need):
        if not shutil.which(tool):
            raise SystemExit(f"error: {tool} not found; run: bash bench/setup.sh")
    atexit.register(stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    b = Bench(args)
    started = datetime.datetime.now().astimezone()
    command = shlex.join(["python3", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    results: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    facts: dict[str, Any] = {}
    report = ""
    try:
        b.prepare()
        facts = machine_facts(args.python)
        print(
            f"workdir {b.work}; nginx on {HOST}:{b.up_port} (TLS {b.https_port}, status {b.status_port}); "
            f"authproxy on {HOST}:{b.proxy_port}; scenarios {','.join(b.scenarios)}"
        )
        print(f"machine: {facts['cpus']} CPUs ({facts['cpu_model']}), {facts['proxy_stack']}", flush=True)
        b.start_nginx()
        for scheme in ("http", "https"):
            gate = b.curl("/small.txt", via_proxy=False, scheme=scheme)
            if gate["code"] != 401:
                raise RuntimeError(f"nginx must answer 401 without the header over {scheme}, got {gate}")
        for rep in range(args.repeat):  # interleaved, so drifting noise hits both alike
            for target in TARGETS:
                proxy: subprocess.Popen[bytes] | None = None
                run_info: dict[str, Any] = {"rep": rep, "target": target}
                log = b.proxy_log(rep) if target == "authproxy" else None
                try:
                    if target == "authproxy":
                        t0 = time.monotonic()
                        run_info["code"] = code_fingerprint()
                        proxy = b.start_proxy(rep)
                        run_info["start_s"] = round(time.monotonic() - t0, 3)
                        run_info["idle_rss_mb"] = round(rss_bytes(tree_pids(proxy.pid)) / 2**20, 1)
                    run_info["verify"] = b.verify(via_proxy=proxy is not None)
                    print(f"[round {rep + 1}/{args.repeat}] {target}: verify {run_info['verify']}")
                    b.rep = rep
                    for name in b.scenarios:
                        if target == "authproxy" and SCENARIOS[name][1]:
                            continue  # direct only (wrk cannot CONNECT)
                        fn = getattr(b, name)
                        row: dict[str, Any] = {
                            "scenario": name,
                            "target": target,
                            "rep": rep,
                            "load1": load1(),
                        }
                        try:
                            row.update(fn(proxy))
                        except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as e:
                            row["failed"] = f"{type(e).__name__}: {e}"
                        if proxy is not None and proxy.poll() is not None:
                            died = f"authproxy exited {proxy.returncode}"
                            row["failed"] = f"{row['failed']}; {died}" if "failed" in row else died
                        results.append(row)
                        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
                        print(f"  {name}: {json.dumps(shown)}", flush=True)
                except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                    run_info["failed"] = f"{type(e).__name__}: {e}"
                    print(f"  {target} failed: {run_info['failed']}", flush=True)
                    results += [
                        {"scenario": s, "target": target, "rep": rep, "failed": run_info["failed"]}
                        for s in b.scenarios
                        if not (target == "authproxy" and SCENARIOS[s][1])
                    ]
                finally:
                    if proxy is not None:
                        run_info["stop"] = stop(proxy)
                        print(f"  authproxy stop: {run_info['stop']}", flush=True)
                    if log is not None and log.exists():
                        run_info["log"] = str(log)
                        scan = run_info["log_scan"] = scan_proxy_log(log)
                        print(
                            f"  authproxy log: {scan['access_lines']} access lines, {scan['non2xx_lines']} "
                            f"non-2xx, {scan['problem_lines']} warnings/errors/tracebacks",
                            flush=True,
                        )
                    runs.append(run_info)
        facts["authproxy_code_at_end"] = code_fingerprint()
        report = render(b, command, started, facts, results, runs)
        print("\n" + report)
    finally:
        stop_all()
        out = {
            "command": command,
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "args": vars(args),
            "ports": {"upstream": b.up_port, "https": b.https_port, "status": b.status_port, "proxy": b.proxy_port},
            "machine": facts,
            "runs": runs,
            "results": results,
        }
        if b.work.exists():
            (b.work / "results.json").write_text(json.dumps(out, indent=1) + "\n")
            if report:
                (b.work / "results.md").write_text(report + "\n")
            print(f"\nraw results: {b.work / 'results.json'}; logs: {b.logs}", flush=True)
    if args.out and report:
        Path(args.out).write_text(report + "\n")
    failed = any("failed" in r or r.get("errors") or r.get("non2xx") for r in results)
    return 1 if failed else 0


def render(
    b: Bench,
    command: str,
    started: datetime.datetime,
    facts: dict[str, Any],
    results: list[dict[str, Any]],
    runs: list[dict[str, Any]],
) -> str:
    code, code_end = facts.get("authproxy_code"), facts.get("authproxy_code_at_end")
    changed = f", CHANGED during the run (at the end {code_end}; per round below)" if code != code_end else ""
    head = [
        f"Command: `{command}`, started {started.strftime('%Y-%m-%d %H:%M %Z')}.",
        f"Machine: {facts.get('cpus')} CPUs ({facts.get('cpu_model')}), {facts.get('mem_gb')} GB, "
        f"Linux {facts.get('kernel')}, load average {facts.get('load1_at_start')} at start; "
        f"{facts.get('proxy_stack')}; {facts.get('nginx')}; {facts.get('wrk')}; {facts.get('hey')}; "
        f"{facts.get('curl')}.",
        f"authproxy source fingerprint (sha256 of authproxy/**/*.py): {code}{changed}.",
        "",
        "",
    ]
    tail = ["", "Per authproxy round (a fresh process each round):", ""]
    for r in runs:
        if r["target"] != "authproxy":
            continue
        scan, st, v = r.get("log_scan", {}), r.get("stop", {}), r.get("verify", {})
        if r.get("failed") and "start_s" not in r:
            tail.append(f"- round {r['rep'] + 1}: FAILED to start: {r['failed']}")
        else:
            killed = " (KILLED)" if st.get("killed") else ""
            checks = []
            if "small" in v:
                checks.append(
                    f"HTTP: curl {v['small']}, client's own Authorization replaced: "
                    f"{v.get('client_header_replaced', '-')}, keep-alive: {v.get('keepalive', '-')}"
                )
            if "https" in v:
                checks.append(
                    f"HTTPS (intercepted, curl verifying the minted certificate): {v['https']}, client's own "
                    f"Authorization replaced: {v.get('https_client_header_replaced', '-')}, keep-alive in the "
                    f"tunnel: {v.get('https_keepalive', '-')}"
                )
            line = (
                f"- round {r['rep'] + 1}: code {r.get('code', '-')}; started in {r.get('start_s', '-')} s, "
                f"idle RSS {r.get('idle_rss_mb', '-')} MB; {'; '.join(checks) or 'no checks'}; SIGTERM: exit "
                f"{st.get('returncode', '-')}{killed} in {st.get('stop_s', '-')} s; log: "
                f"{scan.get('access_lines', 0)} access lines, {scan.get('non2xx_lines', 0)} non-2xx, "
                f"{scan.get('problem_lines', 0)} other lines"
            )
            tail.append(line + (f"; FAILED: {r['failed']}" if r.get("failed") else ""))
        tail += [f"    - `{e}`" for e in scan.get("examples", [])[:4]]
    return "\n".join(head) + table(b, results) + "\n" + "\n".join(tail)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; processes stopped", file=sys.stderr)
        sys.exit(130)
