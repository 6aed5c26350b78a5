"""Bench's state: the workdir, ports and targets one run uses; the base of every Bench part."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

from constants import CERTGEN, HOST
from installed import installed_authproxy
from procs import free_port
from targets import AUTHPROXY, INSTALLED, TARGET_INFO, Target, authproxy_name


class BenchState:
    """The workdir, the ports and the targets of one run, and what every part of Bench looks up."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.logs = self.work / "logs"
        self.pki = self.work / "pki"
        self.ca_cert, self.ca_key = self.pki / "ca.pem", self.pki / "ca.key"
        self.up_cert, self.up_key = self.pki / "upstream.pem", self.pki / "upstream.key"
        self.leaf_key = self.pki / "leaf.key"  # proxy.py signs every leaf it mints with this one key
        self.scenarios: list[str] = args.scenario_list
        taken: set[int] = set()

        def pick(port: int) -> int:
            while not port or port in taken:
                port = free_port()
            taken.add(port)
            return port

        self.up_port = pick(args.upstream_port)
        self.https_port = pick(args.https_port if args.https_port is not None else (443 if os.geteuid() == 0 else 0))
        self.status_port = pick(0)
        self.token_port = pick(0)
        self.refresh_port = pick(0)  # the refresh extra's resource server (proxied)...
        self.refresh_token_port = pick(0)  # ...and its token endpoint + admin paths (not proxied)
        self.targets: dict[str, Target] = {}
        self.installed_exe: Path | None = None
        for name in ["direct", *args.proxy_list]:
            schemes, how = TARGET_INFO[name]
            if name == AUTHPROXY:  # as installed first, then one target per --authproxy-workers value
                if args.installed:
                    t = self.installed_target(pick(0))
                    self.targets[t.name] = t
                for i, workers in enumerate(args.authproxy_workers_list):
                    t = self.authproxy_target(workers, pick(args.proxy_port if i == 0 else 0))
                    self.targets[t.name] = t
                continue
            t = Target(name, schemes, how)
            if name != "direct":
                t.port = pick(0)
                t.missing = self.missing(name)
            self.targets[name] = t
        self.nginx: subprocess.Popen[bytes] | None = None
        self.refresh_loop = "asyncio"  # the refresh upstream's loop: uvloop when --python has it (main)

    def authproxy_target(self, workers: str, port: int) -> Target:
        schemes, how = TARGET_INFO[AUTHPROXY]
        display = AUTHPROXY
        if workers != "1":
            display += f" --workers {workers}"
            many = "one worker process per CPU" if workers == "auto" else f"{workers} worker processes"
            how += (
                f"; `run --workers {workers}`: a supervisor and {many} on one port (SO_REUSEPORT), CPU and RSS "
                "are the whole process tree's"
            )
        if self.args.authproxy_loop != "asyncio":
            display += f" --loop {self.args.authproxy_loop}"
            how += f"; `run --loop {self.args.authproxy_loop}`"
        return Target(authproxy_name(workers), schemes, how, port=port, workers=workers, display=display)

    def installed_target(self, port: int) -> Target:
        """`pip install .` into a venv of its own (installed.py), then `authproxy run` with every default."""
        schemes, how = TARGET_INFO[AUTHPROXY]
        how = (
            "this checkout as the README's first command installs it (`python3 -m pip install .` into a fresh "
            "venv, bench/installed.py) and `authproxy run -c ROUTES` with every default: one process, `--loop "
            "auto`, log level info; a `bearer` route per upstream port; CONNECT intercepted with the bench CA"
        )
        t = Target(INSTALLED, schemes, how, port=port, workers="1", display="authproxy as installed", installed=True)
        try:
            self.installed_exe = installed_authproxy(self.args.python)
        except (OSError, subprocess.SubprocessError) as e:
            t.missing = f"not installed: `pip install .` into a venv failed ({type(e).__name__})"
        return t

    def authproxies(self, extras: bool = False) -> list[Target]:
        """The authproxy variants: as installed, then --authproxy-workers order; with `extras`, those of
        --extras-workers (never the installed one: the extras measure this checkout's variants)."""
        if extras:
            chosen = self.args.extras_workers_list
            return [t for t in self.targets.values() if t.is_authproxy and not t.installed and t.workers in chosen]
        chosen = self.args.authproxy_workers_list
        return [t for t in self.targets.values() if t.is_authproxy and (t.installed or t.workers in chosen)]

    def url(self, path: str, scheme: str = "http") -> str:
        if scheme == "https":
            return f"https://{HOST}{'' if self.https_port == 443 else f':{self.https_port}'}{path}"
        return f"http://{HOST}:{self.up_port}{path}"

    def runnable(self) -> list[Target]:
        return [t for t in self.targets.values() if not t.missing]

    def missing(self, name: str) -> str | None:
        """None when the peer can run here, else why not ("not installed ...")."""
        a = self.args
        if name in ("squid", "squid-bump"):
            squid = shutil.which("squid") or "/usr/sbin/squid"
            if not os.access(squid, os.X_OK):
                return "not installed (apt-get install squid-openssl)"
            if name == "squid-bump":
                built = subprocess.run([squid, "-v"], capture_output=True, text=True, timeout=10).stdout
                if "--with-openssl" not in built or not os.access(CERTGEN, os.X_OK):
                    return "not installed: this squid has no OpenSSL (apt-get install squid-openssl)"
            return None
        if name == "tinyproxy":
            ok = shutil.which("tinyproxy") or os.access("/usr/bin/tinyproxy", os.X_OK)
            return None if ok else "not installed (apt-get install tinyproxy)"
        exe = {"proxy.py": a.proxypy, "mitmproxy": a.mitmdump}[name]
        return None if os.access(exe, os.X_OK) else f"not installed ({exe} missing; bash bench/setup.sh)"

    def proxy_log(self, t: Target, tag: str) -> Path:
        return self.logs / f"{t.name}-{tag}.log"
