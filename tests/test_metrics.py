"""Metrics.request_done gathers a loop turn's requests and writes them once (metrics.py says why).

The batch writes a histogram's sum and buckets itself: these tests hold it to
what prometheus_client's own observe() records, so an upgrade that changes the
histogram's inside fails here rather than skewing every latency metric.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.samples import Sample

from authproxy.ops.accesslog import AccessRecord
from authproxy.ops.metrics import _BUCKETS, Metrics

# Every bucket's edge, either side of it, and past the last bound (+Inf).
DURATIONS_MS = [0.2, 1.0, 1.01, 2.5, 7.0, 10.0, 49.9, 250.0, 999.0, 2500.0, 29999.0, 30000.0, 30001.0, 95000.0]


def _samples(registry: CollectorRegistry, name: str) -> list[Sample]:
    return sorted(
        (s for family in registry.collect() for s in family.samples if s.name.startswith(name)),
        key=lambda s: (s.name, sorted(s.labels.items())),
    )


def _count(m: Metrics, route: str, status: str) -> float | None:
    labels = {"route": route, "mode": "plain", "status": status}
    return m.registry.get_sample_value("authproxy_requests_total", labels)


def _record(ms: float, status: int = 200, route: str = "api") -> AccessRecord:
    return AccessRecord(method="GET", mode="plain", host="h", path="/", route=route, status=status, ms=ms, bytes_out=7)


async def test_a_turns_requests_are_written_once_the_turn_ends_and_match_observe() -> None:
    m = Metrics()
    for ms in DURATIONS_MS:
        m.request_done(_record(ms))
    m.request_done(_record(3.0, status=502, route="other"))
    assert _count(m, "api", "200") == 0  # gathered, not yet written
    await asyncio.sleep(0)  # the flush was scheduled for the next turn
    reference = CollectorRegistry()
    h = Histogram("authproxy_request_duration_seconds", "x", ["route", "mode"], buckets=_BUCKETS, registry=reference)
    for ms in DURATIONS_MS:
        h.labels("api", "plain").observe(ms / 1000)
    h.labels("other", "plain").observe(0.003)
    ours = [(s.name, s.labels, s.value) for s in _samples(m.registry, "authproxy_request_duration_seconds")]
    theirs = [(s.name, s.labels, s.value) for s in _samples(reference, "authproxy_request_duration_seconds")]
    assert [x for x in ours if not x[0].endswith("_created")] == [x for x in theirs if not x[0].endswith("_created")]
    assert _count(m, "api", "200") == len(DURATIONS_MS)
    assert _count(m, "other", "502") == 1
    assert m.registry.get_sample_value("authproxy_response_bytes_total", {"route": "api"}) == 7 * len(DURATIONS_MS)


def test_without_a_running_loop_a_request_is_written_at_once() -> None:
    m = Metrics()
    m.request_done(_record(4.0))
    assert _count(m, "api", "200") == 1
    assert (
        m.registry.get_sample_value("authproxy_request_duration_seconds_sum", {"route": "api", "mode": "plain"})
        == 0.004
    )
