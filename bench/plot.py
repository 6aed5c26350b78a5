#!/usr/bin/env python3
"""Draw the scaling curve of a bench run (results.json) as a PNG a person reads at a glance.

    python3 bench/plot.py WORKDIR/results.json bench/scaling.png

req/s on the left axis and p99 latency (log scale) on the right, per connection count,
medians over the run's rounds. matplotlib comes with `bash bench/setup.sh`.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(src: Path, dst: Path) -> None:
    data = json.loads(src.read_text())
    rps: dict[int, list[float]] = defaultdict(list)
    p99: dict[int, list[float]] = defaultdict(list)
    for r in data["results"]:
        if r.get("scenario") == "scaling" and "rps" in r:
            rps[r["conns"]].append(r["rps"])
            p99[r["conns"]].append(r["p99_ms"])
    if not rps:
        raise SystemExit(f"{src}: no scaling results (run the bench with --extras scaling)")
    levels = sorted(rps)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(levels, [statistics.median(rps[n]) for n in levels], "o-", color="tab:blue", label="req/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(n) for n in levels])
    ax.set_xlabel("concurrent client connections (wrk, plain small GET)")
    ax.set_ylabel("requests per second", color="tab:blue")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.plot(levels, [statistics.median(p99[n]) for n in levels], "s--", color="tab:red", label="p99 ms")
    right.set_yscale("log")
    right.set_ylabel("p99 latency, ms (log)", color="tab:red")
    workers = data.get("args", {}).get("authproxy_workers")
    title = "authproxy scaling" + (f" (--workers {workers})" if workers else "")
    ax.set_title(f"{title}, {data.get('started', '')[:16]}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
