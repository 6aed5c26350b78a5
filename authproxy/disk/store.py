"""The durable token store: one small JSON file per route in ``STATE_DIR/tokens``.

Refresh tokens, and access tokens worth keeping across a restart, live here.
Writes are atomic (temp file, fsync, rename, 0600), so a crash mid-write keeps
the last good file. A route's refresh is done under that route's lock file,
held across the network call: two proxies (or ``authproxy token`` beside a
running proxy) on one state dir never spend the same refresh token twice.
A corrupt file is reported and treated as empty, never a crash.

It implements ``disk/tokenstore.py``'s ``TokenStore``; records made by
``ensure`` live beside the routes' as ``_NAME.json`` (no route name starts
with ``_``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from authproxy.disk.state import atomic_write, ensure_dir

log = logging.getLogger("authproxy.store")

_VERSION = 1
_SHARED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

T = TypeVar("T")


def shared_name(name: str) -> str:
    """An ``ensure`` record's name, checked: it becomes part of a file name."""
    if not _SHARED_NAME.fullmatch(name):
        raise ValueError(f"a shared record's name is letters, digits and `-_.:`, not {name[:40]!r}")
    return name


class StateStore:
    kind = "file"

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "tokens"

    def _path(self, name: str) -> Path:
        # Route names are limited to letters, digits, `-`, `_` and `.` at load time.
        return self.dir / f"{name}.json"

    def read(self, name: str) -> dict[str, Any] | None:
        path = self._path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning(
                "route %s: the token store %s cannot be read (%s); treating it as empty", name, path, exc.strerror
            )
            return None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("data"), dict):
                raise ValueError("unexpected shape")
        except ValueError:
            # Keep the bad file for a person to look at; never print its content.
            bad = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(path, bad)
            log.warning(
                "route %s: the token store %s is corrupt; moved to %s and treated as empty", name, path, bad.name
            )
            return None
        out: dict[str, Any] = data["data"]
        return out

    def write(self, name: str, data: dict[str, Any]) -> None:
        ensure_dir(self.dir.parent)
        ensure_dir(self.dir)
        body = json.dumps({"version": _VERSION, "written": time.time(), "data": data}, indent=1)
        atomic_write(self._path(name), body.encode(), 0o600)

    @contextlib.asynccontextmanager
    async def locked(self, name: str) -> AsyncIterator[None]:
        """Exclusive across processes for this route; acquired off the event loop."""
        ensure_dir(self.dir.parent)
        ensure_dir(self.dir)
        fd = os.open(self.dir / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        waiting = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
        try:
            await asyncio.shield(waiting)
        except BaseException:
            # Cancelled while the thread still waits for the lock: the fd must
            # outlive that wait, so close it only once the thread is done.
            waiting.add_done_callback(lambda _: os.close(fd))
            raise
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    async def adopt_or_fetch(
        self,
        name: str,
        adopt: Callable[[dict[str, Any]], T | None],
        fetch: Callable[[dict[str, Any]], Awaitable[T]],
        *,
        unlocked_ok: bool = False,  # a local file is always there: the lock is always taken
    ) -> T:
        """The route's record, read under its lock: what ``adopt`` finds in it, else what ``fetch`` gets.

        ``fetch`` updates the record in place; the record is written before
        the lock is released, so the next process in line finds the result
        instead of fetching again (and a refresh token the server rotated is
        on disk before its access token is used). It is written whenever it
        changed, also when ``fetch`` raises: a refused refresh token is
        remembered as refused.
        """
        async with self.locked(name):
            rec = await asyncio.to_thread(self.read, name) or {}
            found = adopt(rec)
            if found is not None:
                return found
            read = copy.deepcopy(rec)
            try:
                return await fetch(rec)
            finally:
                if rec != read:
                    await asyncio.to_thread(self.write, name, rec)

    async def replace(self, name: str, record: dict[str, Any]) -> str:
        async with self.locked(name):
            await asyncio.to_thread(self.write, name, record)
        return str(self._path(name))

    async def ensure(self, name: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Create-if-absent under the record's own lock (``disk/tokenstore.py``)."""
        file = f"_{shared_name(name)}"
        async with self.locked(file):
            found = await asyncio.to_thread(self.read, file)
            if found is not None:
                return found
            made = make()
            await asyncio.to_thread(self.write, file, made)
            return made

    def health(self) -> dict[str, object]:
        return {"kind": self.kind, "where": str(self.dir), "state": "ok"}

    async def probe(self) -> None:
        return None

    async def close(self) -> None:
        return None
