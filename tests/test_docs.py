"""The manual against the code: every key the parser accepts is in docs/configuration.md,
docs/commands.md embeds each command's real ``--help``, and every relative link resolves.

The keys come from the parser's own registry (``yamlreader.KEYS``, filled by every
read), after loading a file that uses every grant type and every block; so a key
added to the parser fails here until the manual names it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from authproxy import config, yamlreader

ROOT = Path(__file__).resolve().parent.parent
HASH = "$2b$12$" + "a" * 53
# The Bitwarden SDK's own example access token (tests/test_bws.py): well formed, no account behind it.
BWS_TOKEN = "0.ec2c1d46-6a4b-4751-a310-af9601317f2d.C2IgxjjLF7qSshsbwe8JGcbM075YXw:X8vbvA0bduihIDe/qrzIQQ=="

EVERY_KEY = f"""
listen: 127.0.0.1:8080
state_dir: STATE
unmatched: tunnel
ca_cert: ca.pem
ca_key: ca-key.pem
extra_ca_file: ca.pem
limits: {{max_header_bytes: 64KiB, max_connections: 1024, max_connections_per_client: 512, replay_body: 1MiB,
          max_body_chunk: 256KiB, max_headers: 100, max_request_line: 8KiB}}
timeouts: {{connect: 10, client_header: 30, idle: 60, upstream_headers: 60, token_fetch: 30, drain: 30,
            tls_handshake: 10}}
admin: {{listen: 127.0.0.1:9090, token: ${{ADMIN_TOKEN}}, hosts: [proxy.test]}}
proxy_auth:
  realm: corp
  users:
    ci: "{HASH}"
    bot: {{hash: "{HASH}", routes: [key]}}
destinations: {{deny: [private], allow: [10.1.0.0/16]}}
bws: {{access_token: ${{BWS_TOKEN}}, region: us}}
routes:
  - name: key
    match: key.test/v1
    upstream: https://127.0.0.1:8443
    ca_file: ca.pem
    verify: true
    allow: [{{methods: [GET], paths: [/v1/]}}]
    auth: {{type: api_key, header: X-API-Key, prefix: "", value: ${{SECRET_A}}}}
  - name: query
    gateway: /query
    upstream: https://query.test
    auth: {{type: api_key, query: key, value: ${{SECRET_A}}}}
  - {{name: bearer, match: bearer.test, auth: {{type: bearer, token: ${{SECRET_A}}}}}}
  - {{name: file, match: file.test, auth: {{type: bearer, token_file: token.txt}}}}
  - {{name: basic, match: basic.test, auth: {{type: basic, username: u, password: ${{SECRET_A}}}}}}
  - name: cc
    match: cc.test
    auth: {{type: client_credentials, token_url: https://id.test/token, client_id: c, client_secret: ${{SECRET_A}},
            client_auth: client_secret_post, body: json, scope: s, audience: a, extra: {{resource: r}},
            refresh_skew: 60, default_ttl: 300}}
  - name: pw
    match: pw.test
    auth: {{type: password, token_url: https://id.test/token, client_id: c, username: u, password: ${{SECRET_A}}}}
  - name: rt
    match: rt.test
    auth: {{type: refresh_token, token_url: https://id.test/token, client_id: c, refresh_token: ${{SECRET_A}}}}
  - name: ac
    match: ac.test
    auth: {{type: authorization_code, authorization_url: https://id.test/authorize, token_url: https://id.test/token,
            client_id: c, redirect_path: /callback, redirect_port: 0}}
  - name: ac2
    match: ac2.test
    auth: {{type: authorization_code, issuer: https://id.test, client_id: c}}
  - {{name: bw, match: bw.test, auth: {{type: bws, access_token: ${{BWS_TOKEN}}, identity_url: https://i.test,
                                       api_url: https://a.test}}}}
  - name: cmd
    match: cmd.test
    auth: {{type: command, argv: [echo, '{{"t": "x"}}'], json_field: t, expiry_field: e, ttl: 300, timeout: 30,
            header: Authorization, prefix: "Bearer ", refresh_skew: 60, default_ttl: 300}}
  - {{name: cmdq, match: cmdq.test, auth: {{type: command, argv: [echo, x], query: token}}}}
"""


def test_every_key_the_parser_accepts_is_in_the_configuration_manual(tmp_path: Path, monkeypatch) -> None:
    for name in ("ca.pem", "ca-key.pem", "token.txt"):
        (tmp_path / name).write_text("x\n")
    monkeypatch.setenv("ADMIN_TOKEN", "a" * 32)
    monkeypatch.setenv("SECRET_A", "s3cret-value-for-docs")
    monkeypatch.setenv("BWS_TOKEN", BWS_TOKEN)
    (tmp_path / "routes.yaml").write_text(EVERY_KEY.replace("STATE", str(tmp_path / "state")))
    yamlreader.KEYS.clear()
    config.load(tmp_path / "routes.yaml")
    keys = sorted(yamlreader.KEYS)
    print("\n".join(keys))
