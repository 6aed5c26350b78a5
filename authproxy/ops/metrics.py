"""Prometheus metrics, one registry per running proxy.

Labels carry route names, modes, status codes and error codes: values the
config or the proxy chose, never anything from a request or a credential.
Requests are counted from the access record at the one place a request ends
(``Connection._one``), so the log line and the metrics cannot disagree.

With ``run --workers N`` every worker keeps its values in prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor) and the
supervisor's admin listener adds them up; each gauge says how (``multiprocess_mode``,
ignored in a single process).

A request's counts go to plain numbers kept per label set (``_Series``), not to
prometheus_client's values, which take a lock per write (and under --workers write a
shared mmap): six such writes per request were ~10% of a small request's CPU. What a
turn of the event loop gathered becomes visible when the turn ends (``_seal``), and
is written to the library's values when something reads the registry (every
request metric is registered through ``_Folded``, which writes first), so in one
process a request costs a few additions and a scrape pays for the rest. Under
--workers the supervisor reads the workers' files, not their registries: there
each turn's counts are written when the turn ends.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from authproxy.compat import histogram_fold
from authproxy.ops.accesslog import AccessRecord

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


_NO_BUCKETS = (0,) * (len(_BUCKETS) + 1)
_M = TypeVar("_M", bound=MetricWrapperBase)


class _Sum:
    """The latency sum of one (route, mode): one histogram child, shared by that pair's statuses."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class _Series:
    """One label set's requests: counted here, written to prometheus_client's values later.

    The counts and buckets only grow; ``sealed`` is what they were when the
    last loop turn ended (what a reader may see), ``folded`` what was written
    to the library's values. ``seconds`` is the running turn's latency sum,
    added to ``total`` when the turn ends: per label set and turn, in the order
    the turn first counted each, as one batch of observations each.
    """

    __slots__ = (
        "buckets",
        "bytes_in",
        "bytes_out",
        "children",
        "count",
        "folded",
        "sealed",
        "seconds",
        "total",
        "turn",
        "unfolded",
    )

    def __init__(self, children: tuple[Any, Any, Any, Any], total: _Sum) -> None:
        self.children, self.total = children, total
        self.count = self.bytes_in = self.bytes_out = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(_BUCKETS) + 1)  # the last is +Inf
        self.sealed = self.folded = (0, 0, 0, _NO_BUCKETS)
        self.turn = False  # counted in the turn that is running
        self.unfolded = False  # sealed since the last fold


class _Folded:
    """A library metric as the registry sees it: whatever is sealed is written to it first.

    A public prometheus_client collector (``describe``/``collect``), registered
    under the metric's own names: a scrape, ``get_sample_value`` and a
    registry restricted to some names all write what is owed before reading.
    """

    def __init__(self, metric: MetricWrapperBase, fold: Callable[[], None]) -> None:
        self._metric, self._fold = metric, fold

    def describe(self) -> Iterable[Metric]:
        return self._metric.describe()

    def collect(self) -> Iterable[Metric]:
        self._fold()
        return self._metric.collect()


