"""``authproxy run --workers N``: a supervisor and N worker processes on one port.

The supervisor validates the config and the CA once (same errors and exit
codes as a single process), reserves the port (``fleet.reserve``), starts the
workers (``authproxy run`` again, with hidden flags; see ``worker.py``) and
prints "listening on" once every one of them accepts connections. Then it:

- passes SIGHUP on to every worker (each reloads the file itself);
- on SIGTERM/SIGINT, passes SIGTERM on, waits for each worker's drain (the
  grace the worker reports), exits 0 when all of them stopped cleanly, and
  kills one that overruns (exit 1);
- starts a worker again when one dies unexpectedly, after a backoff (0.5 s
  doubling to 30 s, reset once a worker has run a while), saying so in the log;
- serves the admin listener (``admin/fleet.py``) over every worker's metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from authproxy.compiled import describe
from authproxy.config import Config
from authproxy.disk.ca import LocalCA, ensure_ca
from authproxy.net.egress import ADMIN_ENV, PSEUDONYM_ENV, Via
from authproxy.net.hosts import format_authority, normalize_host
from authproxy.run.fleet import Channel, MetricsDir, reserve
from authproxy.run.forking import Prefork, WorkerProcess, can_fork, prefork, preload, worker_env
from authproxy.run.worker import pin

if TYPE_CHECKING:
    from authproxy.admin.fleet import FleetAdmin

log = logging.getLogger("authproxy.supervisor")

_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0
_STEADY = 30.0  # a worker that ran this long before dying starts again without waiting
_MARGIN = 10.0  # beyond a worker's drain grace, for closing down, before it is killed


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    """What each worker's command line repeats of the supervisor's."""

    config: str
    log_format: str
    log_level: str
    loop: str


class Worker:
    """One worker slot: the process in it now, and what the supervisor knows of it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: WorkerProcess | None = None
        self.forked: Prefork | None = None  # forked before the loop started, for its first start
        self.channel: Channel | None = None
        self.state = "starting"  # starting, ready, draining, gone
        self.ready = asyncio.Event()
        self.ready_at = 0.0
        self.grace: float | None = None  # as the worker said when it began to drain
        self.restarts = 0
        self.failures = 0  # deaths in a row, for the backoff
        self.missed_hup = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def name(self) -> str:
        return f"worker {self.index} (pid {self.pid})"

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "ready" and self.state == "starting":
            self.state, self.ready_at = "ready", time.monotonic()
            self.ready.set()
            log.info("%s ready", self.name())
            if self.missed_hup and self.proc is not None:
                # A SIGHUP came while it started: its default action would have killed it.
                self.missed_hup = False
                self.proc.send_signal(signal.SIGHUP)
        elif kind == "draining":
            self.state = "draining"
            grace = event.get("grace")
            self.grace = float(grace) if isinstance(grace, (int, float)) else None


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Supervisor:
    def __init__(self, cfg: Config, host: str, port: int, count: int, args: WorkerArgs, metrics: MetricsDir) -> None:
        self.cfg = cfg
        self.host, self.port = host, port
        self.args = args
        self.metrics_dir = metrics
        self.workers = [Worker(i + 1) for i in range(count)]
        self.started_at = time.time()
        self.accepting = False  # every worker started once and the proxy is not stopping
        self.stopping = False
        self._stop = asyncio.Event()
        self._failed: tuple[str | None, int] | None = None  # why the proxy could not start, and its exit code
        # One Via pseudonym for the whole proxy: a request that went through one worker and comes
        # back to another is the loop it is.
        via = Via()
        self._env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics.path), PSEUDONYM_ENV: via.pseudonym}
        self._env.pop(ADMIN_ENV, None)
        self.registry = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(self.registry, path=str(metrics.path))  # type: ignore[no-untyped-call]
        Gauge("authproxy_workers", "Worker processes accepting connections now.", registry=self.registry).set_function(
            lambda: sum(w.state == "ready" for w in self.workers)
        )
        self.restarts = Counter(
            "authproxy_worker_restarts", "Workers started again after an unexpected exit.", registry=self.registry
        )

    @property
    def listen(self) -> str:
        return format_authority(self.host, self.port)

    def is_ready(self) -> bool:
        return self.accepting and all(w.state == "ready" for w in self.workers)

    async def ask_all(self) -> list[tuple[Worker, dict[str, Any] | None]]:
        """Every worker's own status (token states, reloads); None for one that does not answer."""

        async def ask(w: Worker) -> dict[str, Any] | None:
            if w.channel is None or w.state not in ("ready", "draining"):
                return None
            return await w.channel.ask("status", patience=2.0)

        answers = await asyncio.gather(*(ask(w) for w in self.workers))
        return list(zip(self.workers, answers, strict=True))

    # -- starting and keeping workers ---------------------------------------

    def _argv(self, w: Worker, fd: int) -> list[str]:
        a = self.args
        return [
            sys.executable, "-m", "authproxy", "run", "-c", a.config, "--listen", self.listen,
            "--log-format", a.log_format, "--log-level", a.log_level, "--loop", a.loop,
            "--worker-index", str(w.index), "--worker-fd", str(fd), "--worker-pin", pin(self.cfg),
        ]  # fmt: skip

    async def _start(self, w: Worker) -> None:
        if w.forked is not None:  # the first start of a slot whose worker was forked (forking.py)
            forked, w.forked = w.forked, None
            w.proc, mine = forked.proc, forked.link
            worker_env(mine, self._env)
        else:
            mine, theirs = Channel.pair()
            try:
                w.proc = await asyncio.create_subprocess_exec(
                    *self._argv(w, theirs.fileno()),
                    stdin=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),),
                    env=self._env,
                )
            finally:
                theirs.close()
        w.state, w.grace = "starting", None
        w.ready.clear()
        w.channel = await Channel.open(mine, w.on_event)
        if self.stopping:  # the drain began while this one was being started
            w.proc.send_signal(signal.SIGTERM)

    async def _keep(self, w: Worker) -> None:
        """Run a worker in this slot until the proxy stops; start it again when it dies."""
        while True:
            code, why = await self._once(w)
            if self.stopping:
                return
            if not self.accepting:  # died while the proxy started: the config or the port is the problem
                self._failed = (f"{why} before it accepted connections.", 2 if code == 2 else 1)
                self._stop.set()
                return
            if w.ready.is_set() and time.monotonic() - w.ready_at >= _STEADY:
                w.failures = 0
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**w.failures)
            w.failures += 1
            w.restarts += 1
            self.restarts.inc()
            log.warning("%s; starting it again in %g s", why, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self.stopping or self._stop.is_set():
                return

    async def _once(self, w: Worker) -> tuple[int, str]:
        """One worker process in this slot, start to exit: its exit code, and what happened in words."""
        try:
            await self._start(w)
        except OSError as exc:  # cannot fork or exec: as good as a worker that died at once
            w.state = "gone"
            return 1, f"worker {w.index} could not be started ({exc.strerror or exc})"
        assert w.proc is not None
        code = await w.proc.wait()
        w.state = "gone"
        if w.channel is not None:
            await w.channel.close()
        # Its live gauges (open connections...) no longer count; its counters still do.
        mark_process_dead(w.proc.pid, str(self.metrics_dir.path))  # type: ignore[no-untyped-call]
        return code, f"{w.name()} exited unexpectedly ({_how(code)})"

    # -- signals -------------------------------------------------------------

    def _hup(self) -> None:
        sent = 0
        for w in self.workers:
            if w.proc is None or w.proc.returncode is not None:
                continue
            if w.state == "starting":
                w.missed_hup = True
            else:
                w.proc.send_signal(signal.SIGHUP)
                sent += 1
        log.info("reload (SIGHUP): passed on to %d workers", sent)

    async def _drain(self) -> bool:
        """SIGTERM to every worker; wait for each within its grace. True when all stopped cleanly."""
        self.stopping, self.accepting = True, False
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(signal.SIGTERM)
        default = self.cfg.timeouts.drain
        results = await asyncio.gather(*(self._await_stop(w, default) for w in self.workers))
        return all(results)

    async def _await_stop(self, w: Worker, default: float) -> bool:
        proc = w.proc
        if proc is None:
            return True
        was_ready = w.ready.is_set()
        start = time.monotonic()
        while proc.returncode is None:
            left = start + (w.grace if w.grace is not None else default) + _MARGIN - time.monotonic()
            if left <= 0:
                log.error("%s did not stop within its drain grace; killing it", w.name())
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), min(left, 1.0))
        code = proc.returncode
        # One still starting may be ended by the SIGTERM itself, before it could drain: nothing to drain.
        if code == 0 or (not was_ready and code == -signal.SIGTERM):
            return True
        log.error("%s stopped with %s", w.name(), _how(code))
        return False

    # -- the whole run --------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._hup)
        # The admin listener first: its address (a port 0 is known only once bound) goes to every
        # worker, which refuses it as a destination as it refuses the proxy port.
        admin = await self._start_admin()
        if self._failed is not None:
            return self._failed[1]
        if admin is not None:
            self._env[ADMIN_ENV] = f"{admin.host} {admin.port}"
        slots = [asyncio.create_task(self._keep(w)) for w in self.workers]
        for t in slots:
            t.add_done_callback(self._slot_ended)
        all_ready = asyncio.ensure_future(asyncio.gather(*(w.ready.wait() for w in self.workers)))
        stopped = asyncio.ensure_future(self._stop.wait())
        first: list[asyncio.Future[Any]] = [all_ready, stopped]
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        all_ready.cancel()
        if not self._stop.is_set():
            self.accepting = True
            routes, n = len(self.cfg.routes), len(self.workers)
            how = f"{n} workers, {describe()}"
            log.info("listening on %s with %d routes from %s (%s)", self.listen, routes, self.cfg.file, how)
        await stopped
        code = await self._finish(slots)
        if admin is not None:
            await admin.close()
        log.info("stopped")
        return code

    def _slot_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug of ours: without this the proxy would run on with a slot nobody watches.
        log.error("watching a worker failed (%s); stopping", type(task.exception()).__name__)
        self._failed = (None, 1)
        self._stop.set()

    async def _start_admin(self) -> FleetAdmin | None:
        if self.cfg.admin is None:
            return None
        # Only now: the admin listener is aiohttp.web, which a proxy without one never loads.
        from authproxy.admin.fleet import FleetAdmin

        admin = FleetAdmin(self)
        host, port = self.cfg.admin
        try:
            await admin.listen(host, port)
        except OSError as exc:
            print(f"error: cannot listen on {format_authority(host, port)}: {exc.strerror or exc}.", file=sys.stderr)
            self._failed = (None, 1)
            self._stop.set()
            return None
        log.info("admin listener on %s", format_authority(host, admin.port))
        return admin

    async def _finish(self, slots: list[asyncio.Task[None]]) -> int:
        failed = self._failed
        if failed is None:
            log.info("draining %d workers", len(self.workers))
        clean = await self._drain()
        await asyncio.gather(*slots, return_exceptions=True)
        if failed is not None:
            why, code = failed
            if why is not None:
                print(f"error: {why}", file=sys.stderr)
            return code
        return 0 if clean else 1


