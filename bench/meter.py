"""/proc readings: a process tree's RSS and CPU time, sampled while a run lasts; the load average."""

from __future__ import annotations

import os
import threading
import time
from typing import Any


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


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
