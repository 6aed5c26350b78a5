"""Python's HTTP clients as a user runs them: `py_client.py LIBRARY FEATURE URL`.

Each library is used with its defaults and nothing else: the proxy and the CA
bundle come from the environment `authproxy env` printed (aiohttp's one step is
`trust_env=True`, without which it reads neither). The output is the same for
every client in the matrix (tests/test_clients.py reads it):

- get: `status N`, then the body;
- sse: each non-empty line of the event stream as soon as it arrives;
- ws:  the echo of `hello`, then `closed CODE REASON SECONDS` once the
  connection has ended after the server's close (SECONDS from sending `close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

TIMEOUT = 15.0  # every connection attempt and read
CLOSE_TIMEOUT = 30.0  # the clients' own close timeouts: a close that waits for one is a failure


def out(line: str) -> None:
    print(line, flush=True)


def urllib_get(url: str) -> None:
    import urllib.request

    with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
        out(f"status {resp.status}")
        out(resp.read().decode())


def urllib_sse(url: str) -> None:
    import urllib.request

    with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
        for raw in resp:
            if line := raw.decode().strip():
                out(line)


def requests_get(url: str) -> None:
    import requests

    resp = requests.get(url, timeout=TIMEOUT)
    out(f"status {resp.status_code}")
    out(resp.text)


def requests_sse(url: str) -> None:
    import requests

    with requests.get(url, stream=True, timeout=TIMEOUT) as resp:
        for raw in resp.iter_lines():
            if line := raw.decode().strip():
                out(line)


def httpx_get(url: str) -> None:
    import httpx

    resp = httpx.get(url, timeout=TIMEOUT)
    out(f"status {resp.status_code}")
    out(resp.text)


def httpx_sse(url: str) -> None:
    import httpx

    with httpx.stream("GET", url, timeout=TIMEOUT) as resp:
        for raw in resp.iter_lines():
            if line := raw.strip():
                out(line)


async def aiohttp_get(url: str) -> None:
    import aiohttp

    session = aiohttp.ClientSession(trust_env=True, timeout=aiohttp.ClientTimeout(total=TIMEOUT))
    async with session, session.get(url) as resp:
        out(f"status {resp.status}")
        out(await resp.text())


async def aiohttp_sse(url: str) -> None:
    import aiohttp

    session = aiohttp.ClientSession(trust_env=True, timeout=aiohttp.ClientTimeout(total=TIMEOUT))
    async with session, session.get(url) as resp:
        async for raw in resp.content:
            if line := raw.decode().strip():
                out(line)


async def aiohttp_ws(url: str) -> None:
    import aiohttp

    session = aiohttp.ClientSession(trust_env=True, timeout=aiohttp.ClientTimeout(total=TIMEOUT))
    ws_timeout = aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT)
    async with session, session.ws_connect(url, timeout=ws_timeout) as ws:
        await ws.send_str("hello")
        out((await ws.receive_str()).strip())
        start = time.monotonic()
        await ws.send_str("close")
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        # aiohttp answers the close frame and then ends the connection itself.
        await ws.close()
        out(f"closed {ws.close_code} {msg.extra} {time.monotonic() - start:.2f}")


async def websockets_ws(url: str) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosedOK

    async with connect(url, open_timeout=TIMEOUT, close_timeout=CLOSE_TIMEOUT) as ws:
        await ws.send("hello")
        out(str(await ws.recv()))
        start = time.monotonic()
        await ws.send("close")
        with contextlib.suppress(ConnectionClosedOK):
            await ws.recv()
        # The server closes TCP after the closing handshake (RFC 6455 §7.1.1);
        # websockets waits for that end, or its close_timeout.
        await ws.wait_closed()
        out(f"closed {ws.close_code} {ws.close_reason} {time.monotonic() - start:.2f}")


CLIENTS = {
    ("urllib", "get"): urllib_get,
    ("urllib", "sse"): urllib_sse,
    ("requests", "get"): requests_get,
    ("requests", "sse"): requests_sse,
    ("httpx", "get"): httpx_get,
    ("httpx", "sse"): httpx_sse,
    ("aiohttp", "get"): aiohttp_get,
    ("aiohttp", "sse"): aiohttp_sse,
    ("aiohttp", "ws"): aiohttp_ws,
    ("websockets", "ws"): websockets_ws,
}


def main() -> None:
    library, feature, url = sys.argv[1:4]
    run = CLIENTS[(library, feature)]
    result = run(url)
    if asyncio.iscoroutine(result):
        asyncio.run(result)


if __name__ == "__main__":
    main()
