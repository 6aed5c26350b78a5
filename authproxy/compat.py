"""Every use of a third-party library's internals, each behind one function that says what it buys.

A private attribute can change in any release, so each one here is kept only for
a gain that was measured, named in its comment, and ``tests/test_compat.py``
checks both the attribute's shape and its effect: an upgrade that moves one
fails there, by name, instead of quietly costing memory or skewing a metric.
Nothing else in ``authproxy/`` touches a library's private names. This module
imports nothing of authproxy, and each library only when its function runs,
so that every layer may use it and it loads nothing a proxy does not need.

Not here, because they use only public interfaces (our own design around a
library's behaviour, not its internals):

- ``transport/lost.py``'s stand-in transport: an ``asyncio.Transport`` of our
  own that a protocol takes in ``connection_lost``, because both loops' SSL
  layers keep the protocol's bound ``buffer_updated`` after the loss.
- ``server/listener.py``'s second accept path on uvloop: a duplicate of the
  listening socket (``os.dup``) watched with ``loop.add_reader``, because
  libuv accepts one connection per readiness.
- ``run/worker.py``'s loop whose ``create_server`` binds with ``reuse_port``:
  a subclass overriding a public method.

An aiohttp site's listening socket is read through ``AppRunner.addresses``,
which is public, not the site's private ``_server``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Histogram


def cap_asyncio_tls_read(size: int) -> None:
    """Make asyncio's SSL protocol read into at most ``size`` bytes per connection (process-wide).

    ``asyncio.sslproto.SSLProtocol.max_size`` (a class attribute, 256 KiB) is
    the size of the read buffer each TLS connection zero-fills when it is made,
    and the most ``get_buffer`` hands the socket. Gain measured: an idle
    intercepted connection cost ~300 KiB of RSS on asyncio's loop, ~100 KiB
    with 64 KiB here (bench/README.md, Memory); throughput unchanged (a
    100 MB intercepted download). uvloop has its own SSL layer, which this
    leaves alone.
    """
    from asyncio import sslproto

    if sslproto.SSLProtocol.max_size > size:
        sslproto.SSLProtocol.max_size = size


def histogram_add(child: Histogram, total: float, counts: Sequence[int]) -> None:
    """Record a batch of observations on one labelled histogram: their ``total`` and each bucket's count.

    prometheus_client has only ``observe()``, one value at a time; under
    ``--workers`` each value write is a locked write to a shared mmap (two per
    observation: the sum and a bucket). This writes what those observe() calls
    would, once per batch, into the child's private ``_sum`` and ``_buckets``
    (one value per bound, +Inf last; ``counts`` in that order, not
    cumulative). Gain measured, with the rest of the per-turn batching in
    ops/metrics.py: ``--workers 2`` small GETs ~9,430 -> ~10,270 req/s, 152 ->
    140 CPU ms per 1,000 requests (bench/README.md, Metrics once per loop turn).
    """
    child._sum.inc(total)
    for value, n in zip(child._buckets, counts, strict=True):
        if n:
            value.inc(n)


def histogram_fold(child: Histogram, total: float, counts: Sequence[int]) -> None:
    """Bring one labelled histogram up to date: its sum becomes ``total``, each bucket gains its count.

    As ``histogram_add``, but the sum is set rather than added to: the caller
    keeps the running sum of every observation in the order ``histogram_add``
    would have added them, so the exposed float is bit for bit the same however
    seldom this is called (adding a sum of sums rounds differently). ``counts``
    as for ``histogram_add``. Gain measured: written when the registry is read,
    not once per loop turn, a request's metrics cost 5,300 instructions instead
    of 8,500 at 8 requests a turn, 10,100 instead of 35,300 at one
    (bench/ops_ir.py; bench/README.md, Metrics once per loop turn).
    """
    child._sum.set(total)
    for value, n in zip(child._buckets, counts, strict=True):
        if n:
            value.inc(n)


def prometheus_values_from_env() -> None:
    """Choose prometheus_client's value class again, from the environment as it is now.

    prometheus_client picks its value class once, when ``prometheus_client.values``
    is imported: multiprocess files when ``PROMETHEUS_MULTIPROC_DIR`` is set then,
    a lock-guarded float otherwise. A worker forked from the supervisor inherits
    the choice the supervisor made before the metrics folder existed; without
    this its metrics would never reach the files the supervisor's ``/metrics``
    adds up. Gain: workers forked rather than started as new interpreters share
    the supervisor's pages (bench/README.md, "Workers: memory per process").
    """
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
