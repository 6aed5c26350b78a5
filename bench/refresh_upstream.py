#!/usr/bin/env python3
"""The upstream of bench/run.py's `refresh` extra: a resource server and its OAuth token endpoint.

    python3 bench/refresh_upstream.py --resource-port P --token-port T [--delay-ms 50] [--loop uvloop]

Two listeners on 127.0.0.1, one process (aiohttp; uvloop when asked and installed):

- `--resource-port` (the port authproxy's route matches): any GET answers 200 with a 100-byte
  body only when `Authorization: Bearer <token>` carries the token the endpoint issued last, and
  only if it was issued after the last revocation; else 401 with `WWW-Authenticate: Bearer
  error="invalid_token"`. Every answer echoes the request's `X-Bench-Id` (the load client pairs
  its requests with their answers by it); a 200 also says which token it accepted in
  `X-Bench-Token`.
- `--token-port` (not proxied): `POST /token`, OAuth 2.0 client_credentials (RFC 6749 §4.4):
  form `grant_type=client_credentials`, the client authenticated by HTTP Basic or by the form's
  `client_id` / `client_secret`. Each fetch waits `--delay-ms`, then issues the next `tok-N`:
  `{"access_token": "tok-N", "token_type": "Bearer", "expires_in": 3600}`.
  `POST /admin/revoke` revokes the current token (from then on only a token issued later is
  accepted) and answers when it did so; `GET /admin/stats` answers every fetch and revocation,
  and the resource's counts of 200s and 401s, as JSON.

Times are `time.monotonic()` (CLOCK_MONOTONIC, one clock for every process on the machine), so
the load client's timestamps and these can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

BODY = (b"authproxy bench refresh upstream: 100 bytes, the token was the latest one" + b"." * 100)[:100]
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"


@dataclass
class State:
    delay: float
    issued: int = 0  # tok-N of the latest token
    issued_at: float = 0.0
    accepted: str | None = None  # the `Authorization` value the resource takes now
    revoked_at: float = 0.0
    fetches: list[dict[str, Any]] = field(default_factory=list)
    refused_fetches: int = 0
    revocations: list[dict[str, Any]] = field(default_factory=list)
    ok: int = 0
    ok_per_token: dict[str, int] = field(default_factory=dict)
    unauthorized: int = 0
    unauthorized_after_revoke: int = 0  # since the last revocation
    first_401_after_revoke: float | None = None
    last_401_after_revoke: float | None = None
    first_200_after_revoke: float | None = None


def client_of(request: web.Request, form: dict[str, str]) -> tuple[str | None, str | None, str]:
    """(client_id, client_secret, how) from HTTP Basic (RFC 6749 §2.3.1: each part form-urlencoded)
    or from the form."""
    auth = request.headers.get("Authorization", "")
    if auth[:6].lower() == "basic ":
        try:
            cid, _, secret = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None, "basic"
        return unquote(cid.replace("+", " ")), unquote(secret.replace("+", " ")), "basic"
    return form.get("client_id"), form.get("client_secret"), "form"


def make_servers(st: State) -> tuple[web.Server, web.Application]:
    """The resource (aiohttp's low-level server: no router, the cheapest aiohttp has) and the
    token endpoint with the admin paths."""

    async def resource(request: web.BaseRequest) -> web.Response:
        rid = request.headers.get("X-Bench-Id")
        headers = {"X-Bench-Id": rid} if rid else {}
        auth = request.headers.get("Authorization")
        if auth is not None and auth == st.accepted:
            st.ok += 1
            token = auth[7:]
            st.ok_per_token[token] = st.ok_per_token.get(token, 0) + 1
            if st.revoked_at and st.first_200_after_revoke is None:
                st.first_200_after_revoke = time.monotonic()
            headers["X-Bench-Token"] = token
            return web.Response(body=BODY, headers=headers, content_type="text/plain")
        st.unauthorized += 1
        if st.revoked_at:
            now = time.monotonic()
            st.unauthorized_after_revoke += 1
            st.last_401_after_revoke = now
            if st.first_401_after_revoke is None:
                st.first_401_after_revoke = now
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return web.Response(status=401, text="invalid_token\n", headers=headers)

    async def token(request: web.Request) -> web.Response:
        received = time.monotonic()
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        cid, secret, how = client_of(request, form)
        if cid != CLIENT_ID or secret != CLIENT_SECRET:
            st.refused_fetches += 1
            return web.json_response({"error": "invalid_client"}, status=401, headers={"WWW-Authenticate": "Basic"})
        if form.get("grant_type") != "client_credentials":
            st.refused_fetches += 1
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        await asyncio.sleep(st.delay)
        st.issued += 1
        st.issued_at = time.monotonic()
        name = f"tok-{st.issued}"
        st.accepted = f"Bearer {name}"  # the latest token, issued after any revocation so far
        st.fetches.append({"token": name, "received": received, "answered": st.issued_at, "client_auth": how})
        body = {"access_token": name, "token_type": "Bearer", "expires_in": 3600}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def revoke(_request: web.Request) -> web.Response:
        st.revoked_at = time.monotonic()
        revoked = st.accepted[7:] if st.accepted else None
        st.accepted = None  # the resource takes only a token issued from now on
        st.unauthorized_after_revoke = 0
        st.first_401_after_revoke = st.last_401_after_revoke = st.first_200_after_revoke = None
        rec = {"at": st.revoked_at, "token": revoked, "ok_before": st.ok}
        st.revocations.append(rec)
        return web.json_response(rec)

    async def stats(_request: web.Request) -> web.Response:
        out = {k: v for k, v in vars(st).items() if k != "accepted"}
        out["now"] = time.monotonic()
        return web.json_response(out)

    res = web.Server(resource, access_log=None)
    ctl = web.Application()
    ctl.router.add_post("/token", token)
    ctl.router.add_post("/admin/revoke", revoke)
    ctl.router.add_get("/admin/stats", stats)
    return res, ctl


async def serve(args: argparse.Namespace) -> None:
    st = State(delay=args.delay_ms / 1000)
    res, ctl = make_servers(st)
    runners: list[web.BaseRunner] = [
        web.ServerRunner(res, handle_signals=False),
        web.AppRunner(ctl, access_log=None, handle_signals=False),
    ]
    for runner, port in zip(runners, (args.resource_port, args.token_port), strict=True):
        await runner.setup()
        await web.TCPSite(runner, args.host, port, backlog=1024).start()
    print(json.dumps({"listening": [args.resource_port, args.token_port], "delay_ms": args.delay_ms}), flush=True)
    try:
        await asyncio.Event().wait()  # until SIGTERM
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--resource-port", type=int, required=True)
    ap.add_argument("--token-port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=50.0, help="each token fetch waits this long; default 50")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
