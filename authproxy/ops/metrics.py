"""Prometheus metrics, one registry per running proxy.

Labels carry route names, modes, status codes and error codes: values the
config or the proxy chose, never anything from a request or a credential.
Requests are counted from the access record at the one place a request ends
(``Connection._one``), so the log line and the metrics cannot disagree.

With ``run --workers N`` every worker keeps its values in prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor) and the
supervisor's admin listener adds them up; each gauge says how (``multiprocess_mode``,
ignored in a single process).

A request's counts are gathered per label set and written once per turn of the
event loop: under --workers every value update is a locked write to a shared
mmap, six per request, ~10% of a small request's CPU; at 64 connections a turn
ends a dozen requests or more.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from authproxy.compat import histogram_add
from authproxy.ops.accesslog import AccessRecord

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Batch:
    """One label set's requests since the last flush."""

    __slots__ = ("buckets", "bytes_in", "bytes_out", "children", "count", "seconds")

    def __init__(self, children: tuple[Any, Any, Any, Any]) -> None:
        self.children = children
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(_BUCKETS) + 1)  # the last is +Inf
        self.bytes_in = 0
        self.bytes_out = 0


class Metrics:
    def __init__(self, multiprocess: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._multiprocess = multiprocess
        self._certificate_count: Callable[[], int] | None = None
        r = self.registry
        self.requests = Counter(
            "authproxy_requests",
            "Requests answered, by route, mode and status.",
            ["route", "mode", "status"],
            registry=r,
        )
        self.errors = Counter(
            "authproxy_errors",
            "Answers the proxy made itself, by route and error code.",
            ["route", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "authproxy_request_duration_seconds",
            "Time from request head to the end of the answer.",
            ["route", "mode"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.bytes_in = Counter("authproxy_request_bytes", "Request body bytes, by route.", ["route"], registry=r)
        self.bytes_out = Counter("authproxy_response_bytes", "Response body bytes, by route.", ["route"], registry=r)
        self.scrubbed = Counter(
            "authproxy_scrubbed_bytes",
            "Response bytes the scrubber replaced (an injected credential coming back), by route.",
            ["route"],
            registry=r,
        )
        self.token_fetches = Counter(
            "authproxy_token_fetches",
            "Credential fetches, by route and outcome (ok or an error code).",
            ["route", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "authproxy_401_retries",
            "401 answers from upstreams, by route and what followed (done or skipped).",
            ["route", "outcome"],
            registry=r,
        )
        self.connections = Gauge(
            "authproxy_active_connections", "Client connections open now.", registry=r, multiprocess_mode="livesum"
        )
        self.tunnels = Gauge(
            "authproxy_active_tunnels",
            "CONNECT tunnels open now, by kind (tunnel, intercept).",
            ["kind"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.certificates = Gauge(
            "authproxy_certificates_cached", "Leaf certificates in the cache.", registry=r, multiprocess_mode="livesum"
        )
        # The shared token store (docs/scale-out.md); idle with the file store.
        self.store_lock_waits = Counter(
            "authproxy_token_store_lock_waits",
            "Fetches that waited for another's lease, by route.",
            ["route"],
            registry=r,
        )
        self.store_lease_losses = Counter(
            "authproxy_token_store_lease_losses",
            "Leases lost before their holder's write (that write refused), by route.",
            ["route"],
            registry=r,
        )
        self.store_errors = Counter(
            "authproxy_token_store_errors", "Calls to the token store that failed, by operation.", ["op"], registry=r
        )
        self.store_latency = Histogram(
            "authproxy_token_store_seconds", "Token store calls, by operation.", ["op"], buckets=_BUCKETS, registry=r
        )
        self.placeholder_misdirected = Counter(
            "authproxy_placeholder_misdirected",
            "Placeholders refused where their route does not go, by the placeholder's route and mode.",
            ["route", "mode"],
            registry=r,
        )
        self.reloads = Counter("authproxy_reloads", "Route table reloads, by outcome.", ["outcome"], registry=r)
        # Every worker loads the same file; the latest value is the table in force.
        self.routes = Gauge(
            "authproxy_routes", "Routes in the table in force.", registry=r, multiprocess_mode="livemostrecent"
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}
        self._pending: dict[tuple[str, str, int], _Batch] = {}
        self._flush_scheduled = False

    def request_done(self, rec: AccessRecord) -> None:
        route = rec.route or "-"
        key = (route, rec.mode, rec.status)
        batch = self._pending.get(key)
        if batch is None:
            batch = self._pending[key] = _Batch(self._children_of(key))
        seconds = rec.ms / 1000
        batch.count += 1
        batch.seconds += seconds
        batch.buckets[bisect_left(_BUCKETS, seconds)] += 1  # the first bound >= seconds, as observe() picks
        batch.bytes_in += rec.bytes_in
        batch.bytes_out += rec.bytes_out
        if rec.error:
            self.errors.labels(route, rec.error).inc()
        if rec.retry:
            self.retries.labels(route, rec.retry).inc()
        if rec.scrubbed:
            self.scrubbed.labels(route).inc(rec.scrubbed)
        if not self._flush_scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()  # no loop (a test, a tool): now
                return
            self._flush_scheduled = True

    def _children_of(self, key: tuple[str, str, int]) -> tuple[Any, Any, Any, Any]:
        # labels() hashes and locks on every call: keep the children of hot label sets.
        children = self._children.get(key)
        if children is None:
            route, mode, status = key
            children = self._children[key] = (
                self.requests.labels(route, mode, str(status)),
                self.latency.labels(route, mode),
                self.bytes_in.labels(route),
                self.bytes_out.labels(route),
            )
        return children

    def flush(self) -> None:
        """Write what request_done gathered since the last flush."""
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        for batch in pending.values():
            requests, latency, bytes_in, bytes_out = batch.children
            requests.inc(batch.count)
            if batch.bytes_in:
                bytes_in.inc(batch.bytes_in)
            if batch.bytes_out:
                bytes_out.inc(batch.bytes_out)
            # prometheus_client has no public call for a batch of observations (compat.py).
            histogram_add(latency, batch.seconds, batch.buckets)

    def watch_certificates(self, count: Callable[[], int]) -> None:
        if self._multiprocess:
            # A function gauge is read at scrape time, in the scraping process:
            # the supervisor cannot call it, so publish() copies the count.
            self._certificate_count = count
        else:
            self.certificates.set_function(lambda: float(count()))

    def publish(self) -> None:
        """Copy values that are computed, not counted, to where the supervisor reads them."""
        if self._certificate_count is not None:
            self.certificates.set(self._certificate_count())
