"""The allocator settings in authproxy/server/memory.py, observed in a real process's RSS.

The pattern that grew the soak's RSS: large buffers interleaved with small objects that
outlive them. Freed buffers then sit in holes of the heap, below live data, where glibc
never returns them; with the fixed mmap threshold they never enter the heap at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("glibc's allocator is a Linux matter", allow_module_level=True)

_PROGRAM = textwrap.dedent(
    """
    import sys
    from authproxy.server.memory import tune_malloc

    def rss_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    applied = tune_malloc() if sys.argv[1] == "tuned" else False
    base = rss_kib()
    buffers, keep = [], []
    for i in range(600):
        buffers.append(bytearray(96 * 1024))  # a body chunk, a TLS buffer
        keep.append(bytearray(2048))  # something small that outlives it
    peak = rss_kib()
    del buffers
    print(applied, base, peak, rss_kib())
    """
)


def _run(mode: str, env: dict[str, str] | None = None) -> tuple[bool, int, int, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2]), int(out[3])


def test_freed_buffers_go_back_to_the_os() -> None:
    applied, base, peak, after = _run("tuned")
    assert applied
    assert peak - base > 40_000  # the buffers were really resident (~56 MiB)
    assert after - base < 8_000, f"RSS {base} -> {peak} -> {after} KiB"


def test_without_the_settings_the_heap_keeps_them() -> None:
    # The control: the same program without the settings keeps most of the memory,
    # which is what the tuned run above is measured against.
    applied, base, peak, after = _run("plain")
    assert not applied
    assert after - base > 30_000, f"RSS {base} -> {peak} -> {after} KiB"


def test_an_operators_malloc_settings_win() -> None:
    applied, *_ = _run("tuned", {"MALLOC_ARENA_MAX": "4"})
    assert not applied
