"""Generated placeholders (``placeholder: generate``): made once per route, kept in the state directory.

Shape: ``authproxy-ph-<route>-<32 hex digits>`` (128 random bits), so a person
or a log reader can tell a placeholder from a key at a glance. Kept in
``STATE_DIR/placeholders/<route>`` (0600): the same across restarts and
across the processes of ``run --workers``, which may all start at once: the
first to link its file into place wins, the others read the winner's. With a
shared token store they live in the store instead (``placeholders/shared.py``),
so that every replica swaps the same one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from authproxy.disk.state import ensure_dir

PREFIX = "authproxy-ph-"


def new_value(route: str) -> str:
    """A fresh placeholder for ``route``, of the recognisable shape."""
    return f"{PREFIX}{route}-{secrets.token_hex(16)}"


def is_generated(value: object, route: str) -> bool:
    """Is ``value`` a placeholder this proxy made for ``route`` (a record read back from a store)?"""
    return isinstance(value, str) and value.startswith(f"{PREFIX}{route}-") and value.isascii()


def generated(state_dir: Path, route: str) -> str:
    """The route's generated placeholder: read, or made now if there is none yet."""
    folder = ensure_dir(state_dir / "placeholders")
    path = folder / route
    found = _read(path)
    if found is not None:
        return found
    value = new_value(route)
    tmp = folder / f".{route}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(value + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # never over another process's: link fails if the name exists
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    found = _read(path)
    if found is None:
        raise OSError(f"{path} could not be written")
    return found


def _read(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    return text or None
