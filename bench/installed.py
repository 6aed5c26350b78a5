"""authproxy as a user gets it: this checkout installed by the README's first command into a venv.

    python3 bench/installed.py            # make (or find) the venv; print its `authproxy` command

`python3 -m pip install .` into a fresh venv (made with --python), from a copy of the
checkout's files (tracked and untracked, not ignored: what `pip install .` would see,
without leaving build/ and *.egg-info behind in the checkout). The venv is kept under
BENCH_VENVS (default /tmp), named by the checkout's commit, plus a digest of its
uncommitted changes when it has any, so a second run of the same code reuses it and any
change makes a new one. The bench's `authproxy-installed` target runs its `authproxy run`
with the defaults: no --workers, no --loop, no --log-level, no PYTHONPATH.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from constants import PROJECT, VENVS

_DONE = ".authproxy-bench-complete"


def _git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(PROJECT), *args], capture_output=True, check=True, timeout=60).stdout


def _files() -> list[str]:
    return [f for f in _git("ls-files", "-z", "-co", "--exclude-standard").decode().split("\0") if f]


def checkout_key() -> str:
    """The commit (12 hex), and `-` a digest of the uncommitted changes when there are any."""
    commit = _git("rev-parse", "HEAD").decode().strip()[:12]
    dirty = _git("status", "--porcelain", "-z")
    if not dirty:
        return commit
    h = hashlib.sha256(_git("diff", "HEAD", "--binary"))
    for f in _git("ls-files", "-z", "-o", "--exclude-standard").decode().split("\0"):
        if f and (PROJECT / f).is_file():
            h.update(f.encode() + b"\0" + (PROJECT / f).read_bytes())
    return f"{commit}-{h.hexdigest()[:8]}"


def installed_authproxy(python: str = sys.executable) -> Path:
    """The venv's `authproxy` command, the venv made first when this checkout has none yet."""
    venv = VENVS / f"authproxy-bench-installed-{checkout_key()}"
    exe = venv / "bin" / "authproxy"
    if (venv / _DONE).is_file() and exe.is_file():
        return exe
    shutil.rmtree(venv, ignore_errors=True)
    print(f"[installing this checkout into {venv}: python3 -m pip install .]", flush=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    with tempfile.TemporaryDirectory(prefix="authproxy-bench-src-") as src:
        for f in _files():
            if (PROJECT / f).is_file():
                (Path(src) / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(PROJECT / f, Path(src) / f)
        subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "."], cwd=src, check=True, timeout=1800)
    (venv / _DONE).write_text(checkout_key() + "\n")
    return exe


if __name__ == "__main__":
    print(installed_authproxy())
