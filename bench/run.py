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
import asyncio
import atexit
import base64
import contextlib
import datetime
import hashlib
import http.client
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
LUA = HERE / "wrk_absolute.lua"
LUA_REFRESH = HERE / "wrk_refresh.lua"  # every request timed on its own (the refresh extra)
REFRESH_UPSTREAM = HERE / "refresh_upstream.py"  # the refresh extra's resource server and token endpoint
PEER_FILES = HERE / "peers"
HOST = "127.0.0.1"
TOKEN = "test-token"
AUTH = f"Bearer {TOKEN}"
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"
SMALL_BODY = b"authproxy bench upstream: 100 bytes, proof that the Authorization header arrived" + b"." * 100
SMALL_BODY = SMALL_BODY[:100]
BIG_MB = 100
BIG_BYTES = BIG_MB << 20
VENVS = Path(os.environ.get("BENCH_VENVS", "/tmp"))
PROXY_ENV_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass(frozen=True)
class Scenario:
    scheme: str
    tool: str
    direct_only: bool = False


# Run in this order within a round: the TLS load grows a proxy's RSS the most (and RSS does not
# shrink back), so the downloads come before it.
SCENARIOS: dict[str, Scenario] = {
    "small": Scenario("http", "wrk"),
    "small_wide": Scenario("http", "wrk"),
    "download": Scenario("http", "curl"),
    "download_tls": Scenario("https", "curl"),
    "small_tls": Scenario("https", "hey"),
    "small_tls_wrk": Scenario("https", "wrk", direct_only=True),
}
EXTRAS = ("cold", "scaling", "idle", "refresh")

# name -> (schemes it runs, how it injects). Rows appear in this order.
TARGET_INFO: dict[str, tuple[tuple[str, ...], str]] = {
    "direct": (("http", "https"), "the client sends `Authorization` itself, straight to nginx"),
    "authproxy": (
        ("http", "https"),
        "this checkout (`python -m authproxy run`), a `bearer` route per upstream port; CONNECT intercepted "
        "with the bench CA",
    ),
    "squid": (
        ("http",),
        "squid-openssl as a plain forward proxy: `request_header_access Authorization deny` + "
        "`request_header_add Authorization` for dst 127.0.0.1",
    ),
    "squid-bump": (
        ("https",),
        "the same squid with `ssl-bump` on its port (peek, stare, bump; leaves made by "
        "security_file_certgen from the bench CA)",
    ),
    "tinyproxy": (("http",), "`AddHeader Authorization`; plain HTTP only (it cannot intercept a CONNECT)"),
    "proxy.py": (
        ("http", "https"),
        "`bench/peers/proxypy_plugin.py` (`handle_client_request`); TLS interception with the bench CA",
    ),
    "mitmproxy": (
        ("http", "https"),
        "mitmdump with `bench/peers/mitmproxy_addon.py` (`requestheaders`), `stream_large_bodies=1m`",
    ),
}
PROXIES = tuple(n for n in TARGET_INFO if n != "direct")
AUTHPROXY = "authproxy"


def authproxy_name(workers: str) -> str:
    """The target name of one authproxy configuration (--authproxy-workers): `authproxy` for a single
    process, `authproxy-w2`, `authproxy-wauto` for `run --workers 2` / `auto`."""
    return AUTHPROXY if workers == "1" else f"{AUTHPROXY}-w{workers}"


def is_authproxy(name: str) -> bool:
    """True for every authproxy variant (`authproxy`, `authproxy-w2`, ...); no peer's name starts so."""
    return name == AUTHPROXY or name.startswith(f"{AUTHPROXY}-")


