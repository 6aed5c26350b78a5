"""Which of the hot modules run compiled (mypyc, see setup.py), and running without them.

setup.py compiles the modules named in ``COMPILED`` when the machine can, and installs
each one's ``.py`` beside it either way. ``authproxy --version``, the "listening on" line
and ``/status.json`` say which it is. ``AUTHPROXY_PURE_PYTHON=1`` at run time makes
authproxy import the ``.py`` sources even where the extension modules are there: the
same program interpreted, for a pure-Python test run beside a compiled one, or to
rule the compiled code in or out when something goes wrong.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

# Kept in step with setup.py's HOT (tests/test_compiled.py checks).
COMPILED = (
    "authproxy.http1.h1request",
    "authproxy.http1.h1response",
    "authproxy.pipeline",
    "authproxy.targets",
    "authproxy.upstream.pool",
    "authproxy.upstream.upstreams",
    "authproxy.server.connection",
    "authproxy.server.reading",
    "authproxy.net.egress",
    "authproxy.http1.h1message",
    "authproxy.upstream.h1client",
    "authproxy.upstream.h1parse",
    "authproxy.upstream.h1send",
    "authproxy.secrecy.scrub",
    "authproxy.upstream.scrubbed",
    "authproxy.transport.stream",
    "authproxy.ops.metrics",
    "authproxy.messages",
    "authproxy.tokens.manager",
)

PURE_ENV = "AUTHPROXY_PURE_PYTHON"


def _is_extension(origin: str | None) -> bool:
    return origin is not None and origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def compiled_modules() -> list[str]:
    """The modules of ``COMPILED`` that this process runs (or would import) as extension modules."""
    found = []
    for name in COMPILED:
        spec = importlib.util.find_spec(name)
        if spec is not None and _is_extension(spec.origin):
            found.append(name)
    return found


def describe() -> str:
    """One phrase for humans: "compiled" (all of them), "pure Python", or "partly compiled (n of m)"."""
    n = len(compiled_modules())  # a partly compiled build is a broken one: the build compiles all or none
    if n == len(COMPILED):
        return "compiled"
    return "pure Python" if n == 0 else f"partly compiled ({n} of {len(COMPILED)})"


def fully_compiled() -> bool:
    """Does every module of ``COMPILED`` run compiled? (``/status.json``'s ``compiled``)."""
    return len(compiled_modules()) == len(COMPILED)


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds ``COMPILED`` modules as their ``.py`` sources even where an extension module sits beside them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not _is_extension(spec.origin):
            return spec
        assert spec.origin is not None
        source = os.path.join(os.path.dirname(spec.origin), fullname.rpartition(".")[2] + ".py")
        return importlib.util.spec_from_file_location(fullname, source) if os.path.exists(source) else spec


def prefer_sources() -> None:
    """Import the ``.py`` sources of ``COMPILED`` from now on (once; before any of them is imported)."""
    if not any(isinstance(f, _SourcesFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourcesFirst())
