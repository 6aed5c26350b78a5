"""What the supervisor of ``run --workers`` holds: the port, the metrics directory, a link per worker.

**The port.** Workers bind the proxy port themselves with ``SO_REUSEPORT``. The
supervisor first binds it *without* that option, which fails as a single
process would if anything already holds the port (another authproxy with
``--workers`` included), and learns the port when 0 was asked for; then it
keeps a bound, never-listening ``SO_REUSEPORT`` socket on it for its whole
life, so the port stays ours while a worker is started again. The kernel
hands connections to listening sockets only, so this one gets none.

**The metrics directory.** prometheus_client's multiprocess mode keeps each
worker's values in files under ``PROMETHEUS_MULTIPROC_DIR``: here a private
directory ``STATE_DIR/metrics-XXXXXXXX`` (0700), locked by its supervisor,
removed at exit; one left by a supervisor that was killed is removed at the
next start (nobody holds its lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authproxy.disk.state import ensure_dir

log = logging.getLogger("authproxy.supervisor")

_LOCK = ".supervisor.lock"
_PREFIX = "metrics-"
_ORPHAN_AGE = 60.0  # a directory without its lock file is being created, or was left long ago
_LINE_LIMIT = 16 * 1024 * 1024  # one worker's status (a line) with many routes


def reserve(host: str, port: int) -> list[socket.socket]:
    """Bound (not listening) ``SO_REUSEPORT`` sockets on every address of ``host``: the port, kept for the workers."""
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    held: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            if held:  # one port for every address, as asyncio's create_server needs
                addr = (addr[0], held[0].getsockname()[1], *addr[2:])
            probe = _socket(family, kind, proto, reuse_port=False)
            with probe:
                probe.bind(addr)  # EADDRINUSE here, as without --workers
                addr = (addr[0], probe.getsockname()[1], *addr[2:])
            sock = _socket(family, kind, proto, reuse_port=True)
            held.append(sock)
            sock.bind(addr)
    except BaseException:
        for s in held:
            s.close()
        raise
    return held


def _socket(family: int, kind: int, proto: int, reuse_port: bool) -> socket.socket:
    # The options asyncio's create_server sets, so that the workers' binds agree with ours.
    s = socket.socket(family, kind, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return s


class MetricsDir:
    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def create(cls, state_dir: Path) -> MetricsDir:
        ensure_dir(state_dir)
        _remove_orphans(state_dir)
        path = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=state_dir))  # 0700
        fd = os.open(path / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return cls(path, fd)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock_fd)


def _remove_orphans(state_dir: Path) -> None:
    for path in state_dir.glob(_PREFIX + "*"):
        if not path.is_dir() or path.is_symlink():
            continue
        try:
            fd = os.open(path / _LOCK, os.O_RDWR)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > _ORPHAN_AGE:
                    shutil.rmtree(path, ignore_errors=True)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a running supervisor's
        else:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by a supervisor that did not exit cleanly", path.name)
        finally:
            os.close(fd)


class Channel:
    """The supervisor's end of a worker's link (JSON lines; see ``worker.py``)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_event: Callable[[dict[str, Any]], None]
    ) -> None:
        self._reader, self._writer = reader, writer
        self._on_event = on_event
        self._asked: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._task = asyncio.create_task(self._read())

    @staticmethod
    def pair() -> tuple[socket.socket, socket.socket]:
        """Ours, and the worker's (inherited by it, closed here once it started)."""
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    @classmethod
    async def open(cls, sock: socket.socket, on_event: Callable[[dict[str, Any]], None]) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock, limit=_LINE_LIMIT)
        return cls(reader, writer, on_event)

    async def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while line := await self._reader.readline():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                fut = self._asked.pop(msg["id"], None) if isinstance(msg.get("id"), int) else None
                if fut is not None:
                    if not fut.done():
                        fut.set_result(msg)
                elif "event" in msg:
                    self._on_event(msg)
        for fut in self._asked.values():  # the worker is gone: nobody will answer
            if not fut.done():
                fut.set_result({})

    async def ask(self, what: str, patience: float) -> dict[str, Any] | None:
        """The worker's answer to ``what``, or None when it does not answer in time."""
        if self._writer.is_closing() or self._task.done():
            return None
        self._next += 1
        ident = self._next
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asked[ident] = fut
        try:
            self._writer.write(json.dumps({"id": ident, "ask": what}).encode() + b"\n")
            async with asyncio.timeout(patience):
                answer = await fut
        except (OSError, TimeoutError):
            return None
        finally:
            self._asked.pop(ident, None)
        value = answer.get(what)
        return value if isinstance(value, dict) else None

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