@dataclass
class Target:
    name: str
    schemes: tuple[str, ...]
    how: str
    port: int = 0
    missing: str | None = None  # why it cannot run (not installed)
    insecure: bool = False  # its minted certificate failed curl's verification; -k was used
    workers: str | None = None  # authproxy's `run --workers` (None: not authproxy)
    display: str = ""  # its name in the tables (authproxy: `authproxy --workers 2 --loop uvloop`)

    def __post_init__(self) -> None:
        self.display = self.display or self.name

    @property
    def is_proxy(self) -> bool:
        return self.name != "direct"

    @property
    def is_authproxy(self) -> bool:
        return is_authproxy(self.name)

    def runs(self, scenario: str) -> bool:
        sc = SCENARIOS[scenario]
        return sc.scheme in self.schemes and not (sc.direct_only and self.is_proxy)


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
        self.leaf_key = self.pki / "leaf.key"  # proxy.py signs every leaf it mints with this one key
        self.scenarios: list[str] = args.scenario_list
        taken: set[int] = set()

        def pick(port: int) -> int:
            while not port or port in taken:
                port = free_port()
            taken.add(port)
            return port

        self.up_port = pick(args.upstream_port)
        self.https_port = pick(args.https_port if args.https_port is not None else (443 if os.geteuid() == 0 else 0))
        self.status_port = pick(0)
        self.token_port = pick(0)
        self.refresh_port = pick(0)  # the refresh extra's resource server (proxied)...
        self.refresh_token_port = pick(0)  # ...and its token endpoint + admin paths (not proxied)
        self.targets: dict[str, Target] = {}
        for name in ["direct", *args.proxy_list]:
            schemes, how = TARGET_INFO[name]
            if name == AUTHPROXY:  # one target per --authproxy-workers value, next to each other
                for i, workers in enumerate(args.authproxy_workers_list):
                    t = self.authproxy_target(workers, pick(args.proxy_port if i == 0 else 0))
                    self.targets[t.name] = t
                continue
            t = Target(name, schemes, how)
            if name != "direct":
                t.port = pick(0)
                t.missing = self.missing(name)
            self.targets[name] = t
        self.nginx: subprocess.Popen[bytes] | None = None
        self.refresh_loop = "asyncio"  # the refresh upstream's loop: uvloop when --python has it (main)

    def authproxy_target(self, workers: str, port: int) -> Target:
        schemes, how = TARGET_INFO[AUTHPROXY]
        display = AUTHPROXY
        if workers != "1":
            display += f" --workers {workers}"
            many = "one worker process per CPU" if workers == "auto" else f"{workers} worker processes"
            how += (
                f"; `run --workers {workers}`: a supervisor and {many} on one port (SO_REUSEPORT), CPU and RSS "
                "are the whole process tree's"
            )
        if self.args.authproxy_loop != "asyncio":
            display += f" --loop {self.args.authproxy_loop}"
            how += f"; `run --loop {self.args.authproxy_loop}`"
        return Target(authproxy_name(workers), schemes, how, port=port, workers=workers, display=display)

    def authproxies(self, extras: bool = False) -> list[Target]:
        """The authproxy variants, in --authproxy-workers order; with `extras`, those of --extras-workers."""
        chosen = self.args.extras_workers_list if extras else self.args.authproxy_workers_list
        return [t for t in self.targets.values() if t.is_authproxy and t.workers in chosen]

    def url(self, path: str, scheme: str = "http") -> str:
        if scheme == "https":
            return f"https://{HOST}{'' if self.https_port == 443 else f':{self.https_port}'}{path}"
        return f"http://{HOST}:{self.up_port}{path}"

    def runnable(self) -> list[Target]:
        return [t for t in self.targets.values() if not t.missing]

    def missing(self, name: str) -> str | None:
        """None when the peer can run here, else why not ("not installed ...")."""
        a = self.args
        if name in ("squid", "squid-bump"):
            squid = shutil.which("squid") or "/usr/sbin/squid"
            if not os.access(squid, os.X_OK):
                return "not installed (apt-get install squid-openssl)"
            if name == "squid-bump":
                built = subprocess.run([squid, "-v"], capture_output=True, text=True, timeout=10).stdout
                if "--with-openssl" not in built or not os.access(CERTGEN, os.X_OK):
                    return "not installed: this squid has no OpenSSL (apt-get install squid-openssl)"
            return None
        if name == "tinyproxy":
            ok = shutil.which("tinyproxy") or os.access("/usr/bin/tinyproxy", os.X_OK)
            return None if ok else "not installed (apt-get install tinyproxy)"
        exe = {"proxy.py": a.proxypy, "mitmproxy": a.mitmdump}[name]
        return None if os.access(exe, os.X_OK) else f"not installed ({exe} missing; bash bench/setup.sh)"

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
        ossl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(self.leaf_key))
        for f in (self.ca_key, self.up_key, self.leaf_key):
            f.chmod(0o600)

    # -- nginx ---------------------------------------------------------------
    def start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(nginx, os.X_OK):
            raise SystemExit("error: nginx not found; run: bash bench/setup.sh")
        for port in (self.up_port, self.https_port, self.status_port, self.token_port):
            check_port_free(port)
        # Point every temp path compiled into this nginx at the workdir, so it runs as non-root too.
        built = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
        temps = "\n".join(
            f"  {kind}_temp_path {self.work}/nginx-tmp/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            if f"--http-{kind.replace('_', '-')}-temp-path" in built
        )
        user = "  # not root: nginx keeps the current user" if os.geteuid() else "user nobody nogroup;"
        basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        token_json = json.dumps({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})
        conf = self.work / "nginx.conf"
        conf.write_text(f"""# generated by bench/run.py
{user}
worker_processes {self.args.nginx_workers};
pid {self.work}/nginx.pid;
error_log {self.logs}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
{temps}
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  open_file_cache max=16;
  default_type application/octet-stream;
  ssl_session_cache shared:SSL:1m;
  log_format bench_token '$msec $status';
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
  server {{
    # The token endpoint of the cold-start runs (OAuth client_credentials, client_secret_basic):
    # the bench token for the right client, 401 otherwise; one log line per fetch.
    listen {HOST}:{self.token_port};
    access_log {self.logs}/token-endpoint.log bench_token;
    default_type application/json;
    location = /token {{
      if ($request_method != POST) {{ return 405 '{{"error":"invalid_request"}}'; }}
      if ($http_authorization != "Basic {basic}") {{ return 401 '{{"error":"invalid_client"}}'; }}
      return 200 '{token_json}';
    }}
  }}
}}
""")
        log = self.logs / "nginx.log"
        cmd = [nginx, "-p", str(self.work), "-e", str(self.logs / "nginx-error.log"), "-c", str(conf)]
        cmd += ["-g", "daemon off;"]
        self.nginx = spawn(cmd, log)
        for port in (self.up_port, self.https_port, self.status_port, self.token_port):
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

    def token_fetches(self) -> int:
        log = self.logs / "token-endpoint.log"
        if not log.exists():
            return 0
        with open(log) as f:
            return sum(1 for _ in f)

    # -- the proxies -----------------------------------------------------------
    def proxy_log(self, t: Target, tag: str) -> Path:
        return self.logs / f"{t.name}-{tag}.log"

    def start(self, t: Target, tag: str, routes: Path | None = None) -> subprocess.Popen[bytes]:
        """Writes the target's config, starts it in its own process group, waits until it accepts."""
        check_port_free(t.port)
        peers = {
            "squid": self.cmd_squid,
            "squid-bump": self.cmd_squid,
            "tinyproxy": self.cmd_tinyproxy,
            "proxy.py": self.cmd_proxypy,
            "mitmproxy": self.cmd_mitmproxy,
        }
        cmd, env = (self.cmd_authproxy if t.is_authproxy else peers[t.name])(t, tag, routes)
        log = self.proxy_log(t, tag)
        p = spawn(cmd, log, env=env, cwd=self.work)
        wait_port(t.port, p, log, timeout=30)
        return p

    def write_routes(self, t: Target) -> Path:
        path = self.work / ("routes.yaml" if t.name == AUTHPROXY else f"routes-{t.name}.yaml")
        path.write_text(f"""# generated by bench/run.py
listen: {HOST}:{t.port}
state_dir: {self.work}/state
ca_cert: {self.ca_cert}
ca_key: {self.ca_key}
limits: {{max_connections: 4096}}   # the scaling curve goes to 1024 client connections
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

    def cmd_authproxy(self, t: Target, tag: str, routes: Path | None) -> tuple[list[str], dict[str, str]]:
        routes = routes or self.write_routes(t)
        cmd = [self.args.python, "-m", "authproxy", "run", "-c", str(routes)]
        cmd += ["--log-level", self.args.proxy_log_level]
        if t.workers != "1":  # a supervisor and N workers on one port; CPU and RSS are the tree's
            cmd += ["--workers", str(t.workers)]
        if self.args.authproxy_loop != "asyncio":
            cmd += ["--loop", self.args.authproxy_loop]
        return cmd, {"BENCH_TOKEN": TOKEN, "PYTHONPATH": project_pythonpath()}  # this checkout, installed or not

    def own_dir(self, name: str, owner: str | None = None) -> Path:
        """A fresh directory for a peer's files; chowned to `owner` when root (squid drops to `proxy`)."""
        d = self.work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        if owner and os.geteuid() == 0:
            with contextlib.suppress(LookupError, OSError):
                shutil.chown(d, owner, owner)
        return d

    def cmd_squid(self, t: Target, tag: str, _routes: Path | None) -> tuple[list[str], dict[str, str]]:
        d = self.own_dir(t.name, "proxy")
        bump, port_opts = "", ""
        if t.name == "squid-bump":
            db = d / "certs"  # security_file_certgen's store, new each start: no leaf is reused from a previous round
            r = subprocess.run([CERTGEN, "-c", "-s", str(db), "-M", "16MB"], capture_output=True, text=True, timeout=30)
            if r.returncode:
                raise RuntimeError(f"security_file_certgen -c failed: {r.stderr.strip()[-200:]}")
            if os.geteuid() == 0:
                subprocess.run(["chown", "-R", "proxy:proxy", str(db)], check=False, timeout=30)
            port_opts = (
                f" ssl-bump tls-cert={self.ca_cert} tls-key={self.ca_key}"
                " generate-host-certificates=on dynamic_cert_mem_cache_size=16MB"
            )
            bump = f"""
# TLS interception: look at the client hello, then at the server's certificate (so the minted leaf
# copies its names, IP:127.0.0.1 included), then decrypt.
sslcrtd_program {CERTGEN} -s {db} -M 16MB
sslcrtd_children 4 startup=1 idle=1
tls_outgoing_options cafile={self.ca_cert}
acl bump_step1 at_step SslBump1
ssl_bump peek bump_step1
ssl_bump stare all
ssl_bump bump all
"""
        conf = d / "squid.conf"
        conf.write_text(f"""# generated by bench/run.py
http_port {HOST}:{t.port}{port_opts}
acl bench_client src {HOST}/32
acl bench_upstream dst {HOST}/32
acl bench_tls_port port {self.https_port}
acl CONNECT method CONNECT
http_access deny CONNECT !bench_tls_port
http_access allow bench_client
http_access deny all
# Replace, not add: drop a client's own Authorization to the upstream, then add the bench one.
request_header_access Authorization deny bench_upstream
request_header_add Authorization "{AUTH}" bench_upstream
cache deny all
cache_mem 8 MB
access_log none
cache_log {d}/cache-{tag}.log
pid_filename {d}/squid.pid
coredump_dir {d}
pinger_enable off
via off
forwarded_for delete
shutdown_lifetime 0 seconds
max_filedescriptors 16384
{bump}""")
        squid = shutil.which("squid") or "/usr/sbin/squid"
        return [squid, "-N", "-f", str(conf)], {}

    def cmd_tinyproxy(self, t: Target, tag: str, _routes: Path | None) -> tuple[list[str], dict[str, str]]:
        d = self.own_dir("tinyproxy")
        conf = d / "tinyproxy.conf"
        conf.write_text(f"""# generated by bench/run.py
Port {t.port}
Listen {HOST}
Timeout 600
MaxClients 4096
Allow {HOST}
DisableViaHeader Yes
LogLevel Warning
AddHeader "Authorization" "{AUTH}"
{"User nobody" + chr(10) + "Group nogroup" if os.geteuid() == 0 else ""}
""")
        return [shutil.which("tinyproxy") or "/usr/bin/tinyproxy", "-d", "-c", str(conf)], {}

    def peer_env(self) -> dict[str, str]:
        return {"AUTHPROXY_BENCH_HOST": HOST, "AUTHPROXY_BENCH_AUTH": AUTH}

    def cmd_proxypy(self, t: Target, tag: str, _routes: Path | None) -> tuple[list[str], dict[str, str]]:
        certs = self.own_dir("proxypy-certs")  # leaves it mints, new each start
        cmd = [self.args.proxypy, "--hostname", HOST, "--port", str(t.port), "--log-level", "WARNING",
               "--plugins", "proxypy_plugin.SetAuthorization",
               "--ca-key-file", str(self.ca_key), "--ca-cert-file", str(self.ca_cert),
               "--ca-signing-key-file", str(self.leaf_key), "--ca-cert-dir", str(certs),
               "--ca-file", str(self.ca_cert)]  # fmt: skip
        return cmd, {**self.peer_env(), "PYTHONPATH": str(PEER_FILES)}

    def cmd_mitmproxy(self, t: Target, tag: str, _routes: Path | None) -> tuple[list[str], dict[str, str]]:
        confdir = self.own_dir("mitmproxy-conf")
        ca = confdir / "mitmproxy-ca.pem"  # mitmproxy reads its CA as key + certificate in one file
        ca.write_bytes(self.ca_key.read_bytes() + self.ca_cert.read_bytes())
        ca.chmod(0o600)
        cmd = [self.args.mitmdump, "-q", "--listen-host", HOST, "--listen-port", str(t.port),
               "--set", f"confdir={confdir}",
               "--set", f"ssl_verify_upstream_trusted_ca={self.ca_cert}",
               "--set", "stream_large_bodies=1m",  # else it holds whole bodies in memory
               "--set", "flow_detail=0",
               "-s", str(PEER_FILES / "mitmproxy_addon.py")]  # fmt: skip
        return cmd, self.peer_env()

    # -- clients ---------------------------------------------------------------
    def curl(
        self,
        path: str,
        port: int | None,
        headers: tuple[str, ...] | list[str] = (),
        out: str = "/dev/null",
        timeout: float = 30,
        scheme: str = "http",
        extra: tuple[str, ...] = (),
        url: str | None = None,
    ) -> dict[str, Any]:
        """One curl request, straight to nginx (port None) or through the proxy on `port`; `url`
        instead of nginx's `path` (the refresh extra's upstream)."""
        cmd = ["curl", "-sS", "-o", out, "-w", "%{http_code} %{size_download} %{time_total}"]
        cmd += ["--max-time", str(timeout), "--noproxy", "", "--cacert", str(self.ca_cert), *extra]
        if port:
            cmd += ["-x", f"http://{HOST}:{port}"]
        for h in headers:
            cmd += ["-H", h]
        r = run([*cmd, url or self.url(path, scheme)], timeout + 15)
        code, size, secs = ([*r.stdout.split(), "000", "0", "0"])[:3]
        return {"code": int(code), "size": int(size), "secs": float(secs), "stderr": r.stderr.strip()}

    def client_headers(self, t: Target) -> list[str]:
        return [] if t.is_proxy else [f"Authorization: {AUTH}"]

    def first_requests(self, t: Target) -> dict[str, Any]:
        """Right after a start: two GETs per scheme, each curl on a new connection; the first one
        is cold (no upstream connection yet; over HTTPS the leaf for 127.0.0.1 is minted). Over
        HTTPS through a proxy with curl -k: verify() checks the minted certificates."""
        out: dict[str, Any] = {}
        port = t.port if t.is_proxy else None
        insecure = ("-k",) if t.is_proxy else ()  # timing only: verify() checks the minted certificates
        for scheme in t.schemes:
            for n in ("first", "second"):
                r = self.curl("/small.txt", port, self.client_headers(t), scheme=scheme, extra=insecure)
                out[f"{n}_{scheme}_ms"] = r["secs"] * 1e3 if r["code"] == 200 else None
                if r["code"] != 200:
                    out[f"{n}_{scheme}_error"] = f"{r['code']} {first_line(r['stderr'])}".strip()
        return out

    def verify(self, t: Target) -> dict[str, Any]:
        """Per scheme with curl: the header must reach nginx (200 and the right body); keep-alive;
        and through a proxy, whether a client's own Authorization is replaced."""
        body = self.work / "verify.out"
        out: dict[str, Any] = {}
        port = t.port if t.is_proxy else None
        oks = []
        for scheme in t.schemes:
            key = "http" if scheme == "http" else "https"
            r = self.curl("/small.txt", port, self.client_headers(t), out=str(body), scheme=scheme)
            ok = r["code"] == 200 and body.read_bytes() == SMALL_BODY
            out[key] = "200, body intact" if ok else f"{r['code']} {first_line(r['stderr'])}".strip()
            if not ok and scheme == "https" and t.is_proxy:  # does it work without verifying the leaf?
                k = self.curl("/small.txt", port, out=str(body), scheme=scheme, extra=("-k",))
                if k["code"] == 200 and body.read_bytes() == SMALL_BODY:
                    t.insecure = True
                    out[key] += "; 200 with curl -k (its minted certificate does not verify)"
                    ok = True
            out[f"{key}_keepalive"] = self.keepalive(port) if scheme == "http" else self.keepalive_tls(t)
            if t.is_proxy:  # the client's own Authorization must be replaced, never forwarded alongside
                r = self.curl("/small.txt", port, ["Authorization: Bearer wrong-client-token"], scheme=scheme,
                              extra=("-k",) if t.insecure else ())  # fmt: skip
                out[f"{key}_replaces"] = "yes" if r["code"] == 200 else f"no: {r['code']}"
            oks.append(ok)
        out["ok"] = all(oks)
        return out

    def keepalive(self, port: int | None) -> str:
        """Two GETs, one after the other, on one connection: does the second one get an answer?"""
        target = self.url("/small.txt") if port else "/small.txt"
        auth = "" if port else f"Authorization: {AUTH}\r\n"
        req = f"GET {target} HTTP/1.1\r\nHost: {HOST}:{self.up_port}\r\n{auth}\r\n".encode()
        heads: list[bytes] = []
        try:
            with socket.create_connection((HOST, port or self.up_port), 5) as s:
                s.settimeout(5)
                buf = b""
                for _ in range(2):
                    s.sendall(req)
                    while b"\r\n\r\n" not in buf:
                        chunk = s.recv(65536)
                        if not chunk:
                            return f"no: closed after {len(heads)} response(s)"
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
            return f"no: {type(e).__name__} after {len(heads)} response(s)"
        return "yes" if all(h.split()[1:2] == [b"200"] for h in heads) else f"answers: {heads!r}"

    def keepalive_tls(self, t: Target) -> str:
        """curl fetches the URL twice in one invocation: the second GET must reuse the first
        connection (through a proxy: the same CONNECT tunnel and TLS session inside it)."""
        cmd = ["curl", "-sS", "--max-time", "20", "--noproxy", "", "--cacert", str(self.ca_cert)]
        cmd += ["-w", "%{http_code} %{num_connects}\\n", "-o", "/dev/null", "-o", "/dev/null"]
        cmd += ["-k"] if t.insecure else []
        if t.is_proxy:
            cmd += ["-x", f"http://{HOST}:{t.port}"]
        else:
            cmd += ["-H", f"Authorization: {AUTH}"]
        url = self.url("/small.txt", "https")
        r = run([*cmd, url, url], 35)
        answers = [ln.split() for ln in r.stdout.splitlines() if ln.strip()]
        if len(answers) == 2 and all(a[0] == "200" for a in answers) and answers[1][1] == "0":
            return "yes"
        return f"no: {answers} {first_line(r.stderr)}".strip()

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

    # -- authproxy alone: cold start with a token fetch, scaling, idle connections ----------
    def token_endpoint_alone(self) -> float | None:
        """The token endpoint's own time: one POST, new connection, as the proxy's first fetch is."""
        cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--noproxy", "",
               "--max-time", "10", "-u", f"{CLIENT_ID}:{CLIENT_SECRET}", "-d", "grant_type=client_credentials",
               f"http://{HOST}:{self.token_port}/token"]  # fmt: skip
        code, secs = ([*run(cmd, 20).stdout.split(), "000", "0"])[:2]
        return float(secs) * 1e3 if code == "200" else None

    def cold(self, t: Target, i: int) -> dict[str, Any]:
        """A fresh authproxy (variant `t`), empty state dir (no stored token), a client_credentials route:
        the first request through it fetches the token from nginx's token endpoint, then is injected."""
        state = self.work / f"state-{t.name}-cold{i + 1}"
        shutil.rmtree(state, ignore_errors=True)
        routes = self.work / "routes-cold.yaml"
        routes.write_text(f"""# generated by bench/run.py: cold start with a token fetch
listen: {HOST}:{t.port}
state_dir: {state}
ca_cert: {self.ca_cert}
ca_key: {self.ca_key}
routes:
  - name: bench-oauth
    match: {HOST}:{self.up_port}
    auth:
      type: client_credentials
      token_url: http://{HOST}:{self.token_port}/token
      client_id: {CLIENT_ID}
      client_secret: "${{BENCH_CLIENT_SECRET}}"
      client_auth: client_secret_basic
""")
        row: dict[str, Any] = {"scenario": "cold", "target": t.name, "rep": i, "load1": load1()}
        row["token_endpoint_ms"] = self.token_endpoint_alone()
        fetches0 = self.token_fetches()
        cmd, env = self.cmd_authproxy(t, f"cold{i + 1}", routes)
        env["BENCH_CLIENT_SECRET"] = CLIENT_SECRET
        log = self.proxy_log(t, f"cold{i + 1}")
        check_port_free(t.port)
        t0 = time.monotonic()
        proc = spawn(cmd, log, env=env, cwd=self.work)
        try:
            wait_port(t.port, proc, log, timeout=30)
            row["start_s"] = time.monotonic() - t0
            for n in ("first", "second"):
                r = self.curl("/small.txt", t.port)
                row[f"{n}_ms"] = r["secs"] * 1e3
                row[f"{n}_code"] = r["code"]
                if n == "first":
                    row["spawn_to_first_s"] = time.monotonic() - t0
            time.sleep(0.2)  # nginx writes its log line after the response
            row["fetches"] = self.token_fetches() - fetches0
            ok = row["first_code"] == row["second_code"] == 200 and row["fetches"] == 1
            row["errors"] = 0 if ok else 1
            if row["token_endpoint_ms"] is not None:
                row["beyond_token_ms"] = row["first_ms"] - row["token_endpoint_ms"]
        finally:
            row["stop"] = stop(proc)
        return row

    def scaling(self, t: Target, rep: int) -> list[dict[str, Any]]:
        """One fresh authproxy (variant `t`), the plain small GET at each --scaling-levels connection
        count, ascending."""
        proc = self.start(t, f"scaling{rep + 1}")
        rows = []
        try:
            for conns in self.args.scaling_list:
                row: dict[str, Any] = {"scenario": "scaling", "target": t.name, "rep": rep, "conns": conns,
                                       "load1": load1()}  # fmt: skip
                try:
                    row.update(self._load(t, proc, self.wrk_once(t.port, conns), None))
                except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as e:
                    row["failed"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                show(f"scaling {t.name} {conns}", row)
        finally:
            stop(proc)
        return rows

    def idle(self, t: Target, scheme: str) -> dict[str, Any]:
        """A fresh authproxy (variant `t`); one warm-up request; then --idle-conns client connections
        that each send one GET (through an intercepted CONNECT for https) and stay open: RSS delta / N."""
        proc = self.start(t, f"idle-{scheme}")
        try:
            r = self.curl("/small.txt", t.port, scheme=scheme)  # imports, the pool, the leaf for 127.0.0.1
            if r["code"] != 200:
                raise RuntimeError(f"warm-up request: {r['code']} {r['stderr'][:100]}")
            time.sleep(1)
            return asyncio.run(self._idle(t, proc, scheme, self.args.idle_conns))
        finally:
            stop(proc)

    async def _idle(self, t: Target, proc: subprocess.Popen[bytes], scheme: str, n: int) -> dict[str, Any]:
        pids = tree_pids(proc.pid)
        rss0 = rss_bytes(pids)
        accepts0 = self.nginx_accepts()
        tls = ssl.create_default_context(cafile=str(self.ca_cert))  # verifies the minted leaf
        sem = asyncio.Semaphore(32)
        writers: list[asyncio.StreamWriter] = []
        errors: list[str] = []

        async def one() -> None:
            async with sem:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, t.port), 10)
                    writers.append(writer)
                    if scheme == "https":
                        target = f"{HOST}:{self.https_port}"
                        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                        if head.split()[1:2] != [b"200"]:
                            raise RuntimeError(f"CONNECT: {head[:40]!r}")
                        await asyncio.wait_for(writer.start_tls(tls, server_hostname=HOST), 10)
                        req = f"GET /small.txt HTTP/1.1\r\nHost: {HOST}\r\n\r\n"
                    else:
                        req = f"GET {self.url('/small.txt')} HTTP/1.1\r\nHost: {HOST}:{self.up_port}\r\n\r\n"
                    writer.write(req.encode())
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    await asyncio.wait_for(reader.readexactly(int(m.group(1)) if m else 0), 10)
                    if head.split()[1:2] != [b"200"]:
                        raise RuntimeError(f"answer: {head[:40]!r}")
                except (OSError, RuntimeError, ValueError, asyncio.IncompleteReadError, TimeoutError) as e:
                    errors.append(f"{type(e).__name__}: {e}"[:120])

        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        opened_s = time.monotonic() - t0
        await asyncio.sleep(2)  # let the proxy settle; every connection is idle now
        samples = []
        for _ in range(5):
            samples.append(rss_bytes(pids))
            await asyncio.sleep(0.1)
        rss1 = max(samples)
        accepts1 = self.nginx_accepts()
        ok = n - len(errors)
        for w in writers:
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True), 10)
        return {
            "target": t.name,
            "scheme": scheme,
            "conns": n,
            "ok": ok,
            "errors": len(errors),
            "error_examples": sorted(set(errors))[:3],
            "opened_s": opened_s,
            "rss_before_mb": rss0 / 2**20,
            "rss_after_mb": rss1 / 2**20,
            "kb_per_conn": (rss1 - rss0) / 1024 / ok if ok else None,
            "upstream_conns": accepts1 - accepts0 - 1 if accepts0 is not None and accepts1 is not None else None,
        }

    # -- authproxy alone: a forced refresh under load ----------------------------------------
    def refresh_url(self) -> str:
        return f"http://{HOST}:{self.refresh_port}/small.txt"

    def refresh(self, t: Target, i: int) -> dict[str, Any]:
        """A forced token refresh under load: a fresh upstream (bench/refresh_upstream.py: a resource
        that takes only the token its endpoint issued last, and that endpoint) and a fresh authproxy
        (variant `t`, empty state dir) with a client_credentials route to it. wrk (wrk_refresh.lua,
        every request timed) drives --connections through the proxy for --refresh-duration s; at
        --refresh-revoke-at s the upstream revokes the token: every request in flight gets a 401 from
        it, the proxy fetches one new token and retries them."""
        a = self.args
        tag = f"refresh{i + 1}"
        row: dict[str, Any] = {"scenario": "refresh", "target": t.name, "rep": i, "load1": load1()}
        state = self.work / f"state-{t.name}-{tag}"
        shutil.rmtree(state, ignore_errors=True)
        ctl = self.refresh_token_port
        for port in (self.refresh_port, ctl, t.port):
            check_port_free(port)
        up_cmd = [a.python, str(REFRESH_UPSTREAM), "--resource-port", str(self.refresh_port), "--token-port",
                  str(ctl), "--delay-ms", str(a.refresh_delay_ms), "--loop", self.refresh_loop]  # fmt: skip
        up_log = self.logs / f"refresh-upstream-{t.name}-{tag}.log"
        log, wrk_log = self.proxy_log(t, tag), self.logs / f"refresh-wrk-{t.name}-{tag}.log"
        up = spawn(up_cmd, up_log)
        proxy: subprocess.Popen[bytes] | None = None
        records = self.work / f"refresh-{t.name}-{tag}.rec"
        try:
            for port in (self.refresh_port, ctl):
                wait_port(port, up, up_log)
            routes = self.work / f"routes-refresh-{t.name}.yaml"
            routes.write_text(f"""# generated by bench/run.py: a forced token refresh under load
listen: {HOST}:{t.port}
state_dir: {state}
routes:
  - name: bench-refresh
    match: {HOST}:{self.refresh_port}
    auth:
      type: client_credentials
      token_url: http://{HOST}:{ctl}/token
      client_id: {CLIENT_ID}
      client_secret: "${{BENCH_CLIENT_SECRET}}"
      client_auth: client_secret_basic
""")
            cmd, env = self.cmd_authproxy(t, tag, routes)
            env["BENCH_CLIENT_SECRET"] = CLIENT_SECRET
            proxy = spawn(cmd, log, env=env, cwd=self.work)
            wait_port(t.port, proxy, log, timeout=30)
            # The initial fetch (tok-1), then warm every worker and both connection pools.
            first = self.curl("", t.port, url=self.refresh_url())
            if first["code"] != 200:
                raise RuntimeError(f"first GET through the proxy: {first['code']} {first_line(first['stderr'])}")
            if a.warmup:
                self.wrk(t.port, a.warmup, a.connections, target=self.refresh_url())
            if t.workers != "1":  # which worker fetched, and which had aiohttp's client (imported on first fetch)
                workers = {p: n for n, p in worker_pids(log).items()}
                row["initial_fetcher"] = workers.get(shared_token_pid(state, "bench-refresh") or 0)
                row["aiohttp_loaded"] = sorted(n for p, n in workers.items() if maps_mention(p, "/aiohttp/"))
            for old in self.work.glob(f"{records.name}.*"):
                old.unlink()
            up_cpu0 = cpu_seconds([up.pid])
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            with Meter(proxy.pid) as m:
                wrk_cmd = ["wrk", "-t1", f"-c{a.connections}", f"-d{a.refresh_duration}s", "--timeout", "5s",
                           "-s", str(LUA_REFRESH), f"http://{HOST}:{t.port}/", "--", self.refresh_url(),
                           str(records)]  # fmt: skip
                t0 = time.monotonic()
                wrk = spawn(wrk_cmd, wrk_log)
                try:
                    time.sleep(max(0.0, t0 + a.refresh_revoke_at - time.monotonic()))
                    if wrk.poll() is not None:
                        raise RuntimeError(f"wrk exited {wrk.returncode} before the revocation; see {wrk_log}")
                    revoke = ctl_json(ctl, "POST", "/admin/revoke")
                    wrk.wait(a.refresh_duration + 30)
                finally:
                    stop(wrk)
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            up_cpu = cpu_seconds([up.pid]) - up_cpu0
            stats = ctl_json(ctl, "GET", "/admin/stats")
            if t.workers != "1":
                row["refresh_fetcher"] = workers.get(shared_token_pid(state, "bench-refresh") or 0)
        finally:
            if proxy is not None:
                row["stop"] = stop(proxy)
            stop(up)
        found = re.search(r"WRKJSON (\{.*\})", wrk_log.read_text(errors="replace"))
        if not found:
            raise RuntimeError(f"wrk printed no summary; see {wrk_log}")
        j = json.loads(found.group(1))
        recs = read_refresh_records(records)
        kinds = ("connect", "read", "write", "timeout")
        row.update(
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
        row.update(refresh_window(recs, revoke["at"], stats["fetches"]))
        if stats["first_401_after_revoke"] is not None and "revoke_to_fetch_ms" in row:
            row["revoke_to_401_ms"] = (stats["first_401_after_revoke"] - revoke["at"]) * 1e3
            row["first_401_to_fetch_ms"] = row["revoke_to_fetch_ms"] - row["revoke_to_401_ms"]
        requests = j["requests"] or None
        client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        if requests:
            row["client_cpu_ms_per_1k"] = client_cpu * 1e3 / requests * 1000
            row["upstream_cpu_ms_per_1k"] = up_cpu * 1e3 / requests * 1000
        row.update(m.fields(requests))
        scan = scan_proxy_log(log)
        text = log.read_text(errors="replace")
        row.update(
            retry_done=text.count(" retry=done"),
            retry_skipped=text.count(" retry=skipped"),
            log_non2xx=scan["non2xx_lines"],
            log_problems=scan["problem_lines"],
            log_examples=scan["examples"][:4],
        )
        row["other_errors"] = row["errors"] + row["non2xx"] - row["client_401"]
        row["violations"] = refresh_violations(row)
        return row


# --------------------------------------------------------------------------- the refresh extra
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
    """The pid of the worker that wrote the route's shared token (authproxy/sharedtokens.py's record in
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


# --------------------------------------------------------------------------- logs
ACCESS_STATUS = re.compile(r" status=(\d{3}) ")
QUIET = re.compile(r"^\S+ (info|debug) ")
PEER_PROBLEM = re.compile(r"(?i)\b(error|warn\w*|fatal|traceback|exception|critical)\b")
CERTGEN = "/usr/lib/squid/security_file_certgen"


def connect_lines(log: Path | None, settle: bool = False) -> tuple[int, int]:
    """CONNECT access lines in authproxy's log, one per client tunnel, written when it closes (so
    after the client exits; with `settle`, wait until the count stops moving); and how many of
    them say `error=client_tls_failed` (the client dropped the tunnel during its TLS handshake)."""
    if log is None or not log.exists():
        return 0, 0

    def count() -> tuple[int, int]:
        n = failed = 0
        with open(log, errors="replace") as f:
            for ln in f:
                if " CONNECT " in ln and ACCESS_STATUS.search(ln):
                    n += 1
                    failed += "client_tls_failed" in ln
        return n, failed

    n, end = count(), time.monotonic() + 3
    while settle and time.monotonic() < end:
        time.sleep(0.3)
        n, prev = count(), n
        if n == prev:
            break
    return n


def scan_proxy_log(log: Path) -> dict[str, Any]:
    """authproxy: count non-2xx access lines, warnings/errors and tracebacks; keep a few examples."""
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


def scan_peer_log(logs: list[Path]) -> dict[str, Any]:
    """A peer's output (and squid's cache.log): lines that say error, warning, fatal or traceback."""
    n = 0
    examples: list[str] = []
    for log in logs:
        if not log.exists():
            continue
        with open(log, errors="replace") as f:
            for line in f:
                if line.startswith("=== ") or not PEER_PROBLEM.search(line):
                    continue
                n += 1
                text = re.sub(r"\s+", " ", line.strip())[:200]
                if text not in examples and len(examples) < 3:
                    examples.append(text)
    return {"problem_lines": n, "examples": examples}


def first_line(text: str, limit: int = 120) -> str:
    return (text.strip().splitlines() or [""])[0][:limit]


def show(what: str, row: dict[str, Any]) -> None:
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items() if k not in ("scenario", "stop")}
    print(f"  {what}: {json.dumps(shown)}", flush=True)


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
    return "-" if peak is None else f"{peak:.1f} ({statistics.median(growth):+.1f})" if growth else f"{peak:.1f}"


def pick(results: list[dict[str, Any]], scenario: str, target: str) -> list[dict[str, Any]]:
    return [r for r in results if r["scenario"] == scenario and r["target"] == target]


def ok_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "failed" not in r]


def errs_cell(rows: list[dict[str, Any]], download: bool = False) -> str:
    if download:
        return " / ".join("FAILED" if "failed" in r else str(r["errors"]) for r in rows)
    return " / ".join("FAILED" if "failed" in r else f"{r['errors']} + {r['non2xx']}" for r in rows)


def add_notes(notes: list[str], rows: list[dict[str, Any]], what: str) -> None:
    notes += [
        f"- {what}, {r['target']}, round {r['rep'] + 1}: {r.get('failed') or r['error_detail']}"
        for r in rows
        if r.get("failed") or r.get("error_detail")
    ]


def label(b: Bench, name: str, scenario: str) -> str:
    """A target's row label in a scenario's table."""
    t = b.targets[name]
    if scenario == "small_tls":
        return "direct (hey)" if not t.is_proxy else f"{t.display} (hey -x)"
    if scenario == "download_tls" and t.insecure:
        return f"{t.display} (curl -k)"
    return t.display


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


def tool_version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]


def machine_facts(b: Bench) -> dict[str, Any]:
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
    r = subprocess.run([b.args.python, "-c", probe], capture_output=True, text=True, timeout=30, env=env)
    peers = {}
    present = {n for n, t in b.targets.items() if not t.missing}
    if present & {"squid", "squid-bump"}:
        peers["squid"] = tool_version(["squid", "-v"])
    if "tinyproxy" in present:
        peers["tinyproxy"] = tool_version(["tinyproxy", "-v"])
    if "mitmproxy" in present:
        peers["mitmproxy"] = tool_version([b.args.mitmdump, "--version"])
    if "proxy.py" in present:
        peers["proxy.py"] = "proxy.py " + tool_version([b.args.proxypy, "--version"])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "proxy_stack": r.stdout.strip() or f"? ({r.stderr.strip()[-200:]})",
        "uvloop": r.returncode == 0 and "uvloop not installed" not in r.stdout,
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": tool_version(["wrk", "-v"]),
        "curl": tool_version(["curl", "--version"]),
        "hey": "hey " + tool_version(["dpkg-query", "-W", "-f", "${Version}", "hey"]),
        "peers": peers,
        "load1_at_start": load1(),
        "authproxy_code": code_fingerprint(),
    }


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="rounds, every target interleaved in each; default 3")
    ap.add_argument("--duration", type=int, default=10, help="seconds of measured load per run; default 10")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each run")
    ap.add_argument("--quick", action="store_true", help="a fast check: --repeat 1 --duration 3 --warmup 1")
    ap.add_argument(
        "--proxies",
        default="all",
        help=f"comma-separated, from {', '.join(PROXIES)}; 'all' (default): every one, a peer that is not "
        "installed is reported as such; 'none': direct only. direct always runs",
    )
    ap.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from {', '.join(SCENARIOS)}; default: all of them",
    )
    ap.add_argument(
        "--extras",
        default=",".join(EXTRAS),
        help=f"authproxy-only runs after the rounds, comma-separated from {', '.join(EXTRAS)}, or 'none'",
    )
    ap.add_argument("--connections", type=int, default=64, help="wrk and hey connections; default 64")
    ap.add_argument("--wide-connections", type=int, default=256, help="wrk connections of small_wide; default 256")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads; default 1 (a 2-core machine)")
    ap.add_argument("--scaling-levels", default="1,16,64,256,1024", help="connections of the scaling curve")
    ap.add_argument("--idle-conns", type=int, default=1000, help="idle keep-alive connections opened; default 1000")
    ap.add_argument("--cold-runs", type=int, default=5, help="cold starts with a token fetch; default 5")
    ap.add_argument("--refresh-runs", type=int, default=3, help="forced refreshes under load (refresh); default 3")
    ap.add_argument("--refresh-duration", type=int, default=6, help="seconds of load per refresh run; default 6")
    ap.add_argument(
        "--refresh-revoke-at", type=float, default=3.0, help="the upstream revokes the token after this many s; 3"
    )
    ap.add_argument(
        "--refresh-delay-ms", type=float, default=50.0, help="the refresh token endpoint's delay per fetch; default 50"
    )
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
        "--authproxy-workers",
        default="1",
        metavar="N|auto[,...]",
        help="authproxy run --workers: N processes on one port (SO_REUSEPORT), or auto (one per CPU); default 1, "
        "a single process. Comma-separated (1,2): each value is a target of its own, side by side in every table",
    )
    ap.add_argument(
        "--extras-workers",
        default="all",
        metavar="N|auto[,...]|all",
        help="which --authproxy-workers variants run the extras (cold, scaling, idle, refresh); default all of them",
    )
    ap.add_argument(
        "--authproxy-loop",
        default="asyncio",
        choices=("asyncio", "uvloop"),
        help="authproxy run --loop: the event loop (uvloop needs the `fast` extra)",
    )
    ap.add_argument(
        "--proxy-log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="authproxy --log-level; info (the default) writes one access line per request",
    )
    ap.add_argument("--mitmdump", default=str(VENVS / "authproxy-bench-mitmproxy/bin/mitmdump"))
    ap.add_argument("--proxypy", default=str(VENVS / "authproxy-bench-proxypy/bin/proxy"))
    ap.add_argument("--download-timeout", type=int, default=60, help="curl --max-time for the 100 MB GET; default 60")
    ap.add_argument("--out", help="also write the markdown report here")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.duration, args.warmup = 1, 3, 1
    if min(args.repeat, args.duration, args.connections, args.wide_connections, args.threads) < 1 or args.warmup < 0:
        ap.error("--repeat, --duration, --connections, --wide-connections and --threads must be >= 1")

    def choose(value: str, allowed: tuple[str, ...], flag: str, extra: tuple[str, ...] = ()) -> list[str]:
        if value.strip() == "all":
            return list(allowed)
        if value.strip() == "none":
            return []
        chosen = [s.strip() for s in value.split(",") if s.strip() and s.strip() not in extra]
        unknown = [s for s in chosen if s not in allowed]
        if unknown:
            ap.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
        return [s for s in allowed if s in chosen]  # always in the canonical order

    args.proxy_list = choose(args.proxies, PROXIES, "--proxies", ("direct",))
    args.scenario_list = choose(args.scenarios, tuple(SCENARIOS), "--scenarios")
    args.extra_list = choose(args.extras, EXTRAS, "--extras")
    if not args.scenario_list:
        ap.error("--scenarios: none given")
    try:
        args.scaling_list = sorted({int(c) for c in args.scaling_levels.split(",") if c.strip()})
    except ValueError:
        ap.error("--scaling-levels: comma-separated connection counts")
    if AUTHPROXY not in args.proxy_list:
        args.extra_list = []
    if args.refresh_runs < 1 or not 1 <= args.refresh_revoke_at <= args.refresh_duration - 1:
        ap.error("--refresh-runs must be >= 1, --refresh-revoke-at at least 1 s from the start and the end of the load")

    def workers(value: str, flag: str) -> list[str]:
        """`1,2` / `1,auto`: each a number of processes (1 or more) or `auto`; `2` and `02` are one."""
        out: list[str] = []
        for w in (w.strip() for w in value.split(",")):
            if w != "auto" and not (w.isdigit() and int(w) >= 1):
                ap.error(f"{flag}: comma-separated numbers of processes (1 or more) or `auto`, got {value!r}")
            w = w if w == "auto" else str(int(w))
            out += [] if w in out else [w]
        return out

    args.authproxy_workers_list = workers(args.authproxy_workers, "--authproxy-workers")
    if args.extras_workers == "all":
        args.extras_workers_list = args.authproxy_workers_list
    else:
        args.extras_workers_list = workers(args.extras_workers, "--extras-workers")
        stray = [w for w in args.extras_workers_list if w not in args.authproxy_workers_list]
        if stray:
            ap.error(f"--extras-workers: {', '.join(stray)} is not in --authproxy-workers")
    return args


def on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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

    b = Bench(args)
    started = datetime.datetime.now().astimezone()
    command = shlex.join(["python3", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    results: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    cold: list[dict[str, Any]] = []
    idle: list[dict[str, Any]] = []
    refresh: list[dict[str, Any]] = []
    facts: dict[str, Any] = {}
    report = ""
    try:
        b.prepare()
        facts = machine_facts(b)
        ports = ", ".join(f"{t.name} {t.port}" for t in b.targets.values() if t.is_proxy)
        print(
            f"workdir {b.work}; nginx on {HOST}:{b.up_port} (TLS {b.https_port}, status {b.status_port}, token "
            f"{b.token_port}); proxies: {ports}; scenarios {','.join(b.scenarios)}; extras {','.join(args.extra_list)}"
        )
        for t in b.targets.values():
            if t.missing:
                print(f"{t.name}: {t.missing}")
        print(f"machine: {facts['cpus']} CPUs ({facts['cpu_model']}), {facts['proxy_stack']}", flush=True)
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
            for t in extras:
                print(f"[cold start with a token fetch: {t.display}]", flush=True)
                for i in range(args.cold_runs):
                    try:
                        row = b.cold(t, i)
                    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                        row = {"scenario": "cold", "target": t.name, "rep": i, "failed": f"{type(e).__name__}: {e}"}
                    cold.append(row)
                    show(f"cold {i + 1}", row)
        if "scaling" in args.extra_list:
            for rep in range(args.repeat):  # the variants interleaved, as in the rounds
                for t in extras:
                    print(f"[scaling, round {rep + 1}/{args.repeat}: {t.display}]", flush=True)
                    try:
                        results += b.scaling(t, rep)
                    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                        results.append({"scenario": "scaling", "target": t.name, "rep": rep, "conns": 0,
                                        "failed": f"{type(e).__name__}: {e}"})  # fmt: skip
        if "idle" in args.extra_list:
            for t in extras:
                for scheme in ("http", "https"):
                    print(f"[idle keep-alive connections, {scheme}: {t.display}]", flush=True)
                    try:
                        row = b.idle(t, scheme)
                    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                        row = {"target": t.name, "scheme": scheme, "failed": f"{type(e).__name__}: {e}"}
                    idle.append(row)
                    show(f"idle {scheme}", row)
        if "refresh" in args.extra_list:
            b.refresh_loop = "uvloop" if facts.get("uvloop") else "asyncio"
            for t in extras:
                print(f"[forced token refresh under load: {t.display}]", flush=True)
                for i in range(args.refresh_runs):
                    try:
                        row = b.refresh(t, i)
                    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as e:
                        row = {"scenario": "refresh", "target": t.name, "rep": i, "failed": f"{type(e).__name__}: {e}"}
                    refresh.append(row)
                    show(f"refresh {i + 1}", {k: v for k, v in row.items() if k not in ("log_examples", "tokens")})
        facts["authproxy_code_at_end"] = code_fingerprint()
        report = render(b, command, started, facts, results, runs, cold, idle, refresh)
        print("\n" + report)
    finally:
        stop_all()
        out = {
            "command": command,
            "started": started.isoformat(timespec="seconds"),
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
            "machine": facts,
            "runs": runs,
            "results": results,
            "cold": cold,
            "idle": idle,
            "refresh": refresh,
        }
        if b.work.exists():
            (b.work / "results.json").write_text(json.dumps(out, indent=1, default=str) + "\n")
            if report:
                (b.work / "results.md").write_text(report + "\n")
            print(f"\nraw results: {b.work / 'results.json'}; logs: {b.logs}", flush=True)
    if args.out and report:
        Path(args.out).write_text(report + "\n")
    # Exit 1 when direct or any authproxy variant failed anywhere; the peers' errors are reported, not fatal.
    ours = [r for r in results + cold if r["target"] == "direct" or is_authproxy(r["target"])]
    failed = any("failed" in r or r.get("errors") or r.get("non2xx") for r in ours)
    failed = failed or any("failed" in r or r.get("errors") for r in idle)
    failed = failed or any("failed" in r or r.get("violations") for r in refresh)
    return 1 if failed else 0


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


def render(
    b: Bench,
    command: str,
    started: datetime.datetime,
    facts: dict[str, Any],
    results: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    cold: list[dict[str, Any]],
    idle: list[dict[str, Any]],
    refresh: list[dict[str, Any]],
) -> str:
    a = b.args
    code, code_end = facts.get("authproxy_code"), facts.get("authproxy_code_at_end")
    changed = f", CHANGED during the run (at the end {code_end}; per round below)" if code != code_end else ""
    peers = "; ".join(facts.get("peers", {}).values())
    head = [
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
    tail: list[str] = []
    for t in b.authproxies():
        tail += [*([""] if tail else []), f"Per {t.display} round (a fresh process each round):", ""]
        tail += authproxy_round_lines([r for r in runs if r["target"] == t.name])
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
    if peer_lines:
        tail += ["", "Peers (each started fresh every round):", "", *peer_lines]
    return "\n".join(head + body + tail)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; processes stopped", file=sys.stderr)
        sys.exit(130)
