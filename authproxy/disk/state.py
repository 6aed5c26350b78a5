"""Files in the state directory: created private, written atomically, locked across processes.

A crash mid-write must never leave a half-written key or token: write a temp
file in the same directory, fsync it, ``os.replace`` it over the old one, and
fsync the directory so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

FileSignature = tuple[int, int, int, int]


def file_signature(path: Path) -> FileSignature | None:
    """Identity, size and times: changes when a file is rewritten or replaced (editors rename)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if needed; tighten it if it is wider."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextlib.contextmanager
def locked(state_dir: Path, name: str = "lock") -> Iterator[None]:
    """An exclusive advisory lock shared by every authproxy process on this state dir."""
    ensure_dir(state_dir)
    fd = os.open(state_dir / f".{name}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
