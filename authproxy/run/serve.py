"""What ``authproxy run`` does once its arguments are checked: serve, reload, drain.

The same for a single process and for each worker of ``run --workers``; a
worker only leaves "listening on" and the admin listener to its supervisor
and reports to it (``worker.WorkerLink``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from typing import TYPE_CHECKING

from authproxy.compiled import describe
from authproxy.config import Config
from authproxy.disk.ca import CAError
from authproxy.errors import ProxyError
from authproxy.net.egress import ADMIN_ENV, PSEUDONYM_ENV
from authproxy.net.hosts import format_authority, parse_port
from authproxy.ops.audit import AuditLog
from authproxy.run.reload import Reloader
from authproxy.run.worker import WorkerLink
from authproxy.runtime import Runtime
from authproxy.server.listener import ProxyServer

if TYPE_CHECKING:
    # Only its type: the module itself is imported when an admin listener is configured (see serve).
    from authproxy.admin.web import AdminServer

log = logging.getLogger("authproxy")


async def serve(cfg: Config, host: str, port: int, link: WorkerLink | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then drain; the exit code. ``link``: this process is
    a worker of ``run --workers``, and its supervisor says "listening" and runs the
    admin listener."""
    # A worker's Via pseudonym and admin address are its supervisor's (supervisor.py passes them);
    # taken out of the environment, so that nothing this process starts inherits them.
    pseudonym = os.environ.pop(PSEUDONYM_ENV, None) if link is not None else None
    fleet_admin = os.environ.pop(ADMIN_ENV, None) if link is not None else None
    rt = Runtime(cfg, worker=link is not None, pseudonym=pseudonym)
    audit = None
    if cfg.audit is not None:
        a = cfg.audit
        audit = AuditLog(a.path, a.max_bytes, a.keep, link.index if link is not None else None).start()
    try:
        rt.enable_interception()
    except CAError:
        await rt.close()
        raise  # the command says it as the usage error it is
    try:
        await rt.share_placeholders()  # generated ones from the shared token store, before any request
    except (ProxyError, ValueError) as exc:
        log.error("the generated placeholders cannot be had from the token store: %s", exc)
        await rt.close()
        if audit is not None:
            audit.close()
        return 1
    if link is None and cfg.admin is not None:
        # The admin listener is aiohttp.web, which a proxy without one never loads; imported
        # before we listen, so that no client's first request waits on the import.
        from authproxy.admin.web import start_admin
    server = ProxyServer(rt)
    # Handlers first: a SIGTERM that arrives as soon as we say "listening" must drain, not kill.
    reloader = Reloader(rt, cfg.file)
    stop = _on_signals(reloader)
    watcher = asyncio.create_task(reloader.watch())
    try:
        bound = await server.start(host, port)
        # Every address the port is bound to (a name may stand for several): the loop check's to know.
        await rt.egress.listening_on(host, bound[1])
        if fleet_admin:
            admin_host, _, admin_port = fleet_admin.rpartition(" ")
            await rt.egress.listening_on(admin_host, parse_port(admin_port), proxy=False)
    except OSError:
        await rt.close()
        raise
    admin = None
    if link is None:
        where, n = f"{bound[0]}:{bound[1]}", len(cfg.routes)
        log.info("listening on %s with %d routes from %s (%s)", where, n, cfg.file, describe())
        if cfg.admin is not None:
            admin = await start_admin(rt, *cfg.admin)
            await rt.egress.listening_on(admin.host, admin.port, proxy=False)
            log.info("admin listener on %s", format_authority(cfg.admin[0], admin.port))
    rt.ready = True
    if link is not None:
        await link.started(rt, stop)
    await stop.wait()
    rt.ready = False
    watcher.cancel()
    await _drain(rt, server, admin, link)
    if audit is not None:
        audit.close()
    return 0


def _on_signals(reloader: Reloader) -> asyncio.Event:
    """SIGTERM and SIGINT set the returned event (drain, then stop); SIGHUP reloads."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    pending: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        t = asyncio.create_task(reloader.reload("SIGHUP"))
        pending.add(t)
        t.add_done_callback(pending.discard)

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    return stop


async def _drain(rt: Runtime, server: ProxyServer, admin: AdminServer | None, link: WorkerLink | None) -> None:
    """Let the open requests finish for up to ``timeouts.drain``, then close every listener and the runtime."""
    grace = rt.snapshot.config.timeouts.drain
    if link is not None:
        link.draining(grace)
    log.info("draining (up to %g s)", grace)
    await server.drain(grace)
    if admin is not None:
        await admin.close()
    if link is not None:
        await link.close()
    await rt.close()
    log.info("stopped")
