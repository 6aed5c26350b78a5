"""The machine, the tool versions and the proxy's code fingerprint, for the report's head."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
from typing import TYPE_CHECKING, Any

from constants import PROJECT
from meter import load1
from procs import project_pythonpath

if TYPE_CHECKING:
    from harness import Bench


def code_fingerprint() -> str:
    """sha256 over the proxy's source files: tells whether the code changed during a run."""
    h = hashlib.sha256()
    for f in sorted((PROJECT / "authproxy").rglob("*.py")):
        h.update(str(f.relative_to(PROJECT)).encode() + b"\0")
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def tool_version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]


def machine_facts(b: Bench) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    probe = (
        "import sys, ssl, authproxy, aiohttp, h11\n"
        "try:\n import uvloop; uv = uvloop.__version__\nexcept ImportError:\n uv = 'not installed'\n"
        "print(f'python {sys.version.split()[0]}, authproxy {authproxy.__version__}, "
        "aiohttp {aiohttp.__version__}, h11 {h11.__version__}, uvloop {uv}, {ssl.OPENSSL_VERSION}')"
    )
    env = {**os.environ, "PYTHONPATH": project_pythonpath()}
    r = subprocess.run([b.args.python, "-c", probe], capture_output=True, text=True, timeout=30, env=env)
    peers = {}
    present = {n for n, t in b.targets.items() if not t.missing}
    if present & {"squid", "squid-bump"}:
        peers["squid"] = tool_version(["squid", "-v"])
    if "tinyproxy" in present:
        peers["tinyproxy"] = tool_version(["tinyproxy", "-v"])
    if "mitmproxy" in present:
        peers["mitmproxy"] = tool_version([b.args.mitmdump, "--version"])
    if "proxy.py" in present:
        peers["proxy.py"] = "proxy.py " + tool_version([b.args.proxypy, "--version"])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "proxy_stack": r.stdout.strip() or f"? ({r.stderr.strip()[-200:]})",
        "uvloop": r.returncode == 0 and "uvloop not installed" not in r.stdout,
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": tool_version(["wrk", "-v"]),
        "curl": tool_version(["curl", "--version"]),
        "hey": "hey " + tool_version(["dpkg-query", "-W", "-f", "${Version}", "hey"]),
        "peers": peers,
        "load1_at_start": load1(),
        "authproxy_code": code_fingerprint(),
    }
