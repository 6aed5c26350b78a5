#!/usr/bin/env python3
"""Draw the scaling curve of a bench run (results.json) as a PNG a person reads at a glance.

    python3 bench/plot.py WORKDIR/results.json bench/scaling.png

req/s on the left axis (solid lines) and p99 latency (log scale) on the right (dashed), per
connection count, medians over the run's rounds: one colour per authproxy variant that ran the
scaling extra (`--authproxy-workers 1,2`: `authproxy` and `authproxy --workers 2`).
matplotlib comes with `bash bench/setup.sh`.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.ticker import LogFormatter


def variant_label(data: dict[str, Any], target: str) -> str:
    """The table label of a target (results.json `targets`); older files had one `authproxy` target
    whose configuration is in `args`."""
    label = data.get("targets", {}).get(target, {}).get("label")
    if label:
        return str(label)
    args = data.get("args", {})
    workers, loop = args.get("authproxy_workers"), args.get("authproxy_loop")
    if target == "authproxy" and workers and workers != "1":
        target += f" --workers {workers}"
    return target + (f" --loop {loop}" if loop and loop != "asyncio" else "")


def main(src: Path, dst: Path) -> None:
    data = json.loads(src.read_text())
    # target -> connections -> the rounds' values, targets in the order they ran
    rps: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    p99: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in data["results"]:
        if r.get("scenario") == "scaling" and "rps" in r:
            rps[r["target"]][r["conns"]].append(r["rps"])
            p99[r["target"]][r["conns"]].append(r["p99_ms"])
    if not rps:
        raise SystemExit(f"{src}: no scaling results (run the bench with --extras scaling)")
    levels = sorted({n for curve in rps.values() for n in curve})
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    right = ax.twinx()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    legend = []
    for i, (target, curve) in enumerate(rps.items()):
        mine, colour = sorted(curve), colours[i % len(colours)]
        ax.plot(mine, [statistics.median(curve[n]) for n in mine], "o-", color=colour)
        right.plot(mine, [statistics.median(p99[target][n]) for n in mine], "s--", color=colour, alpha=0.7)
        legend.append(Line2D([], [], color=colour, label=variant_label(data, target)))
    legend += [
        Line2D([], [], color="grey", marker="o", label="req/s (left)"),
        Line2D([], [], color="grey", marker="s", linestyle="--", label="p99 ms (right)"),
    ]
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(n) for n in levels])
    ax.set_xlabel("concurrent client connections (wrk, plain small GET)")
    ax.set_ylabel("requests per second (solid)")
    ax.set_ylim(bottom=0)
    right.set_yscale("log")
    right.set_ylabel("p99 latency, ms (log, dashed)")
    right.yaxis.set_major_formatter(LogFormatter())  # 10, 100 rather than 10^1, 10^2
    right.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    fig.legend(handles=legend, fontsize="small", loc="lower center", ncol=2, frameon=False)
    ax.set_title(f"authproxy scaling, {data.get('started', '')[:16]}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout(rect=(0, 0.06 * ((len(legend) + 1) // 2), 1, 1))  # room for the legend below
    fig.savefig(dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
