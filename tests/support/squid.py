"""A real squid (Debian's squid-openssl) as a parent proxy with Basic authentication, for tests.

``Squid.start(users, hosts)`` writes a config into a directory of its own
under /tmp (squid started as root drops to the ``proxy`` user, which must
read the config, the htpasswd file and the hosts file, and write its logs),
runs ``squid -N -f CONF`` on a free port of 127.0.0.1 and waits until it
accepts connections. Its outgoing connections leave from ``OUTGOING``
(``tcp_outgoing_address``), so a listener can tell them from anyone
else's by the peer address; names in ``hosts`` resolve for squid only
(``hosts_file``), not for the process under test.

``access_lines()`` reads ``access.log`` (squid's native format: time,
elapsed, client, code/status, bytes, method, URL, user, hierarchy, type).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

OUTGOING = "127.0.0.3"
SQUID = shutil.which("squid") or "/usr/sbin/squid"
NCSA = "/usr/lib/squid/basic_ncsa_auth"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def htpasswd_line(user: str, password: str) -> str:
    """An htpasswd entry made as an admin makes one: ``openssl passwd -apr1``."""
    out = subprocess.run(
        ["openssl", "passwd", "-apr1", "-stdin"], input=password, capture_output=True, text=True, check=True
    )
    return f"{user}:{out.stdout.strip()}\n"


@dataclass
class Squid:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, users: dict[str, str], hosts: dict[str, str]) -> Squid:
        d = Path(tempfile.mkdtemp(prefix="authproxy-squid-"))
        d.chmod(0o755)
        (d / "logs").mkdir()
        (d / "htpasswd").write_text("".join(htpasswd_line(u, p) for u, p in users.items()))
        (d / "hosts").write_text("".join(f"{ip} {name}\n" for name, ip in hosts.items()))
        port = free_port()
        (d / "squid.conf").write_text(
            f"""
http_port 127.0.0.1:{port}
pid_filename {d}/logs/squid.pid
cache_log {d}/logs/cache.log
access_log stdio:{d}/logs/access.log squid
coredump_dir {d}/logs
netdb_filename none
cache deny all
cache_mem 8 MB
pinger_enable off
shutdown_lifetime 0 seconds
hosts_file {d}/hosts
tcp_outgoing_address {OUTGOING}
auth_param basic program {NCSA} {d}/htpasswd
auth_param basic realm parent
auth_param basic children 2 startup=1
acl authenticated proxy_auth REQUIRED
http_access allow authenticated
http_access deny all
forwarded_for delete
"""
        )
        subprocess.run(["chown", "-R", "proxy:proxy", str(d)], check=True)
        sq = cls(port, d)
        sq.run()
        return sq

    def run(self) -> None:
        self.proc = subprocess.Popen(
            [SQUID, "-N", "-f", str(self.dir / "squid.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"squid exited: {self.cache_log()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.1)
        raise RuntimeError("squid did not start listening within 30 s")

    def cache_log(self) -> str:
        try:
            return (self.dir / "logs" / "cache.log").read_text(errors="replace")
        except OSError:
            return ""

    def access_lines(self) -> list[str]:
        try:
            return (self.dir / "logs" / "access.log").read_text(errors="replace").splitlines()
        except OSError:
            return []

    def wait_for_line(self, *parts: str, timeout: float = 10.0) -> str:
        """The first access.log line holding every one of ``parts`` (squid writes it when the transaction ends)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.access_lines():
                if all(p in line for p in parts):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no access.log line with {parts}: {self.access_lines()[-10:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

