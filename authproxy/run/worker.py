"""One worker of ``run --workers N``: its listener, and its link to the supervisor.

A worker is ``authproxy run`` started again by the supervisor with hidden
flags. It binds the proxy port itself with ``SO_REUSEPORT``, so the kernel
spreads new connections over the workers, and talks to the supervisor over
one inherited socket (the link), in JSON lines:

- worker → supervisor: ``{"event": "ready"}`` once it accepts connections,
  ``{"event": "draining", "grace": S}`` when a SIGTERM starts its drain, and
  ``{"id": N, "status": {...}}`` answering ``{"id": N, "ask": "status"}``;
- end of file: the supervisor is gone (even killed with SIGKILL), so the
  worker drains and exits rather than run on unsupervised.

Everything else (reload on SIGHUP, drain on SIGTERM, the route table) works as
in a single process; the supervisor forwards those signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, TypeVar

from authproxy.admin.statusview import runtime_view
from authproxy.config import Config
from authproxy.runtime import Runtime

log = logging.getLogger("authproxy.worker")

_PUBLISH_EVERY = 2.0  # seconds between copies of computed metrics to the multiprocess files
# Read once at start, like a reload treats them: a worker started again after the
# file changed keeps its siblings' CA and token store until the whole proxy restarts.
_PINNED = ("state_dir", "ca_cert", "ca_key", "extra_ca_file")


def pin(cfg: Config) -> str:
    """The restart-only paths the supervisor started with, for ``--worker-pin``."""
    return json.dumps({k: None if getattr(cfg, k) is None else str(getattr(cfg, k)) for k in _PINNED})


def pinned(cfg: Config, text: str | None) -> Config:
    """``cfg`` with the supervisor's restart-only paths; a difference is logged, as a reload would."""
    if not text:
        return cfg
    raw = json.loads(text)

    def path(key: str) -> Path | None:
        return None if raw.get(key) is None else Path(raw[key])

    kept = dataclasses.replace(
        cfg,
        state_dir=path("state_dir") or cfg.state_dir,
        ca_cert=path("ca_cert"),
        ca_key=path("ca_key"),
        extra_ca_file=path("extra_ca_file"),
    )
    for key in _PINNED:
        if getattr(cfg, key) != getattr(kept, key):
            log.warning("`%s` changed in %s; it takes effect when the whole proxy restarts", key, cfg.file)
    return kept


_Loop = TypeVar("_Loop", bound=asyncio.AbstractEventLoop)


def reuse_port_loop(base: type[_Loop]) -> type[_Loop]:
    """``base`` whose servers bind with ``SO_REUSEPORT``.

    ``ProxyServer.start`` takes a host and port and has no ``reuse_port``; every
    asyncio server is made by ``loop.create_server``, so the worker's loop sets
    it there and server/connection.py stays as it is. A worker makes no other server.
    """

    class ReusePortLoop(base):  # type: ignore[valid-type,misc]
        async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.AbstractServer:
            kwargs["reuse_port"] = True
            return await super().create_server(*args, **kwargs)  # type: ignore[no-any-return]

    return ReusePortLoop


class WorkerLink:
    """The worker's end of the link to its supervisor."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self._fd = fd
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def started(self, rt: Runtime, stop: asyncio.Event) -> None:
        """Listening: tell the supervisor, answer it from now on, and stop when it goes away."""
        sock = socket.socket(fileno=self._fd)
        reader, self._writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        self._send({"event": "ready"})
        self._tasks = [
            asyncio.create_task(self._serve(reader, rt, stop)),
            asyncio.create_task(self._publish(rt)),
        ]

    def draining(self, grace: float) -> None:
        self._send({"event": "draining", "grace": grace})

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(json.dumps(message).encode() + b"\n")

    async def _serve(self, reader: asyncio.StreamReader, rt: Runtime, stop: asyncio.Event) -> None:
        try:
            while line := await reader.readline():
                try:
                    ask = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ask, dict) and ask.get("ask") == "status":
                    await rt.store.probe()  # the token store's health as of now
                    self._send({"id": ask.get("id"), "status": worker_status(rt)})
        except OSError:
            pass
        if not stop.is_set():
            log.warning("the supervisor is gone; stopping")
            stop.set()

    async def _publish(self, rt: Runtime) -> None:
        while True:
            rt.metrics.publish()
            await asyncio.sleep(_PUBLISH_EVERY)


def worker_status(rt: Runtime) -> dict[str, Any]:
    """What the supervisor's status page needs from this worker: its routes' token states and its reloads."""
    routes, reloads = runtime_view(rt)
    return {
        "pid": os.getpid(),
        "ready": rt.ready,
        "routes": routes,
        "reloads": reloads,
        "token_store": rt.store.health(),
    }
