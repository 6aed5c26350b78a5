"""``authproxy run``: its arguments checked, the event loop chosen, then one process served or a supervisor's workers.

What serving does once started is ``run/serve.py``'s and ``run/supervisor.py``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any

from authproxy.cli.usage import UsageError
from authproxy.config import Config, load, parse_listen
from authproxy.net.hosts import HostError, format_authority, is_loopback
from authproxy.ops import accesslog
from authproxy.run.serve import serve
from authproxy.run.worker import WorkerLink, pinned, reuse_port_loop
from authproxy.server.memory import tune_asyncio_tls, tune_malloc
from authproxy.tokens.stores import store_unreachable

log = logging.getLogger("authproxy")


def _worker_count(text: str) -> int:
    if text == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))  # the CPUs this process may use (containers, taskset)
        except AttributeError:
            return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--workers: `{text}` is not a number of processes (1 or more) or `auto`.")
    return int(text)


def cmd_run(args: argparse.Namespace) -> int:
    workers = _worker_count(args.workers)
    cfg = load(args.config)
    level = getattr(logging, args.log_level.upper())
    if args.worker_index is not None:
        accesslog.setup(args.log_format, level, shared=True, tag=f"worker {args.worker_index}: ")
        host, port = parse_listen(args.listen)
        link = WorkerLink(args.worker_index, args.worker_fd)
        return _serve(pinned(cfg, args.worker_pin), host, port, args.loop, link)
    accesslog.setup(args.log_format, level, shared=workers > 1)
    host, port = cfg.listen_host, cfg.listen_port
    if args.listen:
        try:
            host, port = parse_listen(args.listen)
        except HostError as exc:
            raise UsageError(f"--listen: {exc}.") from None
    if not is_loopback(host) and cfg.proxy_auth is None:
        if not args.allow_open:
            raise UsageError(
                f"refusing to listen on {host} without proxy_auth: anyone who reaches an open authproxy "
                "spends your credentials; configure proxy_auth, listen on 127.0.0.1, or pass --allow-open."
            )
        print(
            f"warning: listening on {host} with no proxy authentication: anyone who can reach this "
            "port can spend every credential in the route table.",
            file=sys.stderr,
        )
    _check_admin(cfg, args.allow_open)
    unreachable = store_unreachable(cfg)  # no silent local fallback: that would fetch unlocked
    if unreachable is not None:
        print(f"error: {unreachable}", file=sys.stderr)
        return 1
    for w in cfg.warnings:
        log.warning("%s", w.located())
    if workers > 1:
        from authproxy.run.supervisor import WorkerArgs, supervise  # not needed by a worker, nor by a single process

        return supervise(cfg, host, port, workers, WorkerArgs(args.config, args.log_format, args.log_level, args.loop))
    return _serve(cfg, host, port, args.loop)


def _check_admin(cfg: Config, allow_open: bool) -> None:
    """The `--listen` rule for the admin listener: beyond loopback it needs `admin.token`, or --allow-open."""
    if cfg.admin is None or cfg.admin_token is not None or is_loopback(cfg.admin[0]):
        return
    where = format_authority(*cfg.admin)
    if not allow_open:
        raise UsageError(
            f"refusing to run the admin listener on {where} without a token: anyone who reaches it reads the "
            "proxy's status and metrics; set `admin: {listen: ..., token: ${VAR}}`, bind it to 127.0.0.1, "
            "or pass --allow-open."
        )
    print(
        f"warning: no token guards the admin listener at {where}: anyone who can reach it reads the "
        "proxy's status and metrics.",
        file=sys.stderr,
    )


def _run_loop(main: Coroutine[Any, Any, int], loop: str, reuse_port: bool = False) -> int:
    """uvloop when it is installed (`auto`) or asked for, else asyncio's own loop.

    uvloop costs a quarter less CPU per request (bench/README.md, "The event loop");
    `--loop asyncio` keeps the standard library's. ``reuse_port``: a worker's
    loop, whose listener shares the port with the other workers'.
    """
    tune_malloc()
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if loop == "asyncio":
        tune_asyncio_tls()
        if not reuse_port:
            return asyncio.run(main)
        with asyncio.Runner(loop_factory=reuse_port_loop(asyncio.SelectorEventLoop)) as runner:
            return runner.run(main)
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        main.close()
        raise UsageError("--loop uvloop needs uvloop, which is not installed here (it has no Windows build).") from None
    if reuse_port:
        return int(uvloop.run(main, loop_factory=reuse_port_loop(uvloop.Loop)))
    return int(uvloop.run(main))


def _serve(cfg: Config, host: str, port: int, loop: str, link: WorkerLink | None = None) -> int:
    try:
        return _run_loop(serve(cfg, host, port, link), loop, reuse_port=link is not None)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}.", file=sys.stderr)
        return 1
