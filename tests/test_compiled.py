"""The hot modules compiled (mypyc, setup.py) or not: the process says which, and a build
that cannot compile installs pure Python by itself.

CI runs the suite twice (.ci/run): once with the extension modules built in place and
``AUTHPROXY_EXPECT_COMPILED=1``, where these tests insist every hot module is compiled
(so a build that fell back silently fails CI), and once with ``AUTHPROXY_PURE_PYTHON=1``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.machinery
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from authproxy.compiled import COMPILED, PURE_ENV
from tests.support.proc import start_proxy

ROOT = Path(__file__).resolve().parent.parent


def _built_in_place() -> bool:
    """Has every hot module an extension module beside its source in this checkout?"""
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return all(
        any((ROOT / name.replace(".", "/")).with_suffix(s).exists() for s in suffixes) for name in COMPILED
    )


def _expected() -> str:
    """What the process should say it runs, from the files and the environment alone."""
    if os.environ.get(PURE_ENV) == "1" or not _built_in_place():
        return "pure Python"
    return "compiled"


def _env(pure: bool | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if pure is not None:
        env.pop(PURE_ENV, None)
        if pure:
            env[PURE_ENV] = "1"
    return env


def _py(code: str, pure: bool | None = None, cwd: Path = ROOT) -> str:
    r = subprocess.run([sys.executable, "-c", code], env=_env(pure), cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_setup_compiles_exactly_the_listed_modules() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    hot = next(
        n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "HOT"
    )
    paths = ast.literal_eval(hot)
    assert [p.removesuffix(".py").replace("/", ".") for p in paths] == list(COMPILED)
    assert all((ROOT / p).is_file() for p in paths)


def test_ci_compiled_run_is_compiled() -> None:
    """Under ``AUTHPROXY_EXPECT_COMPILED=1`` (CI's compiled run) a pure fallback is a failure, not a pass."""
    if os.environ.get("AUTHPROXY_EXPECT_COMPILED") != "1":
        pytest.skip("only CI's compiled run sets AUTHPROXY_EXPECT_COMPILED=1")
    assert _built_in_place(), "setup.py build_ext --inplace compiled nothing: see its 'installing pure Python' line"
    assert _expected() == "compiled"


def test_compiled_modules_are_not_older_than_their_sources() -> None:
    """An in-place build shadows the sources: one older than its .py would test stale code."""
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    stale = []
    for name in COMPILED:
        source = (ROOT / name.replace(".", "/")).with_suffix(".py")
        for built in (source.with_suffix(s) for s in suffixes):
            if built.exists() and built.stat().st_mtime < source.stat().st_mtime:
                stale.append(str(built.relative_to(ROOT)))
    assert not stale, f"rebuild with `python3 setup.py build_ext --inplace` (or delete them): {stale}"


@pytest.mark.parametrize("pure", [None, True])
def test_version_and_imports_say_how_it_runs(pure: bool | None) -> None:
    want = "pure Python" if pure else _expected()
    r = subprocess.run(
        [sys.executable, "-m", "authproxy", "--version"], env=_env(pure), cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.strip() == f"authproxy 0.1.0 ({want})", r.stdout + r.stderr
    files = _py(f"import importlib\nfor n in {COMPILED!r}: print(importlib.import_module(n).__file__)", pure)
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    kinds = {"compiled" if f.endswith(suffixes) else "pure Python" for f in files.split()}
    assert kinds == {want}, files


async def test_listening_line_and_status_say_how_it_runs(tmp_path: Path) -> None:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'st'}\nadmin: 127.0.0.1:0\nroutes: []\n")
    p = start_proxy(cfg)
    try:
        want = _expected()
        assert re.search(rf"listening on \S+ with 0 routes from \S+ \({want}\)", p.stderr_text()), p.stderr_text()
        for _ in range(400):
            found = re.search(r"admin listener on (\S+)", p.stderr_text())
            if found:
                break
            await asyncio.sleep(0.05)
        assert found, p.stderr_text()
        async with httpx.AsyncClient(trust_env=False) as c:
            status = (await c.get(f"http://{found.group(1)}/status.json")).json()
        assert status["compiled"] is (want == "compiled")
    finally:
        assert p.stop() == 0


def _copy_sources(dest: Path) -> Path:
    """What ``pip install`` builds from: the package sources and the build files, no extension modules."""
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "authproxy", dest / "authproxy", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__")
    )
    return dest


# mypyc type-checks and translates every hot module before the missing compiler stops it: minutes on a busy machine.
@pytest.mark.timeout(480)
@pytest.mark.parametrize("why", ["no C compiler", "AUTHPROXY_PURE_PYTHON=1"])
def test_a_build_that_cannot_compile_installs_pure_python(tmp_path: Path, why: str) -> None:
    src = _copy_sources(tmp_path)
    env = _env(pure=why != "no C compiler")
    if why == "no C compiler":
        env["CC"] = "/bin/false"  # what distutils runs to compile each module: it fails like a missing gcc
    env.pop("AUTHPROXY_EXPECT_COMPILED", None)
    r = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"], cwd=src, env=env, capture_output=True, text=True
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    said = [line for line in out.splitlines() if line.startswith("authproxy: installing pure Python")]
    assert len(said) == 1, out
    assert ("the C build failed" if why == "no C compiler" else "(AUTHPROXY_PURE_PYTHON=1)") in said[0]
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    assert not [p for p in src.rglob("*") if p.name.endswith(suffixes)]
    env.pop(PURE_ENV, None)
    env["PYTHONPATH"] = str(src)
    v = subprocess.run([sys.executable, "-m", "authproxy", "--version"], cwd=src, env=env, capture_output=True, text=True)
    assert v.stdout.strip() == "authproxy 0.1.0 (pure Python)", v.stdout + v.stderr
