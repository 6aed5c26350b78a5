"""DPoP's cost: one proof, and requests per second with a proof on every request vs a bearer route.

    python3 bench/dpop.py                  # ~1 min: proofs, then 3 interleaved rounds of 5 s per route
    python3 bench/dpop.py --rounds 5 --seconds 10 --connections 32

Part 1 signs proofs in this process with authproxy's own ``DPoPKey`` (the
header encoded once, the key object kept: what the proxy does per request),
and, for comparison, with joserfc's ``jws.serialize_compact`` building each
header anew; wall µs per proof and CPU ms per 1,000 proofs.

Part 2 runs one authproxy (``python -m authproxy run``, this checkout) with two
``client_credentials`` routes to one upstream, ``/bearer`` and ``/dpop``
(``dpop: true``), and drives each with wrk in turn, round after round, through
the proxy as a forward proxy (absolute-form). The upstream (this script with
``--serve``, its own process) answers 200 only to ``Authorization: Bearer``,
or to ``Authorization: DPoP`` beside one ``DPoP`` header, else 401: every 2xx
proves the proxy injected what the route promises (wrk counts the rest as
errors, and any is reported). The proxy's CPU time is read from /proc around
each run. Needs wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def proof_costs(n: int) -> list[tuple[str, float, float]]:
    """(what, wall µs per proof, CPU ms per 1,000 proofs)."""
    from joserfc import jws
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    from authproxy.credentials.grants.dpop import DPoPKey

    rows = []
    ath = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    for what, key, count in (
        ("ES256, authproxy (header and key kept)", ECKey.generate_key("P-256"), n),
        ("EdDSA, authproxy", OKPKey.generate_key("Ed25519"), n),
        ("RS256 (2048), authproxy", RSAKey.generate_key(2048), max(1, n // 10)),
    ):
        dk = DPoPKey(key.as_pem(private=True))
        rows.append((what, *_timed(lambda dk=dk: dk.proof("GET", "https://api.example/v1/items", ath), count)))
    ec = ECKey.generate_key("P-256")
    public = ec.as_dict(private=False)

    def naive() -> str:
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public}
        claims = {
            "jti": os.urandom(16).hex(),
            "htm": "GET",
            "htu": "https://api.example/v1/items",
            "iat": int(time.time()),
            "ath": ath,
        }
        return jws.serialize_compact(header, json.dumps(claims), ec, algorithms=["ES256"])

    rows.append(("ES256, joserfc serialize_compact (header built per proof)", *_timed(naive, n)))
    return rows


def _timed(fn: object, n: int) -> tuple[float, float]:
    assert callable(fn)
    for _ in range(min(n, 200)):
        fn()
    w, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    return (time.perf_counter() - w) / n * 1e6, (time.process_time() - c) / n * 1e6


# --- the upstream and token endpoint (run with --serve PORT) ---


def serve(port: int) -> None:
    from aiohttp import web

    body = b"x" * 100
    issued = 0

    async def token(request: web.Request) -> web.Response:
        nonlocal issued
        issued += 1
        kind = "DPoP" if "DPoP" in request.headers else "Bearer"
        return web.json_response(
            {"access_token": f"bench-token-{issued:04d}-{kind}", "token_type": kind, "expires_in": 3600}
        )

    async def resource(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        ok = auth.startswith("Bearer ") or (auth.startswith("DPoP ") and len(request.headers.getall("DPoP", [])) == 1)
        return web.Response(body=body, status=200 if ok else 401)

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_route("*", "/{tail:.*}", resource)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- the run ---


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"a process exited early ({proc.args})")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def _cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(proxy_port: int, target: str, seconds: int, connections: int) -> dict[str, int]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "-s",
            str(ROOT / "bench" / "wrk_absolute.lua"),
            f"http://127.0.0.1:{proxy_port}/",
            "--",
            target,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    data: dict[str, int] = json.loads(line[len("WRKJSON ") :])
    return data


def throughput(rounds: int, seconds: int, connections: int) -> dict[str, list[dict[str, float]]]:
    work = Path(tempfile.mkdtemp(prefix="authproxy-dpop-bench-"))
    up_port, proxy_port = _free_port(), _free_port()
    routes = work / "routes.yaml"
    token_url = f"http://127.0.0.1:{up_port}/token"
    auth = f"type: client_credentials, token_url: {token_url}, client_id: b, client_secret: ${{BENCH_DPOP_SECRET}}"
    routes.write_text(
        f"state_dir: {work / 'state'}\nroutes:\n"
        f"  - {{name: bearer, match: 127.0.0.1:{up_port}/bearer, auth: {{{auth}}}}}\n"
        f"  - {{name: dpop, match: 127.0.0.1:{up_port}/dpop, auth: {{{auth}, dpop: true}}}}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_DPOP_SECRET": "bench-secret-1234"}
    up = subprocess.Popen([sys.executable, __file__, "--serve", str(up_port)], env=env)
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "authproxy",
            "run",
            "-c",
            str(routes),
            "--listen",
            f"127.0.0.1:{proxy_port}",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
    )
    results: dict[str, list[dict[str, float]]] = {"bearer": [], "dpop": []}
    try:
        _wait_port(up_port, up)
        _wait_port(proxy_port, proxy)
        for name in results:  # warm-up: the token fetched, the key made, the pool filled
            _wrk(proxy_port, f"http://127.0.0.1:{up_port}/{name}/item", 1, connections)
        for _ in range(rounds):
            for name in results:
                before = _cpu(proxy.pid)
                r = _wrk(proxy_port, f"http://127.0.0.1:{up_port}/{name}/item", seconds, connections)
                cpu = _cpu(proxy.pid) - before
                errors = r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"]
                results[name].append(
                    {
                        "rps": r["requests"] / (r["duration_us"] / 1e6),
                        "p50_ms": r["p50_us"] / 1000,
                        "p99_ms": r["p99_us"] / 1000,
                        "cpu_ms_per_1000": cpu * 1000 / max(1, r["requests"]) * 1000,
                        "errors": errors,
                    }
                )
    finally:
        for p in (proxy, up):
            p.terminate()
            p.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--proofs", type=int, default=5000, help="proofs signed per key in part 1 (default 5000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5, help="seconds of load per route per round")
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    print("| proof | µs per proof (wall) | CPU ms per 1,000 |\n|---|---:|---:|")
    for what, us, cpu in proof_costs(args.proofs):
        print(f"| {what} | {us:.1f} | {cpu:.1f} |")
    if shutil.which("wrk") is None:
        print("\nwrk is not installed: no throughput run (bash bench/setup.sh --no-peers)")
        return 1
    res = throughput(args.rounds, args.seconds, args.connections)
    print(f"\n{args.rounds} rounds x {args.seconds} s, {args.connections} connections, medians:\n")
    print("| route | req/s | p50 ms | p99 ms | proxy CPU ms per 1,000 req | non-2xx or errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in res.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_1000")}
        print(
            f"| {name} | {med['rps']:.0f} | {med['p50_ms']:.2f} | {med['p99_ms']:.2f} | "
            f"{med['cpu_ms_per_1000']:.0f} | {sum(r['errors'] for r in runs):.0f} |"
        )
    return 0 if all(r["errors"] == 0 for runs in res.values() for r in runs) else 1


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    raise SystemExit(main())
