"""Bench part: curl requests, the first requests after a start, and the checks (verify, keep-alive)."""

from __future__ import annotations

import re
import socket
from typing import Any

from constants import AUTH, HOST, SMALL_BODY
from procs import first_line, run
from state import BenchState
from targets import Target


class Clients(BenchState):
    """curl through a target, the first requests after its start, and the checks (verify, keep-alive)."""

    def curl(
        self,
        path: str,
        port: int | None,
        headers: tuple[str, ...] | list[str] = (),
        out: str = "/dev/null",
        timeout: float = 30,
        scheme: str = "http",
        extra: tuple[str, ...] = (),
        url: str | None = None,
    ) -> dict[str, Any]:
        """One curl request, straight to nginx (port None) or through the proxy on `port`; `url`
        instead of nginx's `path` (the refresh extra's upstream)."""
        cmd = ["curl", "-sS", "-o", out, "-w", "%{http_code} %{size_download} %{time_total}"]
        cmd += ["--max-time", str(timeout), "--noproxy", "", "--cacert", str(self.ca_cert), *extra]
        if port:
            cmd += ["-x", f"http://{HOST}:{port}"]
        for h in headers:
            cmd += ["-H", h]
        r = run([*cmd, url or self.url(path, scheme)], timeout + 15)
        code, size, secs = ([*r.stdout.split(), "000", "0", "0"])[:3]
        return {"code": int(code), "size": int(size), "secs": float(secs), "stderr": r.stderr.strip()}

    def client_headers(self, t: Target) -> list[str]:
        return [] if t.is_proxy else [f"Authorization: {AUTH}"]

    def first_requests(self, t: Target) -> dict[str, Any]:
        """Right after a start: two GETs per scheme, each curl on a new connection; the first one
        is cold (no upstream connection yet; over HTTPS the leaf for 127.0.0.1 is minted). Over
        HTTPS through a proxy with curl -k: verify() checks the minted certificates."""
        out: dict[str, Any] = {}
        port = t.port if t.is_proxy else None
        insecure = ("-k",) if t.is_proxy else ()  # timing only: verify() checks the minted certificates
        for scheme in t.schemes:
            for n in ("first", "second"):
                r = self.curl("/small.txt", port, self.client_headers(t), scheme=scheme, extra=insecure)
                out[f"{n}_{scheme}_ms"] = r["secs"] * 1e3 if r["code"] == 200 else None
                if r["code"] != 200:
                    out[f"{n}_{scheme}_error"] = f"{r['code']} {first_line(r['stderr'])}".strip()
        return out

    def verify(self, t: Target) -> dict[str, Any]:
        """Per scheme with curl: the header must reach nginx (200 and the right body); keep-alive;
        and through a proxy, whether a client's own Authorization is replaced."""
        body = self.work / "verify.out"
        out: dict[str, Any] = {}
        port = t.port if t.is_proxy else None
        oks = []
        for scheme in t.schemes:
            key = "http" if scheme == "http" else "https"
            r = self.curl("/small.txt", port, self.client_headers(t), out=str(body), scheme=scheme)
            ok = r["code"] == 200 and body.read_bytes() == SMALL_BODY
            out[key] = "200, body intact" if ok else f"{r['code']} {first_line(r['stderr'])}".strip()
            if not ok and scheme == "https" and t.is_proxy:  # does it work without verifying the leaf?
                k = self.curl("/small.txt", port, out=str(body), scheme=scheme, extra=("-k",))
                if k["code"] == 200 and body.read_bytes() == SMALL_BODY:
                    t.insecure = True
                    out[key] += "; 200 with curl -k (its minted certificate does not verify)"
                    ok = True
            out[f"{key}_keepalive"] = self.keepalive(port) if scheme == "http" else self.keepalive_tls(t)
            if t.is_proxy:  # the client's own Authorization must be replaced, never forwarded alongside
                r = self.curl("/small.txt", port, ["Authorization: Bearer wrong-client-token"], scheme=scheme,
                              extra=("-k",) if t.insecure else ())  # fmt: skip
                out[f"{key}_replaces"] = "yes" if r["code"] == 200 else f"no: {r['code']}"
            oks.append(ok)
        out["ok"] = all(oks)
        return out

    def keepalive(self, port: int | None) -> str:
        """Two GETs, one after the other, on one connection: does the second one get an answer?"""
        target = self.url("/small.txt") if port else "/small.txt"
        auth = "" if port else f"Authorization: {AUTH}\r\n"
        req = f"GET {target} HTTP/1.1\r\nHost: {HOST}:{self.up_port}\r\n{auth}\r\n".encode()
        heads: list[bytes] = []
        try:
            with socket.create_connection((HOST, port or self.up_port), 5) as s:
                s.settimeout(5)
                buf = b""
                for _ in range(2):
                    s.sendall(req)
                    while b"\r\n\r\n" not in buf:
                        chunk = s.recv(65536)
                        if not chunk:
                            return f"no: closed after {len(heads)} response(s)"
                        buf += chunk
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    heads.append(head.split(b"\r\n")[0])
                    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    need = int(m.group(1)) if m else 0
                    while len(buf) < need:
                        chunk = s.recv(65536)
                        if not chunk:
                            return "no: closed mid-body"
                        buf += chunk
                    buf = buf[need:]
        except OSError as e:
            return f"no: {type(e).__name__} after {len(heads)} response(s)"
        return "yes" if all(h.split()[1:2] == [b"200"] for h in heads) else f"answers: {heads!r}"

    def keepalive_tls(self, t: Target) -> str:
        """curl fetches the URL twice in one invocation: the second GET must reuse the first
        connection (through a proxy: the same CONNECT tunnel and TLS session inside it)."""
        cmd = ["curl", "-sS", "--max-time", "20", "--noproxy", "", "--cacert", str(self.ca_cert)]
        cmd += ["-w", "%{http_code} %{num_connects}\\n", "-o", "/dev/null", "-o", "/dev/null"]
        cmd += ["-k"] if t.insecure else []
        if t.is_proxy:
            cmd += ["-x", f"http://{HOST}:{t.port}"]
        else:
            cmd += ["-H", f"Authorization: {AUTH}"]
        url = self.url("/small.txt", "https")
        r = run([*cmd, url, url], 35)
        answers = [ln.split() for ln in r.stdout.splitlines() if ln.strip()]
        if len(answers) == 2 and all(a[0] == "200" for a in answers) and answers[1][1] == "0":
            return "yes"
        return f"no: {answers} {first_line(r.stderr)}".strip()
