"""Memory of a running ``authproxy run``: RSS and PSS of every process, and the total.

    python3 bench/pss.py                       # one process, the shipped routes.yaml
    python3 bench/pss.py --workers 2
    python3 bench/pss.py --workers auto --settle 5

Starts this checkout's proxy (``python -m authproxy run``) on a free loopback port
with HOME in a temporary folder (the shipped routes.yaml keeps its state under
``~/.local/state``), once to make the CA and then for real, waits for "listening
on", sends a few requests through it, lets it settle, and reads
``/proc/PID/smaps_rollup`` of the proxy and every process under it. PSS counts a
page shared by N processes as 1/N in each, so the PSS total is what the whole proxy
costs the machine; the RSS total counts shared pages once per process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rollup(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value, *_ = line.split()
        out[key.rstrip(":")] = int(value)
    return out


def _tree(pid: int) -> list[int]:
    """``pid`` and every process under it, parents first."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        for kid in kids:
            found += _tree(int(kid))
    return found


def _role(pid: int, top: int, multi: bool) -> str:
    if pid == top:
        return "supervisor" if multi else "proxy"
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if b"--worker-index" in cmd:
        return "worker (new interpreter)"
    return "worker (forked)"


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "authproxy", "run", "-c", str(ROOT / "routes.yaml"), "--listen", "127.0.0.1:0", *args],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    for raw in proc.stderr:
        m = re.search(rb"listening on \S+:(\d+)", raw)
        if m:
            return proc, int(m.group(1))
    raise SystemExit("the proxy did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1")
    ap.add_argument("--loop", default="auto")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait after the requests")
    ap.add_argument("--requests", type=int, default=50)
    opts = ap.parse_args()
    home = tempfile.mkdtemp(prefix="authproxy-pss-")
    env = {**os.environ, "HOME": home, "PYTHONPATH": str(ROOT)}
    args = ["--workers", opts.workers, "--loop", opts.loop]
    proc, _ = _start(args, env)  # the first start makes the CA
    proc.terminate()
    proc.wait(30)
    proc, port = _start(args, env)
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))
        for _ in range(opts.requests):  # refused (loopback port 9 is closed): the data plane runs all the same
            with contextlib.suppress(OSError):
                opener.open("http://127.0.0.1:9/", timeout=10).read()
        time.sleep(opts.settle)
        print(f"`authproxy run --workers {opts.workers} --loop {opts.loop}`, shipped routes.yaml, "
              f"{opts.requests} requests, {opts.settle:g} s settled\n")  # fmt: skip
        print("| process | pid | RSS KiB | PSS KiB | private KiB |")
        print("|---|---|---|---|---|")
        rss = pss = 0
        tree = _tree(proc.pid)
        for pid in tree:
            r = _rollup(pid)
            private = r["Private_Clean"] + r["Private_Dirty"]
            rss, pss = rss + r["Rss"], pss + r["Pss"]
            print(f"| {_role(pid, proc.pid, len(tree) > 1)} | {pid} | {r['Rss']:,} | {r['Pss']:,} | {private:,} |")
        print(f"| **total** | | {rss:,} | **{pss:,}** | |")
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