ForkedMain = Callable[[int, int, str, str], int]  # worker index, link fd, --listen, --worker-pin: exit code


def supervise(
    cfg: Config, host: str, port: int, count: int, args: WorkerArgs, forked_main: ForkedMain | None = None
) -> int:
    """Validate once, reserve the port, run the workers; the exit code of ``authproxy run``.

    ``forked_main``: how a forked worker runs ``authproxy run`` in its process;
    without it (or where forking is not safe) every worker starts as a new interpreter.
    """
    LocalCA(ensure_ca(cfg.state_dir, cfg.ca_cert, cfg.ca_key)).close()  # a CAError is the usage error it is today
    try:
        held = reserve(host, port)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}.", file=sys.stderr)
        return 1
    bound = normalize_host(str(held[0].getsockname()[0]))
    port = int(held[0].getsockname()[1])
    metrics = MetricsDir.create(cfg.state_dir)
    supervisor = Supervisor(cfg, bound, port, count, args, metrics)
    if forked_main is not None and can_fork():
        # Here, before asyncio.run: the fork must come before any event loop or thread exists (forking.py).
        listen, pinned = supervisor.listen, pin(cfg)
        preload(args.loop)
        forked = prefork(range(1, count + 1), lambda i, fd: forked_main(i, fd, listen, pinned), held)
        for w in supervisor.workers:
            w.forked = forked.get(w.index)
    try:
        return asyncio.run(supervisor.run())
    finally:
        for w in supervisor.workers:
            if w.forked is not None:  # never started (the proxy stopped first): it exits on the closed link
                w.forked.link.close()
        metrics.remove()
        for s in held:
            s.close()
