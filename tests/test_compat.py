"""The third-party internals authproxy/compat.py relies on: each one's shape, and the effect it buys.

These fail by name when a library upgrade moves or changes a private attribute,
rather than letting the proxy silently lose the memory or the metric it was for.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import textwrap
from asyncio import sslproto
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from prometheus_client import CollectorRegistry, Histogram

from authproxy.compat import cap_asyncio_tls_read, histogram_add
from authproxy.server.memory import TLS_READ_BUFFER

_ASYNCIO_DEFAULT_TLS_READ = 256 * 1024
_PAYLOAD = 1 << 20  # many TLS records, more than the capped buffer holds

# -- asyncio.sslproto.SSLProtocol.max_size -------------------------------------


@pytest.fixture
def library_default_tls_read() -> Iterator[None]:
    """asyncio's class attribute as the library ships it, put back after the test (it is process-wide)."""
    before = sslproto.SSLProtocol.max_size
    sslproto.SSLProtocol.max_size = _ASYNCIO_DEFAULT_TLS_READ
    yield
    sslproto.SSLProtocol.max_size = before


def test_asyncio_tls_read_size_is_a_class_attribute_of_256_kib() -> None:
    # In a fresh interpreter, so nothing this process ran has capped it yet.
    out = subprocess.run(
        [sys.executable, "-c", "from asyncio import sslproto; print(repr(vars(sslproto.SSLProtocol)['max_size']))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    # Smaller already, and the cap buys nothing; gone or renamed, and it does nothing.
    assert out == str(_ASYNCIO_DEFAULT_TLS_READ)


async def _tls_client_protocol(ca: trustme.CA, payload: int) -> tuple[sslproto.SSLProtocol, int]:
    """A real TLS connection on asyncio's loop: the client's SSL protocol, and how many bytes it read."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        protocol = writer.transport._ssl_protocol  # type: ignore[attr-defined]
        got = len(await reader.read(-1))
        writer.close()
        return protocol, got
    finally:
        server.close()
        await server.wait_closed()


async def test_capped_asyncio_tls_connection_allocates_and_reads_at_most_the_cap(
    library_default_tls_read: None,
) -> None:
    assert isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop)  # asyncio's own SSL layer
    ca = trustme.CA()
    protocol, _ = await _tls_client_protocol(ca, 1)
    assert isinstance(protocol, sslproto.SSLProtocol)
    # Without the cap: the buffer each connection zero-fills, resident from the first byte.
    assert len(protocol._ssl_buffer) == _ASYNCIO_DEFAULT_TLS_READ  # type: ignore[attr-defined]

    cap_asyncio_tls_read(TLS_READ_BUFFER)
    assert sslproto.SSLProtocol.max_size == TLS_READ_BUFFER
    protocol, got = await _tls_client_protocol(ca, _PAYLOAD)
    assert got == _PAYLOAD  # every byte still arrives
    assert len(protocol._ssl_buffer) == TLS_READ_BUFFER  # type: ignore[attr-defined]
    assert len(protocol.get_buffer(_PAYLOAD)) == TLS_READ_BUFFER  # and the most one read asks for

    cap_asyncio_tls_read(_ASYNCIO_DEFAULT_TLS_READ)  # a cap never raises it
    assert sslproto.SSLProtocol.max_size == TLS_READ_BUFFER


# -- prometheus_client Histogram._sum / ._buckets -------------------------------

_BOUNDS = (0.001, 0.01, 0.1, 1.0)
_VALUES = [0.0002, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.5, 1.0, 1.5, 100.0]  # each bound, either side, +Inf


def _batch(values: list[float]) -> tuple[float, list[int]]:
    counts = [0] * (len(_BOUNDS) + 1)
    for v in values:
        counts[bisect_left(_BOUNDS, v)] += 1
    return sum(values), counts


def test_histogram_child_keeps_a_sum_and_one_value_per_bucket() -> None:
    child = Histogram("h", "x", ["route"], buckets=_BOUNDS, registry=CollectorRegistry()).labels("a")
    assert callable(child._sum.inc) and child._sum.get() == 0.0
    assert len(child._buckets) == len(_BOUNDS) + 1  # +Inf last
    assert all(callable(b.inc) and b.get() == 0.0 for b in child._buckets)
    child.observe(0.05)
    assert child._sum.get() == 0.05
    assert [b.get() for b in child._buckets] == [0, 0, 1, 0, 0]  # per bucket, not cumulative


def _samples(registry: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
    return sorted(
        (s.name, sorted(s.labels.items()), s.value)
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    )


def test_histogram_add_records_what_observe_records() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = Histogram("h", "x", ["route"], buckets=_BOUNDS, registry=ours)
    observed = Histogram("h", "x", ["route"], buckets=_BOUNDS, registry=theirs)
    total, counts = _batch(_VALUES)
    histogram_add(batched.labels("a"), total, counts)
    histogram_add(batched.labels("a"), *_batch([0.003]))  # a second batch adds to the first
    for v in [*_VALUES, 0.003]:
        observed.labels("a").observe(v)
    assert _samples(ours) == _samples(theirs)


_MULTIPROCESS = textwrap.dedent(
    """
    import json, sys
    from bisect import bisect_left
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.multiprocess import MultiProcessCollector
    from authproxy.compat import histogram_add

    bounds, values = json.loads(sys.argv[1])
    batched = Histogram("batched", "x", buckets=bounds)
    observed = Histogram("observed", "x", buckets=bounds)
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect_left(bounds, v)] += 1
        observed.observe(v)
    histogram_add(batched, sum(values), counts)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    out = {}
    for family in registry.collect():
        for s in family.samples:
            key = s.name[len(family.name):] + json.dumps(s.labels, sort_keys=True)
            out.setdefault(key, {})[family.name] = s.value
    print(json.dumps(out))
    """
)


def test_histogram_add_in_multiprocess_mode_records_what_observe_records(tmp_path: Path) -> None:
    # Where the batch pays: every value write under --workers goes to a shared mmap file.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _MULTIPROCESS, json.dumps([_BOUNDS, _VALUES])],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    samples: dict[str, dict[str, float]] = json.loads(out)
    assert len(samples) == len(_BOUNDS) + 3  # every bucket, +Inf, _count and _sum
    for key, values in samples.items():
        assert values.keys() == {"batched", "observed"}, key
        assert values["batched"] == pytest.approx(values["observed"]), key


# -- prometheus_client.values.ValueClass --------------------------------------------

_VALUES_PROGRAM = textwrap.dedent(
    """
    import os, sys
    from prometheus_client import CollectorRegistry, Counter, values
    from authproxy.compat import prometheus_values_from_env

    # As a forked worker finds it: chosen at import, before the metrics folder was named.
    assert values.ValueClass is values.MutexValue, values.ValueClass
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    if sys.argv[2] == "rechoose":
        prometheus_values_from_env()
    Counter("forked_total", "x", registry=CollectorRegistry()).inc(3)
    print(sorted(os.listdir(sys.argv[1])))
    """
)


@pytest.mark.parametrize("mode", ["rechoose", "as imported"])
def test_value_class_is_chosen_at_import_and_chosen_again_from_the_environment(tmp_path: Path, mode: str) -> None:
    """The shape: ``values.ValueClass`` is fixed when prometheus_client is imported. The effect:
    chosen again, a counter made afterwards writes the multiprocess file its worker's pid names,
    which the supervisor's /metrics adds up; without it, nothing reaches the folder."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    out = subprocess.run(
        [sys.executable, "-c", _VALUES_PROGRAM, str(tmp_path), mode],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    files = json.loads(out.replace("'", '"'))
    if mode == "rechoose":
        assert len(files) == 1 and files[0].startswith("counter_"), files
    else:
        assert files == []
