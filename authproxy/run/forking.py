"""Workers of ``run --workers N`` forked from the supervisor, so that they share its pages.

A worker started as a new interpreter (``python -m authproxy run``) imports the
data plane and builds its tables itself: a whole process, ~35 MB of RSS, each.
Forked from the supervisor, which has imported the same modules already, a
worker shares those pages with it and its siblings copy-on-write, and owns only
what it changes (bench/README.md, "Workers: memory per process").

When it is safe, and only then: ``fork`` copies the calling thread alone, with
every lock as it was; a lock another thread held at that instant stays locked
in the child for ever, and an event loop's selector, self-pipe and signal
wake-up fd would be shared with the parent. So the supervisor forks every
worker of its first start *before* its event loop starts and while it has one
thread (``prefork``; checked, and skipped otherwise). A worker started again
after it died is forked from nothing: it starts as a new interpreter, as
before, because by then the loop runs.

``gc.freeze()`` before the fork moves every object the supervisor holds out of
the collector's reach: a collection in a worker would otherwise write to the
header of each of them and so copy every page they sit on.

A forked worker waits for one line on its link before it serves: the
environment it runs with (``worker_env``), which holds the admin listener's
address, known only once the supervisor's loop bound it.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from authproxy.compat import prometheus_values_from_env

log = logging.getLogger("authproxy.supervisor")

# What a worker imports to serve the shipped routes.yaml, imported in the supervisor before it
# forks so that the workers share it. The supervisor has most of it already (cli/runcmd.py
# imports run/serve.py); the event loop is the one part it would not load for itself.
_DATA_PLANE = ("authproxy.run.serve", "authproxy.run.worker", "authproxy.admin.statusview")

# The worker's body: runs ``authproxy run`` as worker ``index`` with its link on ``fd``; its exit code.
WorkerMain = Callable[[int, int], int]


class WorkerProcess(Protocol):
    """What the supervisor does with a worker's process: asyncio's ``Process``, or a ``Forked``."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int: ...


def can_fork() -> bool:
    """Linux with pidfds (5.3 and later: a pidfd watches each child), and one thread."""
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open") or threading.active_count() != 1:
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # an older kernel, or a seccomp profile that refuses it
        return False
    return True


def preload(loop: str) -> None:
    """Import what a worker needs to serve, so that the forked workers share it."""
    for name in _DATA_PLANE:
        importlib.import_module(name)
    if loop in ("auto", "uvloop") and importlib.util.find_spec("uvloop") is not None:
        importlib.import_module("uvloop")


@dataclass
class Prefork:
    """A worker forked before the loop started: its process, and the supervisor's end of its link."""

    proc: Forked
    link: socket.socket


def prefork(indexes: Sequence[int], main: WorkerMain, close: Sequence[socket.socket]) -> dict[int, Prefork]:
    """Fork a worker for each index, each waiting on its link for its environment.

    Call with one thread and no event loop (``can_fork``). ``close``: the
    supervisor's sockets a worker must not hold (the port it reserves).
    """
    for h in logging.getLogger().handlers:
        h.flush()  # what is buffered would otherwise be written again by every child
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    forked: dict[int, Prefork] = {}
    for index in indexes:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            mine.close()
            for s in (*close, *(p.link for p in forked.values())):
                s.close()
            _child(index, theirs.detach(), main)
        theirs.close()
        forked[index] = Prefork(Forked(pid), mine)
    return forked


def worker_env(link: socket.socket, env: dict[str, str]) -> None:
    """Give a forked worker its environment: it starts serving once it has it."""
    link.sendall(json.dumps({"env": env}).encode() + b"\n")


def _child(index: int, fd: int, main: WorkerMain) -> None:
    code = 1
    try:
        line = _read_line(fd)
        if line:  # nothing: the supervisor stopped before this worker was needed
            os.environ.clear()
            os.environ.update(json.loads(line)["env"])
            prometheus_values_from_env()
            code = main(index, fd)
    except KeyboardInterrupt:
        pass  # Ctrl-C in the terminal reaches every process; the supervisor reports the stop
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # as main() says it: one line, no traceback (it could hold request data)
        print(f"error: authproxy failed unexpectedly ({type(exc).__name__}).", file=sys.stderr)
    finally:
        # os._exit: the frames below are the supervisor's (its cleanup is its own), and
        # nothing the supervisor registered at exit is this process's to run.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _read_line(fd: int) -> bytes:
    """One line from the link, read a byte at a time so that nothing after it is taken."""
    out = bytearray()
    while not out.endswith(b"\n"):
        b = os.read(fd, 1)
        if not b:
            return b""
        out += b
    return bytes(out)


class Forked:
    """A worker forked by this process, waited for through a pidfd on the loop."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._code: int | None = None
        self._done: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._code

    def send_signal(self, sig: int) -> None:
        if self._code is None:
            os.kill(self._pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        if self._done is None:
            self._done = self._watch()
        await asyncio.shield(self._done)
        assert self._code is not None
        return self._code

    def _watch(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        fd = os.pidfd_open(self._pid)  # our child, not yet reaped: its pid cannot have been reused

        def reap() -> None:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
            if pid == 0:
                return
            loop.remove_reader(fd)
            os.close(fd)
            self._code = os.waitstatus_to_exitcode(status)
            done.set_result(None)

        loop.add_reader(fd, reap)
        return done
