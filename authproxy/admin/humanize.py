"""Durations, times and rates as a person reads them: shared by the status page and ``authproxy status``.

Plain text only; the page escapes what it takes from here, the terminal table
passes everything through ``errors.one_line``.
"""

from __future__ import annotations

import time
from typing import Any


def span(seconds: float) -> str:
    """3 s, 4 min 10 s, 2 h 5 min, 3 d 4 h."""
    s = round(abs(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, s = divmod(s, 60)
        return f"{m} min {s} s" if s else f"{m} min"
    if s < 86400:
        h, rem = divmod(s, 3600)
        m = rem // 60
        return f"{h} h {m} min" if m else f"{h} h"
    d, rem = divmod(s, 86400)
    h = rem // 3600
    return f"{d} d {h} h" if h else f"{d} d"


def ago(at: float | None, now: float) -> str:
    return "-" if at is None else f"{span(now - at)} ago"


def expiry(token: dict[str, Any]) -> str:
    exp = token.get("expires_in")
    if exp is None:
        return "never" if token.get("state") in ("fresh", "refreshing", "due") else "-"
    return f"in {span(exp)}" if exp > 0 else "expired"


def rate(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def workers_ready(workers: list[dict[str, Any]]) -> str:
    """``2 of 2 ready``: the workers of ``run --workers`` accepting connections."""
    return f"{sum(w.get('state') == 'ready' for w in workers)} of {len(workers)} ready"


def store_health(store: dict[str, Any] | None, now: float) -> str:
    """``redis redis://host:6379/0: ok (0.4 ms)``, or since when and why it cannot be reached."""
    if not store:
        return "-"
    text = f"{store.get('kind', '?')} {store.get('where', '')}: {store.get('state', '?')}"
    if store.get("state") == "ok" and store.get("latency_ms") is not None:
        text += f" ({store['latency_ms']} ms)"
    if store.get("last_error"):
        text += f"; last error {ago(store.get('last_error_at'), now)}: {store['last_error']}"
    return text


def clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


