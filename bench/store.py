"""The shared token store's cost: three replicas on one Redis against three on their own,
and a cache miss through Redis against one through the file store.

    python3 bench/store.py                 # ~1 min; needs redis-server and hey
    python3 bench/store.py --seconds 10 --connections 32 --misses 1000

Part 1 starts a redis-server on a free port, a local upstream and token endpoint
(aiohttp, in this process's loop on its own thread), then three ``authproxy run``
replicas twice: once sharing ``token_store:``, once each with its own state dir.
Each replica gets its own ``hey`` at once (``-c`` connections for ``--seconds``),
after a warm-up: warm requests never reach Redis, so the two should match.

Part 2 times ``adopt_or_fetch`` in process for a cache miss whose fetch costs
nothing, so what is measured is the store alone: the lease (acquire, read,
renew, fenced write, release: five round trips) against the file store's
``flock``, read, atomic write (fsync) and unlock; and a miss that adopts what
another replica stored (acquire, read, release).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    for _ in range(500):
        try:
            if redis.Redis(port=port).ping():
                return proc, port
        except redis.exceptions.ConnectionError:
            time.sleep(0.02)
    raise SystemExit("redis-server did not start")


def _start_servers() -> int:
    """An upstream that answers 200 to the bench token, and a token endpoint: one port, own thread."""
    from aiohttp import web

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "bench-token-0123456789", "token_type": "Bearer", "expires_in": 3600})

    async def echo(request: web.Request) -> web.Response:
        ok = request.headers.get("Authorization") == "Bearer bench-token-0123456789"
        return web.Response(text="ok\n" if ok else "no\n", status=200 if ok else 401)

    port = _free_port()
    ready = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/token", token)
        app.router.add_route("*", "/{tail:.*}", echo)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return port


def _config(workdir: Path, i: int, up: int, redis_port: int | None) -> Path:
    store = f'token_store: {{url: "redis://127.0.0.1:{redis_port}/0", key: "${{STORE_KEY}}"}}\n' if redis_port else ""
    text = (
        f"state_dir: {workdir / f'state{i}'}\n{store}routes:\n"
        f"  - name: bench\n    match: 127.0.0.1:{up}\n"
        f"    auth: {{type: client_credentials, token_url: 'http://127.0.0.1:{up}/token', client_id: b,"
        f" client_secret: bench-secret-0123456789}}\n"
    )
    path = workdir / f"routes{i}-{'redis' if redis_port else 'file'}.yaml"
    path.write_text(text)
    return path


def _start_replica(config: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "authproxy",
            "run",
            "-c",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.02)
    raise SystemExit("a replica did not start")


def _hey(proxy: int, up: int, seconds: float, conns: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["hey", "-z", f"{seconds}s", "-c", str(conns), "-x", f"http://127.0.0.1:{proxy}", f"http://127.0.0.1:{up}/x"],
        stdout=subprocess.PIPE,
        text=True,
    )


def _parse_hey(out: str) -> tuple[float, float, int]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = float(re.search(r"99%+ in ([\d.]+) secs", out).group(1))  # type: ignore[union-attr]
    non200 = sum(int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out) if code != "200")
    return rps, p99 * 1000, non200


def part1(workdir: Path, up: int, redis_port: int, seconds: float, conns: int) -> list[str]:
    env = {"STORE_KEY": base64.b64encode(os.urandom(32)).decode()}
    rows = []
    for shared in (True, False):
        procs = [_start_replica(_config(workdir, i, up, redis_port if shared else None), env) for i in range(3)]
        try:
            for _, port in procs:  # warm: each replica has its token
                subprocess.run(
                    ["curl", "-s", "-o", "/dev/null", "-x", f"http://127.0.0.1:{port}", f"http://127.0.0.1:{up}/warm"],
                    check=True,
                )
            runs = [_hey(port, up, seconds, conns) for _, port in procs]
            results = [_parse_hey(r.communicate()[0]) for r in runs]
        finally:
            for p, _ in procs:
                p.terminate()
                p.wait(30)
        rps = sum(r[0] for r in results)
        p99 = max(r[1] for r in results)
        errors = sum(r[2] for r in results)
        name = "three replicas, one Redis store" if shared else "three replicas, each its own file store"
        rows.append(f"| {name} | {rps:,.0f} | {p99:.1f} | {errors} |")
    return rows


async def part2(workdir: Path, redis_port: int, misses: int) -> list[str]:
    from authproxy.config.model import TokenStoreSettings
    from authproxy.disk.store import StateStore
    from authproxy.ops.metrics import Metrics
    from authproxy.secrecy.secrets import Secret, Value
    from authproxy.tokens.redisstore import RedisStore

    key = base64.b64encode(os.urandom(32)).decode()
    url = f"redis://127.0.0.1:{redis_port}/0"
    redis_store = RedisStore(TokenStoreSettings(Value(url, url), Secret(key, key), "bench:", url), 30.0, Metrics())
    file_store = StateStore(workdir / "state-part2")
    rows = []

    async def fetch(rec: dict[str, Any]) -> int:
        rec["access"] = "x" * 40
        rec["n"] = rec.get("n", 0) + 1
        return 1

    def never(rec: dict[str, Any]) -> int | None:
        return None

    def adopt(rec: dict[str, Any]) -> int | None:
        return 1 if rec.get("access") else None

    for label, store in (("Redis (loopback)", redis_store), ("file store (fsync)", file_store)):
        for what, adopter in (("miss, fetch and store", never), ("miss, adopt another's", adopt)):
            times = []
            for _ in range(misses):
                t = time.perf_counter()
                await store.adopt_or_fetch("bench", adopter, fetch)
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            p99 = times[int(len(times) * 0.99) - 1]
            rows.append(f"| {label} | {what} | {statistics.median(times):.3f} | {p99:.3f} |")
    await redis_store.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=16, help="per replica")
    ap.add_argument("--misses", type=int, default=500)
    args = ap.parse_args()
    for tool in ("redis-server", "hey", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="authproxy-bench-store-"))
    redis, redis_port = _start_redis(workdir)
    try:
        up = _start_servers()
        print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start\n")
        print(f"Warm requests, {args.seconds:g} s, {args.connections} connections per replica (hey, summed):\n")
        print("| setup | req/s | worst replica's p99 ms | non-200 |\n|---|---|---|---|")
        print("\n".join(part1(workdir, up, redis_port, args.seconds, args.connections)))
        print(f"\nOne cache miss, the store alone (a fetch that costs nothing), {args.misses} each:\n")
        print("| store | one cache miss (a fetch that costs nothing) | median ms | p99 ms |\n|---|---|---|---|")
        print("\n".join(asyncio.run(part2(workdir, redis_port, args.misses))))
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
