#!/usr/bin/env python3
"""Response scrubbing's cost: the same route with `scrub: true` and `scrub: false`, in one run.

Starts nginx on 127.0.0.1 (a 100-byte file and a 100 MB file of random bytes) and two authproxy
processes from this checkout whose configs differ only in the route's `scrub:`, then alternates
rounds: in each, for each proxy (the order alternating), small GETs with wrk (absolute-form,
keep-alive) and a 100 MB download with curl. Reports medians of req/s, the proxy's CPU ms per
1,000 requests (from /proc/PID/stat) and the download's seconds and proxy CPU seconds; then, in
this process, what bounds the download's cost: one `bytes.find` and one `memmem` pass over the
100 MB against the scrubber's pass over it in 256 KiB chunks (the proxy's read size).

    python3 bench/scrub.py                 # 3 rounds of 5 s small GETs and one download each
    python3 bench/scrub.py --rounds 5 --seconds 10 --connections 64
    python3 bench/scrub.py --instructions  # instructions per small GET under callgrind (valgrind):
                                           # steady on a shared machine, where wall-clock is not
    python3 bench/scrub.py --scan          # only the in-process passes over the 100 MB file
    python3 bench/scrub.py --token test-token --instructions   # another token (the peer harness's)
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from procs import free_port, project_pythonpath, spawn, stop, stop_all, wait_port

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
TOKEN = "bench-scrub-token-0123456789abcdef"
BIG_MB = 100


def _files(work: Path) -> Path:
    """The 100-byte file and the 100 MB one of random bytes, made once."""
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "small.txt").write_bytes(b"x" * 99 + b"\n")
    big = www / "big.bin"
    if not big.exists() or big.stat().st_size != BIG_MB << 20:
        with open(big, "wb") as out:
            for _ in range(BIG_MB):
                out.write(os.urandom(1 << 20))
    for d in (work, www):
        d.chmod(0o755)
    for f in www.iterdir():
        f.chmod(0o644)
    return www


def _nginx(work: Path, port: int) -> subprocess.Popen[bytes]:
    www = _files(work)
    conf = work / "nginx.conf"
    conf.write_text(
        f"""daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; keepalive_requests 1000000;
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;
  uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
  server {{ listen {HOST}:{port}; root {www}; }} }}
