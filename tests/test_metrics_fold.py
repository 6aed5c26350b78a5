"""Metrics counts a request in plain numbers and writes prometheus_client's values when the registry is read.

What a reader sees must not depend on when it reads: these tests hold the
exposition to the one the proxy gave when every loop turn wrote its counts
(the families, their help, types and order; every count; each latency sum
bit for bit, as the sequential sum of each turn's batch), however seldom it
is scraped, through every way of reading a registry. Under --workers a turn's
counts must reach the multiprocess files when the turn ends, since the
supervisor reads those, not the worker's registry.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from authproxy.ops.accesslog import AccessRecord
from authproxy.ops.metrics import Metrics

# The families of /metrics, in order, as every scraper and dashboard knows them.
FAMILIES = [
    ("authproxy_requests_total", "counter", "Requests answered, by route, mode and status."),
    ("authproxy_errors_total", "counter", "Answers the proxy made itself, by route and error code."),
    ("authproxy_request_duration_seconds", "histogram", "Time from request head to the end of the answer."),
    ("authproxy_request_bytes_total", "counter", "Request body bytes, by route."),
    ("authproxy_response_bytes_total", "counter", "Response body bytes, by route."),
    (
        "authproxy_scrubbed_bytes_total",
        "counter",
        "Response bytes the scrubber replaced (an injected credential coming back), by route.",
    ),
    ("authproxy_token_fetches_total", "counter", "Credential fetches, by route and outcome (ok or an error code)."),
    (
        "authproxy_401_retries_total",
        "counter",
        "401 answers from upstreams, by route and what followed (done or skipped).",
    ),
    ("authproxy_active_connections", "gauge", "Client connections open now."),
    ("authproxy_active_tunnels", "gauge", "CONNECT tunnels open now, by kind (tunnel, intercept)."),
    ("authproxy_certificates_cached", "gauge", "Leaf certificates in the cache."),
    ("authproxy_token_store_lock_waits_total", "counter", "Fetches that waited for another's lease, by route."),
    (
        "authproxy_token_store_lease_losses_total",
        "counter",
        "Leases lost before their holder's write (that write refused), by route.",
    ),
    ("authproxy_token_store_errors_total", "counter", "Calls to the token store that failed, by operation."),
    ("authproxy_token_store_seconds", "histogram", "Token store calls, by operation."),
    (
        "authproxy_placeholder_misdirected_total",
        "counter",
        "Placeholders refused where their route does not go, by the placeholder's route and mode.",
    ),
    ("authproxy_reloads_total", "counter", "Route table reloads, by outcome."),
    ("authproxy_routes", "gauge", "Routes in the table in force."),
]


def _records(seed: int, n: int) -> list[AccessRecord]:
    r = random.Random(seed)
    return [
        AccessRecord(
            method="GET",
            mode=r.choice(["plain", "intercept", "gateway"]),
            host="h",
            path="/",
            route=r.choice(["a", "b", None]),
            status=r.choice([200, 200, 200, 404, 502]),
            ms=r.expovariate(1 / 20),
            bytes_in=r.choice([0, 0, 5]),
            bytes_out=r.randint(0, 1000),
            error=r.choice([None] * 5 + ["upstream_unreachable"]),
            retry=r.choice([None] * 6 + ["done", "skipped"]),
            scrubbed=r.choice([0] * 5 + [12]),
        )
        for _ in range(n)
    ]


def _without_created(exposition: bytes) -> bytes:
    """The exposition but its ``_created`` samples (wall-clock times of the first request of each label set)."""
    return b"\n".join(line for line in exposition.split(b"\n") if b"_created" not in line)


def _value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_the_families_their_help_types_and_order_are_those_scrapers_know() -> None:
    text = generate_latest(Metrics().registry).decode()
    heads = [line for line in text.splitlines() if line.startswith("#")]
    expected = []
    for name, kind, help_text in FAMILIES:
        expected += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    assert heads == expected


async def test_every_scrape_schedule_gives_the_same_exposition_and_the_sums_of_each_turns_batch() -> None:
    records = _records(7, 1200)
    per_turn = 5
    often, once = Metrics(), Metrics()
    expected_sum: dict[tuple[str, str], float] = defaultdict(float)
    expected_count: dict[tuple[str, str, str], int] = defaultdict(int)
    for start in range(0, len(records), per_turn):
        turn = records[start : start + per_turn]
        batches: dict[tuple[str | None, str, int], float] = {}  # this turn's, in first-counted order
        for rec in turn:
            often.request_done(rec)
            once.request_done(rec)
            key = (rec.route, rec.mode, rec.status)
            batches[key] = batches.get(key, 0.0) + rec.ms / 1000
            expected_count[(rec.route or "-", rec.mode, str(rec.status))] += 1
        for (route, mode, _), seconds in batches.items():
            expected_sum[(route or "-", mode)] += seconds
        await asyncio.sleep(0)  # the turn ends
        generate_latest(often.registry)  # scraped after every turn; `once` never until the end
    assert _without_created(generate_latest(often.registry)) == _without_created(generate_latest(once.registry))
    assert _without_created(openmetrics_latest(often.registry)) == _without_created(openmetrics_latest(once.registry))
    for (route, mode, status), n in expected_count.items():
        labels = {"route": route, "mode": mode, "status": status}
        assert _value(once, "authproxy_requests_total", **labels) == n
    for (route, mode), total in expected_sum.items():
        assert _value(once, "authproxy_request_duration_seconds_sum", route=route, mode=mode) == total  # bit for bit
    assert sum(expected_count.values()) == len(records)


async def test_a_registry_restricted_to_some_names_sees_what_was_counted() -> None:
    m = Metrics()
    for rec in _records(3, 40):
        m.request_done(rec)
    await asyncio.sleep(0)
    restricted = m.registry.restricted_registry(["authproxy_response_bytes_total"])
    total = sum(s.value for family in restricted.collect() for s in family.samples if s.name.endswith("_total"))
    assert total == sum(rec.bytes_out for rec in _records(3, 40))


async def test_a_turns_requests_appear_at_its_end_and_errors_at_once() -> None:
    m = Metrics()
    rec = AccessRecord(method="GET", mode="plain", host="h", path="/", route="api", status=502, ms=2.0)
    rec.error, rec.retry, rec.scrubbed = "upstream_unreachable", "done", 9
    m.request_done(rec)
    # As when each was an inc() of its own: the rare counts need no turn to end.
    assert _value(m, "authproxy_errors_total", route="api", code="upstream_unreachable") == 1
    assert _value(m, "authproxy_401_retries_total", route="api", outcome="done") == 1
    assert _value(m, "authproxy_scrubbed_bytes_total", route="api") == 9
    assert _value(m, "authproxy_requests_total", route="api", mode="plain", status="502") == 0
    await asyncio.sleep(0)
    assert _value(m, "authproxy_requests_total", route="api", mode="plain", status="502") == 1
    m.request_done(rec)  # a later turn, after a scrape: added to what was written
    await asyncio.sleep(0)
    assert _value(m, "authproxy_requests_total", route="api", mode="plain", status="502") == 2
    assert _value(m, "authproxy_request_duration_seconds_count", route="api", mode="plain") == 2
    assert _value(m, "authproxy_errors_total", route="api", code="upstream_unreachable") == 2


_WORKER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from authproxy.compat import prometheus_values_from_env
    prometheus_values_from_env()
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector
    from authproxy.ops.accesslog import AccessRecord
    from authproxy.ops.metrics import Metrics

    def files():
        # What the supervisor sees: the files, never this process's registry.
        reg = CollectorRegistry()
        MultiProcessCollector(reg, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
        return {
            s.name: s.value for f in reg.collect() for s in f.samples
            if s.name.startswith(("authproxy_request", "authproxy_response")) and s.labels.get("route") == "api"
            and s.labels.get("le") in (None, "0.005")
        }

    async def main():
        m = Metrics(multiprocess=True)
        out = []
        for ms in json.loads(sys.argv[1]):
            m.request_done(AccessRecord(method="GET", mode="plain", host="h", path="/", route="api",
                                        status=200, ms=ms, bytes_out=3))
        out.append(files())
        await asyncio.sleep(0)
        out.append(files())
        print(json.dumps(out))

    asyncio.run(main())
    """
)


