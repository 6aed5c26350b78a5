"""A credential helper for the ``command`` grant's tests, run as a real process.

Usage: ``cred_helper.py MODE DIR [ARG]``. Every run appends a line to
``DIR/runs``; the token it prints is ``cmdtok-<run number>-q9Zx7Lm2``, so a
test can tell runs apart and count them.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from pathlib import Path

FAKE_STDOUT = "FAKE-helper-stdout-secret-7Hq2"
FAKE_STDERR = "FAKE-helper-stderr-secret-9Kw4"


def token(n: int) -> str:
    return f"cmdtok-{n}-q9Zx7Lm2"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_with_exp(n: int, exp: float) -> str:
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps({"sub": token(n), "exp": int(exp)}).encode())
    sig = _b64(hmac.new(b"k" * 32, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def main() -> int:
    mode, where = sys.argv[1], Path(sys.argv[2])
    arg = sys.argv[3] if len(sys.argv) > 3 else ""
    with open(where / "runs", "a") as f:
        f.write(f"{os.getpid()}\n")
    n = len((where / "runs").read_text().splitlines())
    tok = token(n)
    out = sys.stdout
    if mode == "plain":
        out.write(tok + "\r\n")
    elif mode == "json-epoch":
        json.dump({"credential": {"token": tok, "expiry": time.time() + float(arg)}}, out)
    elif mode == "json-rfc3339":
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=float(arg))
        json.dump({"status": {"token": tok, "expirationTimestamp": when.isoformat().replace("+00:00", "Z")}}, out)
    elif mode == "json-expires-in":
        json.dump({"access_token": tok, "expires_in": float(arg)}, out)
    elif mode == "jwt":
        out.write(jwt_with_exp(n, time.time() + float(arg)) + "\n")
    elif mode == "fail":
        out.write(FAKE_STDOUT + "\n")
        out.flush()
        sys.stderr.write(FAKE_STDERR + "\n")
        return int(arg)
    elif mode == "hang":
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        (where / "pids").write_text(f"{os.getpid()}\n{child.pid}\n")
        out.write(FAKE_STDOUT)
        out.flush()
        time.sleep(120)
    elif mode == "multiline":
        out.write(f"{tok}\n{FAKE_STDOUT}\n")
    elif mode == "empty":
        out.write("  \n")
    elif mode == "big":
        out.write("x" * (70 * 1024))
    elif mode == "notjson":
        out.write(FAKE_STDOUT + "\n")
    elif mode == "env":
        # The proxy's environment reaches the helper; stdin is /dev/null (EOF at once).
        stdin_empty = sys.stdin.read() == ""
        out.write(f"{os.environ[arg]}-{n}-stdin-{'empty' if stdin_empty else 'data'}\n")
    elif mode == "noisy":
        # Lots of stderr must not block the helper or reach the proxy's log.
        for _ in range(2000):
            sys.stderr.write(FAKE_STDERR * 4 + "\n")
        out.write(tok + "\n")
    else:
        sys.stderr.write(f"unknown mode {mode}\n")
        return 64
    return 0


if __name__ == "__main__":
    sys.exit(main())