"""
    )
    (work / "tmp").mkdir(exist_ok=True)
    p = spawn(["nginx", "-c", str(conf), "-p", str(work)], work / "nginx.log")
    wait_port(port, p, work / "nginx.log")
    return p


def _proxy(work: Path, name: str, up: int, scrub: bool, loop: str, token: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    routes = work / f"routes-{name}.yaml"
    routes.write_text(
        f"listen: {HOST}:{port}\nstate_dir: {work}/state-{name}\nroutes:\n"
        f"  - name: bench\n    match: {HOST}:{up}\n    upstream: http://{HOST}:{up}\n"
        f"    scrub: {'true' if scrub else 'false'}\n"
        f'    auth: {{type: bearer, token: "${{BENCH_TOKEN}}"}}\n'
    )
    cmd = [sys.executable, "-m", "authproxy", "run", "-c", str(routes), "--loop", loop]
    log = work / f"{name}.log"
    p = spawn(cmd, log, env={"BENCH_TOKEN": token, "PYTHONPATH": project_pythonpath()}, cwd=BENCH.parent)
    wait_port(port, p, log)
    return p, port


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _small(proxy: subprocess.Popen[bytes], port: int, up: int, args: argparse.Namespace) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "-s", str(BENCH / "wrk_absolute.lua")]
    cmd += [f"http://{HOST}:{port}/", "--", f"http://{HOST}:{up}/small.txt"]
    before = _cpu(proxy.pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.seconds + 60, check=True).stdout
    cpu = _cpu(proxy.pid) - before
    n = int(re.search(r'"requests":(\d+)', out).group(1))  # type: ignore[union-attr]
    status = int(re.search(r'"status":(\d+)', out).group(1))  # type: ignore[union-attr]
    if status:
        raise SystemExit(f"wrk saw {status} responses with an error status through port {port}")
    return {"rps": n / args.seconds, "cpu_ms_per_1k": cpu * 1e6 / n}


def _download(proxy: subprocess.Popen[bytes], port: int, up: int) -> dict[str, float]:
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", "-x", f"http://{HOST}:{port}"]
    before = _cpu(proxy.pid)
    out = subprocess.run([*cmd, f"http://{HOST}:{up}/big.bin"], capture_output=True, text=True, timeout=300)
    seconds, size = out.stdout.split()
    if int(size) != BIG_MB << 20:
        raise SystemExit(f"the download through port {port} got {size} bytes")
    return {"seconds": float(seconds), "cpu_s": _cpu(proxy.pid) - before}


def _in_process(work: Path, token: str) -> dict[str, float]:
    """The download's floor: one search pass over 100 MB, and the scrubber's passes, best of 3 each.

    One ``bytes.find`` and one glibc ``memmem`` pass for the longest form; the scrubber over the
    file in 256 KiB chunks (the proxy's read size) with ``memmem`` (where the C library has it)
    and with ``bytes`` methods only (what runs elsewhere).
    """
    sys.path.insert(0, str(BENCH.parent))
    from authproxy.secrecy.findany import NATIVE
    from authproxy.secrecy.scrub import Needles, Scrubber, needles_for

    data = (_files(work) / "big.bin").read_bytes()
    chunks = [data[i : i + 262144] for i in range(0, len(data), 262144)]
    needles = needles_for([token])
    form = needles.forms[0]

    def best(fn: object) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - t0)
        return round(min(times), 4)

    def scrub(native: bool) -> None:
        s = Scrubber(Needles(needles.forms, native))
        for c in chunks:
            s.feed(c)
        s.flush()

    out = {"forms": len(needles.forms), "find_pass_s": best(lambda: [c.find(form) for c in chunks])}
    if NATIVE is not None:
        out["memmem_pass_s"] = best(lambda: [NATIVE(c, len(c), form, len(form)) for c in chunks])
        out["scrubber_memmem_s"] = best(lambda: scrub(True))
    out["scrubber_python_s"] = best(lambda: scrub(False))
    return out


def _keepalive_gets(port: int, up: int, n: int) -> None:
    """``n`` small GETs over 8 keep-alive connections, one at a time on each: the proxy's work only."""
    conns = [socket.create_connection((HOST, port)) for _ in range(8)]
    req = f"GET http://{HOST}:{up}/small.txt HTTP/1.1\r\nHost: {HOST}:{up}\r\n\r\n".encode()
    for _ in range(n // 8):
        for c in conns:
            c.sendall(req)
        for c in conns:
            got = b""
            while not got.endswith(b"x\n"):  # the 100-byte body ends the answer
                got += c.recv(65536)
            if not got.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected answer through port {port}: {got[:60]!r}")
    for c in conns:
        c.close()


def _instructions(work: Path, up: int, name: str, n: int, token: str) -> int:
    """Instructions the proxy runs, from start to stop, serving ``n`` small GETs (callgrind)."""
    routes = work / f"routes-{name}.yaml"
    port = int(routes.read_text().split("listen: ")[1].split()[0].rsplit(":", 1)[1])
    out = work / f"callgrind-{name}-{n}.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", os.path.realpath(sys.executable)]
    cmd += ["-m", "authproxy", "run", "-c", str(routes), "--loop", "asyncio"]
    log = work / f"callgrind-{name}.log"
    p = spawn(cmd, log, env={"BENCH_TOKEN": token, "PYTHONPATH": project_pythonpath()}, cwd=BENCH.parent)
    wait_port(port, p, log, timeout=300)
    _keepalive_gets(port, up, n)
    os.kill(p.pid, signal.SIGINT)
    p.wait(120)
    return int(re.search(r"^summary: (\d+)", out.read_text(), re.M).group(1))  # type: ignore[union-attr]


def _per_request(work: Path, up: int, token: str) -> None:
    """The difference between 2,000 and 400 requests, per request: start-up and shutdown cancel out."""
    per = {}
    for name in ("off", "on"):
        per[name] = (_instructions(work, up, name, 2000, token) - _instructions(work, up, name, 400, token)) / 1600
    print(f"instructions per small GET (asyncio loop): off {per['off']:,.0f}, on {per['on']:,.0f}")
    print(f"scrubbing adds {per['on'] - per['off']:,.0f} ({100 * (per['on'] / per['off'] - 1):+.1f} %)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("--instructions", action="store_true", help="count instructions per small GET instead")
    ap.add_argument("--scan", action="store_true", help="only the in-process passes over the 100 MB file")
    ap.add_argument("--token", default=TOKEN, help="the route's token (its forms are what is searched for)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/authproxy-bench-scrub"))
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    atexit.register(stop_all)
    if args.scan:
        print(f"in process, 100 MB: {_in_process(work, args.token)}")
        return 0
    up = free_port()
    _nginx(work, up)
    proxies = {name: _proxy(work, name, up, name == "on", args.loop, args.token) for name in ("off", "on")}
    if args.instructions:
        for proc, _ in proxies.values():
            stop(proc)
        _per_request(work, up, args.token)
        return 0
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for r in range(args.rounds):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        for name in order:
            proc, port = proxies[name]
            _small(proc, port, up, argparse.Namespace(**{**vars(args), "seconds": 1}))  # warm-up
            runs[name].append({**_small(proc, port, up, args), **_download(proc, port, up)})
            print(f"round {r + 1} scrub {name}: {runs[name][-1]}", flush=True)
    med = {n: {k: statistics.median(x[k] for x in v) for k in v[0]} for n, v in runs.items()}
    print(f"\nscrub off vs on, medians of {args.rounds} rounds ({args.connections} connections, {args.loop}):")
    print("| scrub | small GET req/s | CPU ms/1k req | 100 MB download s | proxy CPU s |")
    print("|---|---|---|---|---|")
    for n in ("off", "on"):
        m = med[n]
        print(f"| {n} | {m['rps']:,.0f} | {m['cpu_ms_per_1k']:.1f} | {m['seconds']:.3f} | {m['cpu_s']:.2f} |")
    off, on = med["off"], med["on"]
    print(f"small GET CPU per request: {100 * (on['cpu_ms_per_1k'] / off['cpu_ms_per_1k'] - 1):+.1f} %")
    print(f"small GET req/s: {100 * (on['rps'] / off['rps'] - 1):+.1f} %")
    print(f"download proxy CPU: +{on['cpu_s'] - off['cpu_s']:.3f} s")
    print(f"in process, 100 MB: {_in_process(work, args.token)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
