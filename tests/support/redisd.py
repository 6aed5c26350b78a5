"""A real ``redis-server`` (Debian's package) on a free loopback port, for the shared token store's tests.

Started with an append-only file in a temporary directory and no RDB
snapshots, so a restart (``restart``) keeps what was written, as a
production Redis with AOF does. One per test module (``redis_server``
fixture, module-scoped); ``flush`` gives each test a clean keyspace.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    password: str | None = None
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--dir", str(self.dir), "--protected-mode", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.client().ping():
                    return
            except redis.exceptions.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop it the way an operator would: SHUTDOWN writes the append-only file out first."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(redis.exceptions.ConnectionError):  # it closes the connection as it goes
            self.client().shutdown(nosave=False)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        self.client().flushall()
        self.client().config_resetstat()

    def everything(self) -> list[tuple[bytes, bytes]]:
        """Every key and its value (strings as stored; other types as their dump), by SCAN."""
        c = self.client()
        out = []
        for key in c.scan_iter(count=1000):
            kind = c.type(key)
            value = c.get(key) if kind == b"string" else (c.dump(key) or b"")
            out.append((key, value or b""))
        return out


def start_redis() -> RedisServer:
    server = RedisServer(free_port(), Path(tempfile.mkdtemp(prefix="authproxy-redis-")))
    server.start()
    return server


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
