"""The soak's upstream in a process of its own: echo, downloads, and ~1% of responses reset mid-body.

``python -m tests.support.soak_upstream CA_PATH`` serves three aiohttp sites on
127.0.0.1 (plain; TLS that a route intercepts; the same TLS app on a port no
route matches, reached through a blind tunnel), writes its CA to ``CA_PATH``
and prints one JSON line with the three ports. It stops on SIGTERM or when its
stdin closes (the test went away). ``GET /_soak/state`` on the plain port
answers what arrived: the request ids seen, the ids whose response was reset,
the count of requests and of unauthorized ones.

Why a process and not the test's event loop: that loop also runs 300 httpx
clients, and when it stalls for a second or two the upstream stalls with it,
which the proxy then sees as a slow upstream on top of slow clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import signal
import ssl
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from aiohttp import web

KEY = "soak-key-9d8c7b6a5f"
TOKEN = "soak-token-1a2b3c4d5e"
RESET_SHARE = 0.01
BLOCK_SEED = 20261123
BLOCK_SIZE = 512 * 1024


def block() -> bytes:
    """The download bytes, the same in the test and here (a seeded generator, not os.urandom)."""
    return random.Random(BLOCK_SEED).randbytes(BLOCK_SIZE)


@dataclass
class State:
    requests: int = 0
    unauthorized: int = 0
    seen: set[str] = field(default_factory=set)  # request ids that arrived
    reset: set[str] = field(default_factory=set)  # request ids whose response was reset
    rng: random.Random = field(default_factory=lambda: random.Random(BLOCK_SEED))

    def arrived(self, request: web.Request) -> str:
        rid = request.query.get("rid", "")
        self.requests += 1
        self.seen.add(rid)
        return rid

    def reset_now(self, rid: str) -> bool:
        if self.rng.random() < RESET_SHARE:
            self.reset.add(rid)
            return True
        return False


def app(st: State, data: bytes, *, tunnel: bool, control: bool) -> web.Application:
    def authorized(request: web.Request) -> bool:
        if tunnel:  # a blind tunnel carries no credential, by design
            return "x-key" not in request.headers and "authorization" not in request.headers
        return request.headers.get("X-Key") == KEY or request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def abort_mid_body(request: web.Request, total: int, sent: bytes) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = total
        await resp.prepare(request)
        await resp.write(sent)
        await asyncio.sleep(0)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def echo(request: web.Request) -> web.StreamResponse:
        rid = st.arrived(request)
        h = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            size += len(chunk)
        if not authorized(request):
            st.unauthorized += 1
            return web.json_response({"error": "unauthorized"}, status=401)
        if st.reset_now(rid):
            return await abort_mid_body(request, 1000, b"partial")
        return web.json_response({"size": size, "sha": h.hexdigest()})

    async def big(request: web.Request) -> web.StreamResponse:
        rid = st.arrived(request)
        size = int(request.query["size"])
        if not authorized(request):
            st.unauthorized += 1
            return web.json_response({"error": "unauthorized"}, status=401)
        if st.reset_now(rid):
            return await abort_mid_body(request, size, data[: size // 2])
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        for i in range(0, size, 65536):
            await resp.write(data[i : min(size, i + 65536)])
        await resp.write_eof()
        return resp

    async def state(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "requests": st.requests,
                "unauthorized": st.unauthorized,
                "seen": sorted(st.seen),
                "reset": sorted(st.reset),
            }
        )

    a = web.Application(client_max_size=1 << 24)
    if control:
        a.router.add_get("/_soak/state", state)
    a.router.add_get("/big/{rid}", big)
    a.router.add_route("*", "/{tail:.*}", echo)
    return a


async def main(ca_path: Path) -> None:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca.cert_pem.write_to_path(str(ca_path))
    st, data = State(), block()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the test process is gone
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    ports: dict[str, int] = {}
    runners = []
    for name, tls, tunnel in (("port", None, False), ("tls_port", ctx, False), ("tunnel_port", ctx, True)):
        runner = web.AppRunner(app(st, data, tunnel=tunnel, control=name == "port"), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls, backlog=1024)
        await site.start()
        ports[name] = runner.addresses[0][1]
        runners.append(runner)
    print(json.dumps(ports), flush=True)
    await stop.wait()
    for r in runners:
        await r.cleanup()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