def test_under_workers_a_turns_counts_reach_the_files_when_it_ends(tmp_path: Path) -> None:
    durations = [0.5, 4.0, 4.0, 20.0]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, json.dumps(durations)],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    during, after = json.loads(out)
    assert during.get("authproxy_requests_total", 0) == 0
    assert after["authproxy_requests_total"] == len(durations)
    assert after["authproxy_response_bytes_total"] == 3 * len(durations)
    assert after["authproxy_request_duration_seconds_count"] == len(durations)
    assert after["authproxy_request_duration_seconds_bucket"] == 3  # le="0.005": cumulative
    assert after["authproxy_request_duration_seconds_sum"] == sum(ms / 1000 for ms in durations)


def test_histogram_fold_sets_the_sum_and_adds_to_the_buckets() -> None:
    """The shape compat.histogram_fold relies on: a child's ``_sum`` can be set, its buckets added to."""
    from prometheus_client import Histogram

    from authproxy.compat import histogram_fold

    child = Histogram("h", "x", ["route"], buckets=(0.1, 1.0), registry=CollectorRegistry()).labels("a")
    histogram_fold(child, 0.25, [1, 1, 0])
    histogram_fold(child, 0.75, [0, 1, 1])  # the running sum, not an increment
    assert child._sum.get() == 0.75
    assert [b.get() for b in child._buckets] == [1, 2, 1]
