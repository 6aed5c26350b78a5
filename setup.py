"""The build: the hot modules compiled with mypyc where it can, pure Python where it cannot.

Everything else (metadata, packages, dependencies) is in pyproject.toml; this file adds
only the extension modules. ``HOT`` names the modules worth compiling: those that cut
the instructions per proxied request (``bench/ir.py``, numbers in bench/README.md).
Each stays beside its ``.py`` source, so a build that compiles nothing is the same
program, only slower. That happens, with one line saying why and never a failed install,
when:

- ``AUTHPROXY_PURE_PYTHON=1`` is in the environment (then the wheel is pure, ``py3-none-any``);
- mypyc cannot be imported, or it rejects the sources;
- there is no working C compiler, or compiling or linking fails.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Kept in step with authproxy/compiled.py's COMPILED (tests/test_compiled.py checks).
HOT = [
    "authproxy/http1/h1request.py",
    "authproxy/http1/h1response.py",
    "authproxy/pipeline.py",
    "authproxy/targets.py",
    "authproxy/upstream/pool.py",
    "authproxy/upstream/upstreams.py",
    "authproxy/server/connection.py",
    "authproxy/server/reading.py",
    "authproxy/net/egress.py",
    "authproxy/http1/h1message.py",
    "authproxy/upstream/h1client.py",
    "authproxy/upstream/h1parse.py",
    "authproxy/upstream/h1send.py",
    "authproxy/secrecy/scrub.py",
    "authproxy/upstream/scrubbed.py",
    "authproxy/transport/stream.py",
    "authproxy/ops/metrics.py",
    "authproxy/messages.py",
    "authproxy/tokens/manager.py",
]


def _say(why: str) -> None:
    print(f"authproxy: installing pure Python ({why}); the compiled hot path is only faster", file=sys.stderr)


def _compiled() -> list[Any]:
    """mypyc's extension modules for ``HOT``, or none (with the reason said) when it cannot."""
    if os.environ.get("AUTHPROXY_PURE_PYTHON") == "1":
        _say("AUTHPROXY_PURE_PYTHON=1")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as e:
        _say(f"mypyc is not importable: {e}")
        return []
    try:
        # Not pyproject's strict [tool.mypy]: pip's isolated build has mypy but none of our dependencies,
        # whose types are Any there, which strict mode rejects. CI type-checks strictly; this only compiles.
        flags = ["--config-file=", "--ignore-missing-imports"]
        return list(mypycify([*flags, *HOT], opt_level="3", group_name="authproxy"))
    except BaseException as e:  # mypyc exits (SystemExit) on a type error; any failure means pure Python
        _say(f"mypyc failed: {type(e).__name__}: {e}")
        return []


class BuildHot(build_ext):
    """``build_ext`` that falls back to pure Python when the C compiler or linker fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # CompileError, LinkError, a missing compiler: all mean the same here
            self._discard()
            detail = str(e).splitlines()[0] if str(e) else ""
            _say(f"the C build failed: {type(e).__name__}: {detail[:160]}{'...' if len(detail) > 160 else ''}")

    def _discard(self) -> None:
        """Remove what did build, so no half of the compiled set is left to import."""
        for ext in self.extensions:
            built = os.path.join(self.build_lib, self.get_ext_filename(ext.name))
            for path in {self.get_ext_fullpath(ext.name), built}:
                if os.path.exists(path):
                    os.remove(path)
        self.extensions = []
        self.distribution.ext_modules = []

    def get_outputs(self) -> list[str]:
        return [p for p in super().get_outputs() if os.path.exists(p)]


def _wants_extensions() -> bool:
    """Only the commands that build run mypyc: metadata queries (egg_info, dist_info, sdist) need none."""
    building = {"build", "build_ext", "bdist_wheel", "install", "editable_wheel", "develop", "bdist_egg"}
    return any(arg in building for arg in sys.argv[1:])


setup(
    ext_modules=_compiled() if _wants_extensions() else [],
    cmdclass={"build_ext": BuildHot},
)
