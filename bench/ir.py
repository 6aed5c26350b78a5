"""Instructions per proxied small GET, counted by callgrind: the steady judge on a shared machine.

Wall-clock req/s moves with whatever else the machine runs; the number of instructions the
proxy executes per request does not (to within ~1 %). This runs ``authproxy run`` from a
checkout under ``valgrind --tool=callgrind`` twice, for N1 and then N2 small GETs over
8 keep-alive connections, and prints (Ir(N2) - Ir(N1)) / (N2 - N1): start-up, imports and
shutdown cancel out, what is left is the cost of one request.

    python3 bench/ir.py CHECKOUT [N1 N2] [plain|tls]

- CHECKOUT: the directory ``python -m authproxy`` runs from (its PYTHONPATH), e.g. ``.``.
  Compiled or not is whatever that checkout holds (``python3 setup.py build_ext --inplace``
  builds the compiled modules in place); ``AUTHPROXY_PURE_PYTHON=1`` in the environment
  makes it ignore them.
- N1 N2: request counts (default 1000 4000); more gives a steadier figure, slower.
- ``plain`` (default): absolute-form GETs through a route with an ``upstream``;
  ``tls``: CONNECT, then intercepted GETs over TLS to a TLS upstream.
- ``LOOP=uvloop`` (default) or ``LOOP=asyncio`` picks ``--loop``.

The upstream is a minimal asyncio server in this process (100-byte answers); only the
proxy runs under valgrind. The proxy's stderr is shown when a run fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import trustme

CONNS = 8
BODY = b"x" * 100
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\n" + BODY


async def upstream(tls_ctx: ssl.SSLContext | None) -> asyncio.Server:
    """Answers every request head it sees with ``ANSWER``, pipelined or not."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        buf = b""
        try:
            while data := await r.read(65536):
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    w.write(ANSWER)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the proxy went away, or the measurement is over
        w.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls_ctx)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def clients(port: int, up: int, n: int, tls: bool, ca_file: Path) -> None:
    """``n`` GETs over ``CONNS`` keep-alive connections, each answer checked."""
    target = "/x" if tls else f"http://127.0.0.1:{up}/x"
    req = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{up}\r\n\r\n".encode()

    async def one() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        if tls:
            w.write(f"CONNECT 127.0.0.1:{up} HTTP/1.1\r\nHost: 127.0.0.1:{up}\r\n\r\n".encode())
            await r.readuntil(b"\r\n\r\n")
            await w.start_tls(ssl.create_default_context(cafile=str(ca_file)), server_hostname="127.0.0.1")
        for _ in range(n // CONNS):
            w.write(req)
            head = await r.readuntil(b"\r\n\r\n")
            assert b" 200 " in head.split(b"\r\n")[0], head
            await r.readexactly(len(BODY))
        w.close()

    await asyncio.gather(*[one() for _ in range(CONNS)])


def write_config(tmp: Path, port: int, up: int, tls: bool) -> Path:
    route = f"    ca_file: {tmp}/upca.pem\n" if tls else f"    upstream: http://127.0.0.1:{up}\n"
    cfg = tmp / "routes.yaml"
    cfg.write_text(
        f"listen: 127.0.0.1:{port}\nstate_dir: {tmp}/state\nca_cert: {tmp}/pca.pem\nca_key: {tmp}/pca.key\n"
        "limits: {max_connections: 4096}\nroutes:\n"
        f"  - name: bench\n    match: 127.0.0.1:{up}\n{route}"
        '    auth: {type: bearer, token: "${BENCH_TOKEN}"}\n'
    )
    return cfg


async def measure(checkout: str, n: int, up: int, tls: bool, tmp: Path) -> int:
    """Total instructions of one proxy run that served ``n`` requests."""
    port = free_port()
    cfg = write_config(tmp, port, up, tls)
    out = tmp / f"cg.{n}"
    env = dict(os.environ, BENCH_TOKEN="test-token-123456", PYTHONPATH=checkout)
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m", "authproxy",
           "run", "-c", str(cfg), "--loop", os.environ.get("LOOP", "uvloop")]
    err_file = tmp / f"proxy.{n}.err"
    with open(err_file, "w") as err:
        p = subprocess.Popen(cmd, cwd=checkout, env=env, stderr=err, stdout=subprocess.DEVNULL)
    try:
        # Under valgrind, start-up takes seconds, minutes on a busy machine: wait for the line, not a clock.
        for _ in range(3000):
            if "listening on" in err_file.read_text():
                break
            if p.poll() is not None:
                raise SystemExit(f"the proxy exited ({p.returncode}):\n{err_file.read_text()[-3000:]}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
        await clients(port, up, n, tls, tmp / "ca.pem")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(120)
    m = re.search(r"^(?:summary|totals):\s+(\d+)", out.read_text(), re.M) if out.exists() else None
    assert m, f"no callgrind totals; the proxy said:\n{err_file.read_text()[-3000:]}"
    return int(m.group(1))


async def main() -> None:
    args = sys.argv[1:]
    tls = bool(args) and args[-1] in ("tls", "plain") and args.pop() == "tls"
    checkout = os.path.abspath(args[0] if args else ".")
    n1, n2 = (int(args[1]), int(args[2])) if len(args) >= 3 else (1000, 4000)
    up_ca, proxy_ca = trustme.CA(), trustme.CA()
    up_ctx = None
    if tls:
        up_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        up_ca.issue_cert("127.0.0.1").configure_cert(up_ctx)
    srv = await upstream(up_ctx)
    up = srv.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        up_ca.cert_pem.write_to_path(str(tmp / "upca.pem"))
        proxy_ca.cert_pem.write_to_path(str(tmp / "pca.pem"))
        proxy_ca.private_key_pem.write_to_path(str(tmp / "pca.key"))
        proxy_ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
        a = await measure(checkout, n1, up, tls, tmp)
        b = await measure(checkout, n2, up, tls, tmp)
    kind = "intercepted" if tls else "plain"
    print(f"{checkout} ({kind}): Ir/request = {(b - a) / (n2 - n1):,.0f}  ({a:,} @ {n1}, {b:,} @ {n2})")


if __name__ == "__main__":
    asyncio.run(main())
