"""Prometheus metrics, one registry per running proxy.

Labels carry route names, modes, status codes and error codes: values the
config or the proxy chose, never anything from a request or a credential.
Requests are counted from the access record at the one place a request ends
(``Connection._one``), so the log line and the metrics cannot disagree.

With ``run --workers N`` every worker keeps its values in prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor) and the
supervisor's admin listener adds them up; each gauge says how (``multiprocess_mode``,
ignored in a single process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .accesslog import AccessRecord

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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
        self.reloads = Counter("authproxy_reloads", "Route table reloads, by outcome.", ["outcome"], registry=r)
        # Every worker loads the same file; the latest value is the table in force.
        self.routes = Gauge(
            "authproxy_routes", "Routes in the table in force.", registry=r, multiprocess_mode="livemostrecent"
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}

    def request_done(self, rec: AccessRecord) -> None:
        route = rec.route or "-"
        # labels() hashes and locks on every call: keep the children of hot label sets.
        key = (route, rec.mode, rec.status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, rec.mode, str(rec.status)),
                self.latency.labels(route, rec.mode),
                self.bytes_in.labels(route),
                self.bytes_out.labels(route),
            )
        children[0].inc()
        children[1].observe(rec.ms / 1000)
        if rec.bytes_in:
            children[2].inc(rec.bytes_in)
        if rec.bytes_out:
            children[3].inc(rec.bytes_out)
        if rec.error:
            self.errors.labels(route, rec.error).inc()
        if rec.retry:
            self.retries.labels(route, rec.retry).inc()

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