class Metrics:
    def __init__(self, multiprocess: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._multiprocess = multiprocess
        self._certificate_count: Callable[[], int] | None = None
        r = self.registry
        self.requests = self._folded(
            Counter(
                "authproxy_requests",
                "Requests answered, by route, mode and status.",
                ["route", "mode", "status"],
                registry=None,
            )
        )
        self.errors = self._folded(
            Counter(
                "authproxy_errors",
                "Answers the proxy made itself, by route and error code.",
                ["route", "code"],
                registry=None,
            )
        )
        self.latency = self._folded(
            Histogram(
                "authproxy_request_duration_seconds",
                "Time from request head to the end of the answer.",
                ["route", "mode"],
                buckets=_BUCKETS,
                registry=None,
            )
        )
        self.bytes_in = self._folded(
            Counter("authproxy_request_bytes", "Request body bytes, by route.", ["route"], registry=None)
        )
        self.bytes_out = self._folded(
            Counter("authproxy_response_bytes", "Response body bytes, by route.", ["route"], registry=None)
        )
        self.scrubbed = self._folded(
            Counter(
                "authproxy_scrubbed_bytes",
                "Response bytes the scrubber replaced (an injected credential coming back), by route.",
                ["route"],
                registry=None,
            )
        )
        self.token_fetches = Counter(
            "authproxy_token_fetches",
            "Credential fetches, by route and outcome (ok or an error code).",
            ["route", "outcome"],
            registry=r,
        )
        self.retries = self._folded(
            Counter(
                "authproxy_401_retries",
                "401 answers from upstreams, by route and what followed (done or skipped).",
                ["route", "outcome"],
                registry=None,
            )
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
        self._series: dict[tuple[str | None, str, int], _Series] = {}
        self._turn: list[_Series] = []  # the series counted in the running turn
        self._unfolded: list[_Series] = []  # sealed, not yet written
        self._sums: dict[Any, _Sum] = {}  # by latency child
        self._rare: dict[tuple[Any, tuple[str, ...]], Any] = {}  # errors, retries, scrubbed: their children

    def _folded(self, metric: _M) -> _M:
        """``metric`` in this registry, collected through ``_Folded`` (made with no registry: the wrapper is)."""
        self.registry.register(_Folded(metric, self.fold))
        return metric

    def request_done(self, rec: AccessRecord) -> None:
        s = self._series.get((rec.route, rec.mode, rec.status))
        if s is None:
            s = self._new_series(rec)
        seconds = rec.ms / 1000
        s.count += 1
        s.seconds += seconds
        s.buckets[bisect_left(_BUCKETS, seconds)] += 1  # the first bound >= seconds, as observe() picks
        s.bytes_in += rec.bytes_in
        s.bytes_out += rec.bytes_out
        if rec.error or rec.retry or rec.scrubbed:
            self._count_rare(rec)
        if not s.turn:
            s.turn = True
            self._turn.append(s)
            if len(self._turn) == 1:
                try:
                    asyncio.get_running_loop().call_soon(self._seal)
                except RuntimeError:
                    self._seal()  # no loop (a test, a tool): now

    def _new_series(self, rec: AccessRecord) -> _Series:
        # Its children now, as observe() would make them: a scrape shows the label set (at 0)
        # from the request on, and their _created times are the first request's.
        route = rec.route or "-"
        latency = self.latency.labels(route, rec.mode)
        total = self._sums.get(latency)
        if total is None:
            total = self._sums[latency] = _Sum()
        s = self._series[(rec.route, rec.mode, rec.status)] = _Series(
            (
                self.requests.labels(route, rec.mode, str(rec.status)),
                latency,
                self.bytes_in.labels(route),
                self.bytes_out.labels(route),
            ),
            total,
        )
        return s

    def _count_rare(self, rec: AccessRecord) -> None:
        """Errors, 401 retries and scrubbed bytes: not on the path of a plain request, written at once."""
        route = rec.route or "-"
        if rec.error:
            self._rare_child(self.errors, route, rec.error).inc()
        if rec.retry:
            self._rare_child(self.retries, route, rec.retry).inc()
        if rec.scrubbed:
            self._rare_child(self.scrubbed, route).inc(rec.scrubbed)

    def _rare_child(self, metric: Any, *labels: str) -> Any:
        child = self._rare.get((metric, labels))
        if child is None:
            child = self._rare[(metric, labels)] = metric.labels(*labels)
        return child

    def _seal(self) -> None:
        """The turn ended: what it counted may be read now (written at once under --workers)."""
        unfolded = self._unfolded
        for s in self._turn:
            s.turn = False
            s.sealed = (s.count, s.bytes_in, s.bytes_out, tuple(s.buckets))
            s.total.value += s.seconds
            s.seconds = 0.0
            if not s.unfolded:
                s.unfolded = True
                unfolded.append(s)
        self._turn.clear()
        if self._multiprocess:
            self.fold()

    def fold(self) -> None:
        """Write what the ended turns counted to prometheus_client's values."""
        unfolded, self._unfolded = self._unfolded, []
        for s in unfolded:
            count, bytes_in, bytes_out, buckets = sealed = s.sealed
            count0, bytes_in0, bytes_out0, buckets0 = s.folded
            requests, latency, bytes_in_child, bytes_out_child = s.children
            requests.inc(count - count0)
            if bytes_in != bytes_in0:
                bytes_in_child.inc(bytes_in - bytes_in0)
            if bytes_out != bytes_out0:
                bytes_out_child.inc(bytes_out - bytes_out0)
            # prometheus_client has no public call for a batch of observations (compat.py).
            histogram_fold(latency, s.total.value, [n - n0 for n, n0 in zip(buckets, buckets0, strict=True)])
            s.folded, s.unfolded = sealed, False

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
