"""Reloading the route table: on SIGHUP, and when the file changes (polled).

The new file is loaded off the event loop (``${bws:...}`` values make network
calls); if it fails to load, every problem is logged and the old table stays
in force. Requests in flight finish on the snapshot they started with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from authproxy.config import load
from authproxy.disk.state import file_signature
from authproxy.errors import ProxyError
from authproxy.runtime import ReloadEvent, Runtime
from authproxy.schema.problems import ConfigError

log = logging.getLogger("authproxy.reload")


class Reloader:
    def __init__(self, rt: Runtime, path: Path) -> None:
        self.rt = rt
        self.path = path
        self._lock = asyncio.Lock()
        self._seen = file_signature(path)

    async def reload(self, why: str) -> bool:
        async with self._lock:  # one reload at a time; a burst of SIGHUPs queues
            self._seen = file_signature(self.path)
            try:
                cfg = await asyncio.to_thread(load, self.path)
            except ConfigError as exc:
                errors = [p for p in exc.problems if p.severity == "error"]
                for p in errors:
                    log.error("reload (%s) failed: %s", why, p.located())
                first = errors[0].located() if errors else "the file could not be loaded"
                self.rt.reloads.append(ReloadEvent(time.time(), False, first))
                self.rt.metrics.reloads.labels("error").inc()
                log.error("reload (%s): the previous route table stays in force", why)
                return False
            try:
                shared = await self.rt.shared_placeholders(cfg)
            except (ProxyError, ValueError) as exc:
                # A generated placeholder the replicas would not share is worse than the old table.
                self.rt.reloads.append(ReloadEvent(time.time(), False, str(exc)))
                self.rt.metrics.reloads.labels("error").inc()
                log.error("reload (%s): %s; the previous route table stays in force", why, exc)
                return False
            restart = self.rt.apply(cfg, shared)
            for w in cfg.warnings:
                log.warning("%s", w.located())
            for key in restart:
                log.warning("reload (%s): `%s` changed; it takes effect on the next restart", why, key)
            detail = f"{len(cfg.routes)} routes from {self.path}"
            self.rt.reloads.append(ReloadEvent(time.time(), True, detail))
            self.rt.metrics.reloads.labels("ok").inc()
            log.info("reloaded (%s): %s", why, detail)
            return True

    async def watch(self, interval: float = 1.0) -> None:
        """Reload when the file's identity, size or times change (editors often replace the file)."""
        while True:
            await asyncio.sleep(interval)
            sig = file_signature(self.path)
            if sig is not None and sig != self._seen:
                # Let a writer finish: wait until the file holds still for one more beat.
                await asyncio.sleep(min(interval, 0.2))
                if file_signature(self.path) == sig:
                    await self.reload("file changed")
