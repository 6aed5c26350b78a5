"""Requests per second through authproxy with per-request signing (AWS SigV4) beside a bearer route, one run.

One proxy process (`python -m authproxy run`, this checkout) with two gateway
routes to the same upstream: `/bearer` (`type: bearer`, a header built once
per token) and `/aws` (`type: aws_sigv4`, keys from the environment, every
request signed: canonical request, SHA-256s and an HMAC). The upstream is a
small uvloop server that answers 200 to anything (and 401 without an
`Authorization`, so every 2xx shows the proxy added one). wrk drives a GET
and a POST with a 1 KiB body (SigV4 hashes it) at each route in turn, rounds
interleaved; the proxy's CPU per 1,000 requests is read from /proc.

    python3 bench/signing.py                 # 3 rounds of 10 s per cell
    python3 bench/signing.py --seconds 3 --rounds 1

Needs wrk, botocore (`pip install 'authproxy[aws]'`) and uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
_DENIED = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"


def _upstream(port: int) -> None:
    """Answer each request on a keep-alive connection; a request without Authorization gets 401."""
    import httptools
    import uvloop

    class Proto(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.auth = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_message_begin(self) -> None:
            self.auth = False

        def on_header(self, name: bytes, value: bytes) -> None:
            if name.lower() == b"authorization":
                self.auth = True

        def on_message_complete(self) -> None:
            self.transport.write(_RESPONSE if self.auth else _DENIED)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    uvloop.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def _wrk(url: str, seconds: int, conns: int, script: Path | None) -> tuple[float, int, int]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url]
    if script is not None:
        cmd[1:1] = ["-s", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, total, int(bad[1]) if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="authproxy-signing-"))
    up_port, proxy_port = _free_port(), _free_port()
    post = work / "post.lua"
    post.write_text('wrk.method = "POST"\nwrk.body = string.rep("x", 1024)\n'
                    'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n')
    (work / "routes.yaml").write_text(
        f"state_dir: {work / 'state'}\n"
        "routes:\n"
        f"  - {{name: bearer, gateway: /bearer, upstream: http://127.0.0.1:{up_port},"
        " auth: {type: bearer, token: bench-token-0123456789}}\n"
        f"  - {{name: aws, gateway: /aws, upstream: http://127.0.0.1:{up_port},"
        " auth: {type: aws_sigv4, service: sqs, aws_region: us-east-1}}\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AWS_ACCESS_KEY_ID": "AKIDBENCHBENCHBENCH0",
        "AWS_SECRET_ACCESS_KEY": "benchSecretKeyBenchSecretKeyBench0000000",
        "AWS_CONFIG_FILE": str(work / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(up_port)], cwd=ROOT)
    proxy = subprocess.Popen(
        [sys.executable, "-m", "authproxy", "run", "-c", str(work / "routes.yaml"),
         "--listen", f"127.0.0.1:{proxy_port}"],
        cwd=ROOT, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )
    cells: dict[tuple[str, str], list[tuple[float, float]]] = {
        (r, m): [] for r in ("bearer", "aws") for m in ("GET", "POST 1 KiB")
    }
    failed = 0
    try:
        _wait_port(up_port)
        _wait_port(proxy_port)
        for route in ("bearer", "aws"):  # warm up: the first request fetches the credential
            _wrk(f"http://127.0.0.1:{proxy_port}/{route}/", 1, 4, None)
        for _ in range(args.rounds):
            for (route, method), runs in cells.items():
                script = post if method.startswith("POST") else None
                cpu = _cpu_ms(proxy.pid)
                url = f"http://127.0.0.1:{proxy_port}/{route}/x"
                rps, total, bad = _wrk(url, args.seconds, args.connections, script)
                failed += bad
                runs.append((rps, (_cpu_ms(proxy.pid) - cpu) * 1000 / max(total, 1)))
    finally:
        proxy.terminate()
        upstream.terminate()
        proxy.wait(15)
        upstream.wait(15)
    print(f"{args.rounds} round(s) of {args.seconds} s, {args.connections} connections, wrk -t1; medians\n")
    print("| route | request | req/s | proxy CPU ms / 1k req |")
    print("|---|---|---|---|")
    for (route, method), runs in cells.items():
        rps = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"| {route} | {method} | {rps:,.0f} | {cpu:.0f} |")
    if failed:
        print(f"\n{failed} non-2xx answers: a route did not add its credential.")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--upstream":
        _upstream(int(sys.argv[2]))
    else:
        sys.exit(main())
