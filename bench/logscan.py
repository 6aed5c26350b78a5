"""The proxies' logs: authproxy's access lines and problems, CONNECT counts, peers' errors."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

ACCESS_STATUS = re.compile(r" status=(\d{3}) ")
QUIET = re.compile(r"^\S+ (info|debug) ")
PEER_PROBLEM = re.compile(r"(?i)\b(error|warn\w*|fatal|traceback|exception|critical)\b")


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
