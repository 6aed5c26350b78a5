"""Instructions per request of the access line and the metrics alone, counted by callgrind.

``bench/ir.py`` counts a whole proxied request; this isolates what a finished
request costs the access log (``accesslog.emit``, text or JSON, through the
batching stderr handler) and the metrics (``Metrics.request_done``), with the
record built as ``server/connection.py`` builds it and the loop turning every
``PER_TURN`` requests (default 8, as under load; 1 when idle). Runs itself under
valgrind for N1 and N2 requests and prints (Ir(N2) - Ir(N1)) / (N2 - N1).

    python3 bench/ops_ir.py [N1 N2] [text|json]

- ``PARTS``: what each request runs beyond building its record, ``emit,metrics``
  (default), ``emit``, ``metrics`` or ``none`` (the baseline to subtract).
- Run from a checkout's root: it measures the ``authproxy`` it imports from there.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PER_TURN = int(os.environ.get("PER_TURN", "8"))  # requests finished per loop turn


async def serve(n: int) -> None:
    from authproxy.ops import accesslog
    from authproxy.ops.accesslog import AccessRecord
    from authproxy.ops.metrics import Metrics

    metrics = Metrics()
    parts = os.environ.get("PARTS", "emit,metrics")
    for i in range(n):
        started = time.perf_counter()
        rec = AccessRecord("GET", "plain", "-", "")
        rec.host, rec.path, rec.route = "127.0.0.1:8080", "/x", "bench"
        rec.token = "fresh"
        rec.status = 200
        rec.bytes_out = 100
        rec.ms = (time.perf_counter() - started) * 1000
        if "emit" in parts:
            accesslog.emit(rec)
        if "metrics" in parts:
            metrics.request_done(rec)
        if i % PER_TURN == PER_TURN - 1:
            await asyncio.sleep(0)
    await asyncio.sleep(0)


def child(n: int, fmt: str) -> None:
    import uvloop

    from authproxy.ops import accesslog

    accesslog.setup(fmt)
    uvloop.run(serve(n))


def measure(n: int, fmt: str, tmp: Path) -> int:
    out = tmp / f"cg.{n}"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__, "child"]
    cmd += [str(n), fmt]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m = re.search(r"^(?:summary|totals):\s+(\d+)", out.read_text(), re.M)
    assert m, "no callgrind totals"
    return int(m.group(1))


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "child":
        child(int(args[1]), args[2])
        return
    fmt = args.pop() if args and args[-1] in ("text", "json") else "text"
    n1, n2 = (int(args[0]), int(args[1])) if len(args) >= 2 else (2000, 12000)
    with tempfile.TemporaryDirectory() as d:
        a, b = measure(n1, fmt, Path(d)), measure(n2, fmt, Path(d))
    parts = os.environ.get("PARTS", "emit,metrics")
    print(f"{parts} ({fmt}): Ir/request = {(b - a) / (n2 - n1):,.0f}  ({a:,} @ {n1}, {b:,} @ {n2})")


if __name__ == "__main__":
    main()
