"""Per-route request and error rates, from the counters of a Prometheus registry.

Every few seconds the counters are sampled into a small ring, and a rate is
the growth from the oldest sample in the last minute to now. The registry is
the proxy's own, or (``run --workers``) the supervisor's, which adds up every
worker's multiprocess files: the same code gives the same numbers either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

RATE_WINDOW = 60.0  # seconds the rates look back over
_TICK = 5.0  # seconds between samples
_MIN_SPAN = 1.0  # a rate never divides by less than this (just after start)
UNMATCHED = "-"  # the route label of requests no route matched

_REQUESTS = "authproxy_requests"
_ERRORS = "authproxy_errors"
_LATENCY = "authproxy_request_duration_seconds"


@dataclass(frozen=True, slots=True)
class _Totals:
    requests: float = 0.0
    errors: float = 0.0
    latency_sum: float = 0.0
    latency_count: float = 0.0


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float  # time.monotonic()
    totals: dict[str, _Totals]


def _by_route(collected: Iterable[Any], suffix: str) -> dict[str, float]:
    """Sum one sample kind (``_total``, ``_sum``, ``_count``) of a metric over every label but ``route``."""
    out: dict[str, float] = {}
    for family in collected:
        for s in family.samples:
            if s.name.endswith(suffix):
                route = s.labels.get("route", UNMATCHED)
                out[route] = out.get(route, 0.0) + s.value
    return out


class Rates:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._ring: deque[_Sample] = deque(maxlen=int(RATE_WINDOW / _TICK) + 1)
        self._ticker: asyncio.Task[None] | None = None
        self.sample()

    def _families(self, *names: str) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {n: [] for n in names}
        for family in self.registry.collect():
            if family.name in out:
                out[family.name].append(family)
        return out

    def _totals(self) -> dict[str, _Totals]:
        f = self._families(_REQUESTS, _ERRORS, _LATENCY)
        requests, errors = _by_route(f[_REQUESTS], "_total"), _by_route(f[_ERRORS], "_total")
        lat_sum, lat_count = _by_route(f[_LATENCY], "_sum"), _by_route(f[_LATENCY], "_count")
        names = set(requests) | set(errors) | set(lat_count)
        return {
            n: _Totals(requests.get(n, 0.0), errors.get(n, 0.0), lat_sum.get(n, 0.0), lat_count.get(n, 0.0))
            for n in names
        }

    def sample(self) -> None:
        """Add the counters as they are now to the ring (the ticker calls this every few seconds)."""
        self._ring.append(_Sample(time.monotonic(), self._totals()))

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            self.sample()

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    def _baseline(self, now: float) -> _Sample:
        for s in self._ring:  # oldest first
            if now - s.at <= RATE_WINDOW + _TICK:
                return s
        return self._ring[-1]

    def traffic(self) -> tuple[dict[str, dict[str, Any]], float]:
        """Per route: totals, rates and mean latency over the window; and the window's length."""
        now = time.monotonic()
        totals = self._totals()
        base = self._baseline(now)
        span = max(now - base.at, _MIN_SPAN)
        out = {}
        for name in set(totals) | set(base.totals) | {UNMATCHED}:
            cur, old = totals.get(name, _Totals()), base.totals.get(name, _Totals())
            d_count = cur.latency_count - old.latency_count
            out[name] = {
                "requests": int(cur.requests),
                "errors": int(cur.errors),
                "req_rate": round((cur.requests - old.requests) / span, 3),
                "err_rate": round((cur.errors - old.errors) / span, 3),
                "latency_ms": (round((cur.latency_sum - old.latency_sum) / d_count * 1000, 1) if d_count > 0 else None),
            }
        return out, span

    def status_counts(self) -> dict[str, dict[str, int]]:
        """Requests by route and status class ("2xx", ...), from the counter."""
        out: dict[str, dict[str, int]] = {}
        for family in self._families(_REQUESTS)[_REQUESTS]:
            for s in family.samples:
                if not s.name.endswith("_total"):
                    continue
                code = s.labels.get("status", "0")
                cls = f"{code[0]}xx" if len(code) == 3 and code.isdigit() else "other"
                per = out.setdefault(s.labels.get("route", UNMATCHED), {})
                per[cls] = per.get(cls, 0) + int(s.value)
        return {r: dict(sorted(v.items())) for r, v in out.items()}
