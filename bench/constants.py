"""The bench's fixed facts: its files, the upstream's address and token, the download's size."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
LUA = HERE / "wrk_absolute.lua"
LUA_REFRESH = HERE / "wrk_refresh.lua"  # every request timed on its own (the refresh extra)
REFRESH_UPSTREAM = HERE / "refresh_upstream.py"  # the refresh extra's resource server and token endpoint
PEER_FILES = HERE / "peers"
HOST = "127.0.0.1"
TOKEN = "test-token"
AUTH = f"Bearer {TOKEN}"
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"
SMALL_BODY = b"authproxy bench upstream: 100 bytes, proof that the Authorization header arrived" + b"." * 100
SMALL_BODY = SMALL_BODY[:100]
BIG_MB = 100
BIG_BYTES = BIG_MB << 20
VENVS = Path(os.environ.get("BENCH_VENVS", "/tmp"))
PROXY_ENV_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
CERTGEN = "/usr/lib/squid/security_file_certgen"
