"""Bench part: the upstream's files (www/, the bench PKI) and nginx (its config, start, counters)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

from constants import AUTH, BIG_BYTES, BIG_MB, CLIENT_ID, CLIENT_SECRET, HOST, SMALL_BODY, TOKEN
from procs import check_port_free, spawn, wait_port
from state import BenchState


class Upstream(BenchState):
    """The upstream: the files nginx serves, the bench PKI, nginx itself and its counters."""

    # -- files ---------------------------------------------------------------
    def prepare(self) -> None:
        for d in (self.work, self.logs, self.work / "www", self.work / "nginx-tmp", self.work / "state", self.pki):
            d.mkdir(parents=True, exist_ok=True)
        for old in self.logs.glob("*.log"):  # each run's logs start empty; big.bin is kept
            old.unlink()
        # nginx's workers run as `nobody` when started by root: they must be able to read www/.
        for d in (self.work, self.work / "www"):
            d.chmod(0o755)
        www = self.work / "www"
        (www / "small.txt").write_bytes(SMALL_BODY)
        big = www / "big.bin"
        if not big.exists() or big.stat().st_size != BIG_BYTES:
            print(f"writing {big} ({BIG_MB} MB of random bytes)", flush=True)
            tmp = big.with_suffix(".tmp")
            with open(tmp, "wb") as out:
                for _ in range(BIG_MB):
                    out.write(os.urandom(1 << 20))
            tmp.replace(big)
        for f in www.iterdir():
            f.chmod(0o644)
        self.make_pki()

    def make_pki(self) -> None:
        """A fresh bench CA (EC P-256) and nginx's certificate for 127.0.0.1, signed by it, each run.

        The CA signs nginx's certificate (the route's `ca_file` trusts it) and is also the proxy's
        own CA (`ca_cert`/`ca_key`), so curl --cacert CA verifies both the direct and the
        intercepted connection."""
        p = self.pki

        def ossl(*a: str) -> None:
            r = subprocess.run(["openssl", *a], capture_output=True, text=True, timeout=30, cwd=p)
            if r.returncode:
                raise RuntimeError(f"openssl {a[0]} failed: {r.stderr.strip()[-300:]}")

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        ossl("req", "-x509", *ec, "-days", "30", "-subj", "/CN=authproxy bench CA",
             "-keyout", str(self.ca_key), "-out", str(self.ca_cert),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash")  # fmt: skip
        (p / "upstream.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
        )
        ossl("req", "-new", *ec, "-subj", "/CN=127.0.0.1", "-keyout", str(self.up_key),
             "-out", str(p / "upstream.csr"))  # fmt: skip
        ossl("x509", "-req", "-in", str(p / "upstream.csr"), "-CA", str(self.ca_cert), "-CAkey", str(self.ca_key),
             "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "30",
             "-extfile", str(p / "upstream.ext"), "-out", str(self.up_cert))  # fmt: skip
        ossl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(self.leaf_key))
        for f in (self.ca_key, self.up_key, self.leaf_key):
            f.chmod(0o600)

    # -- nginx ---------------------------------------------------------------
    def start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(nginx, os.X_OK):
            raise SystemExit("error: nginx not found; run: bash bench/setup.sh")
        for port in (self.up_port, self.https_port, self.status_port, self.token_port):
            check_port_free(port)
        conf = self.write_nginx_conf(nginx)
        log = self.logs / "nginx.log"
        cmd = [nginx, "-p", str(self.work), "-e", str(self.logs / "nginx-error.log"), "-c", str(conf)]
        cmd += ["-g", "daemon off;"]
        self.nginx = spawn(cmd, log)
        for port in (self.up_port, self.https_port, self.status_port, self.token_port):
            wait_port(port, self.nginx, log)

    def write_nginx_conf(self, nginx: str) -> Path:
        """nginx.conf in the workdir: the upstream (plain and TLS), its status page and the token endpoint."""
        # Point every temp path compiled into this nginx at the workdir, so it runs as non-root too.
        built = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
        temps = "\n".join(
            f"  {kind}_temp_path {self.work}/nginx-tmp/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            if f"--http-{kind.replace('_', '-')}-temp-path" in built
        )
        user = "  # not root: nginx keeps the current user" if os.geteuid() else "user nobody nogroup;"
        basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        token_json = json.dumps({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})
        conf = self.work / "nginx.conf"
        conf.write_text(f"""# generated by bench/run.py
{user}
worker_processes {self.args.nginx_workers};
pid {self.work}/nginx.pid;
error_log {self.logs}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
{temps}
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  open_file_cache max=16;
  default_type application/octet-stream;
  ssl_session_cache shared:SSL:1m;
  log_format bench_token '$msec $status';
  server {{
    listen {HOST}:{self.up_port};
    listen {HOST}:{self.https_port} ssl;
    ssl_certificate {self.up_cert};
    ssl_certificate_key {self.up_key};
    root {self.work}/www;
    # Every benchmarked 2xx proves the header arrived: no header, no file.
    if ($http_authorization != "{AUTH}") {{ return 401 "missing or wrong Authorization\\n"; }}
  }}
  server {{
    # Connection counters (accepts handled requests): how many connections each run opened.
    listen {HOST}:{self.status_port};
    location = /status {{ stub_status; }}
  }}
  server {{
    # The token endpoint of the cold-start runs (OAuth client_credentials, client_secret_basic):
    # the bench token for the right client, 401 otherwise; one log line per fetch.
    listen {HOST}:{self.token_port};
    access_log {self.logs}/token-endpoint.log bench_token;
    default_type application/json;
    location = /token {{
      if ($request_method != POST) {{ return 405 '{{"error":"invalid_request"}}'; }}
      if ($http_authorization != "Basic {basic}") {{ return 401 '{{"error":"invalid_client"}}'; }}
      return 200 '{token_json}';
    }}
  }}
}}
""")
        return conf

    def nginx_accepts(self) -> int | None:
        """nginx's count of accepted connections so far (stub_status), None if it cannot be read."""
        try:
            with socket.create_connection((HOST, self.status_port), 5) as s:
                s.sendall(f"GET /status HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
        except OSError:
            return None
        m = re.search(rb"\n\s*(\d+)\s+\d+\s+\d+\s*\n", data)
        return int(m.group(1)) if m else None

    def token_fetches(self) -> int:
        log = self.logs / "token-endpoint.log"
        if not log.exists():
            return 0
        with open(log) as f:
            return sum(1 for _ in f)
