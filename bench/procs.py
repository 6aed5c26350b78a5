"""Processes and ports: start in a process group, stop by it, wait for a port, bounded commands."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from constants import HOST, PROJECT

PROCS: list[subprocess.Popen[bytes]] = []


def spawn(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a long-running process in its own session (process group == its pid), output to log."""
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        out.flush()
        p = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    PROCS.append(p)
    return p


def stop(p: subprocess.Popen[bytes], grace: float = 15.0) -> dict[str, Any]:
    """SIGTERM to the process group, SIGKILL after `grace` s. Returns how it went."""

    def group_alive() -> bool:
        p.poll()  # reap the leader so a zombie does not count
        try:
            os.killpg(p.pid, 0)
            return True
        except ProcessLookupError:
            return False

    info: dict[str, Any] = {"exited_before_stop": p.poll() is not None}
    t0 = time.monotonic()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 3.0)):
        if not group_alive():
            break
        if sig == signal.SIGKILL:
            info["killed"] = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        end = time.monotonic() + wait
        while group_alive() and time.monotonic() < end:
            time.sleep(0.02)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(1)
    info["returncode"] = p.returncode
    info["stop_s"] = round(time.monotonic() - t0, 3)
    if p in PROCS:
        PROCS.remove(p)
    return info


def stop_all() -> None:
    for p in list(reversed(PROCS)):
        stop(p, grace=5.0)


def project_pythonpath() -> str:
    return os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def check_port_free(port: int) -> None:
    with socket.socket() as s:
        if s.connect_ex((HOST, port)) == 0:
            raise SystemExit(f"error: {HOST}:{port} is already in use by a process this script did not start")


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}; see {log}")
        try:
            socket.create_connection((HOST, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout:.0f} s; see {log}")


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """A bounded foreground command (wrk, curl). subprocess.run kills it on timeout or Ctrl-C."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def first_line(text: str, limit: int = 120) -> str:
    return (text.strip().splitlines() or [""])[0][:limit]
