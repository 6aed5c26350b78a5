"""The proxy as a real process (``python -m authproxy run``), for CLI, RSS and signal tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ProxyProcess:
    proc: subprocess.Popen[bytes]
    port: int
    url: str
    err_lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stderr_text(self) -> str:
        return "\n".join(self.err_lines)

    def stop(self, sig: int = signal.SIGTERM, wait: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(5)
        if self.reader is not None:
            self.reader.join(5)  # the last lines may still be in the pipe
        return rc


def start_proxy(
    config: Path, *args: str, env: dict[str, str] | None = None, listen: str = "127.0.0.1:0"
) -> ProxyProcess:
    """Start on ``listen`` (a free loopback port by default) and wait for its "listening on" line.

    The port is read from that line whatever the address (``0.0.0.0:0`` too).
    """
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "authproxy", "run", "-c", str(config), "--listen", listen, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=full_env,
    )
    lines: list[str] = []
    found = threading.Event()
    port_box: list[int] = []

    def reader() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append(line)
            m = re.search(r"listening on \S+:(\d+)", line)
            if m and not found.is_set():
                port_box.append(int(m.group(1)))
                found.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not found.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the proxy did not start:\n" + "\n".join(lines))
    port = port_box[0]
    return ProxyProcess(proc, port, f"http://127.0.0.1:{port}", lines, thread)
