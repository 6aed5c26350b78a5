"""The manual against the code: every key the parser accepts is in docs/configuration.md,
docs/commands.md embeds each command's real ``--help``, and every relative link resolves.

The keys come from the parser's own registry (``yamlreader.KEYS``, filled by every
read), after loading a file that uses every grant type and every block; so a key
added to the parser fails here until the manual names it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from authproxy import config
from authproxy.credentials.grants import REGISTRY
from authproxy.schema import yamlreader
from tests.support.pki import TestCA
from tests.support.proc import start_proxy

from .conftest import assert_no_secrets

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
audit: {{path: audit.log, max_bytes: 10MiB, keep: 5}}
bws: {{access_token: ${{BWS_TOKEN}}, region: us}}
token_store: {{url: "rediss://:${{REDIS_PASSWORD}}@redis.test:6380/0", key: ${{STORE_KEY}}, prefix: "gw:"}}
upstream_proxy: http://${{PROXY_USER}}:${{SECRET_A}}@proxy.test:3128
no_upstream_proxy: ["*.corp.test", "localhost:*"]
routes:
  - name: key
    match: key.test/v1
    upstream: https://127.0.0.1:8443
    ca_file: ca.pem
    verify: true
    upstream_proxy: direct
    client_cert: client.crt
    client_key: client.key
    client_key_password: ${{KEY_PASSWORD}}
    allow: [{{methods: [GET], paths: [/v1/]}}]
    auth: {{type: api_key, header: X-API-Key, prefix: "", value: ${{SECRET_A}}, placeholder: ph-key-0123456789abcdef,
            placeholder_env: KEY_API_KEY, placeholder_in_path: true, require: placeholder}}
  - name: query
    gateway: /query
    upstream: https://query.test
    auth: {{type: api_key, query: key, value: ${{SECRET_A}}}}
  - {{name: bearer, match: bearer.test, scrub: false, auth: {{type: bearer, token: ${{SECRET_A}}}}}}
  - {{name: file, match: file.test, auth: {{type: bearer, token_file: token.txt}}}}
  - {{name: basic, match: basic.test, auth: {{type: basic, username: u, password: ${{SECRET_A}}}}}}
  - name: cc
    match: cc.test
    scrub: true
    auth: {{type: client_credentials, token_url: https://id.test/token, client_id: c, client_secret: ${{SECRET_A}},
            client_auth: client_secret_post, body: json, scope: s, audience: a, extra: {{resource: r}},
            refresh_skew: 60, default_ttl: 300, placeholder: generate, stub_token_endpoint: true}}
  - name: mtls
    match: mtls.test
    auth: {{type: client_credentials, token_url: https://id.test/token, client_id: c, client_auth: tls_client_auth,
            client_cert: client.crt, client_key: client.key, client_key_password: ${{KEY_PASSWORD}}}}
  - name: pw
    match: pw.test
    auth: {{type: password, token_url: https://id.test/token, client_id: c, username: u, password: ${{SECRET_A}},
            dpop: {{key: dpop.pem, alg: ES256}}}}
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
  - name: aws
    match: "*.amazonaws.com"
    auth: {{type: aws_sigv4, service: sqs, aws_region: eu-west-1, profile: dev, refresh_skew: 60, default_ttl: 300}}
  - name: pkj
    match: pkj.test
    auth: {{type: client_credentials, token_url: https://id.test/token, client_id: c, client_auth: private_key_jwt,
            signing_key: signing.pem, signing_key_password: ${{SECRET_A}}, signing_alg: ES256, kid: k1,
            assertion_audience: https://id.test}}
  - name: csj
    match: csj.test
    auth: {{type: client_credentials, token_url: https://id.test/token, client_id: c, client_secret: ${{SECRET_A}},
            client_auth: client_secret_jwt}}
  - {{name: jb, match: jb.test, auth: {{type: jwt_bearer, token_url: https://id.test/token, assertion_file: token.txt}}}}
  - {{name: jbc, match: jbc.test, auth: {{type: jwt_bearer, token_url: https://id.test/token, assertion_command: [cat, t]}}}}
  - name: jbs
    match: jbs.test
    auth: {{type: jwt_bearer, token_url: https://id.test/token, signing_key: signing.pem,
            signing_key_password: ${{SECRET_A}}, assertion_claims: {{iss: sa@id.test, sub: u@id.test, scope: s}}}}
  - name: tx
    match: tx.test
    auth: {{type: token_exchange, token_url: https://sts.test/token, subject_token_file: token.txt,
            subject_token_type: jwt, requested_token_type: access_token, audience: a, resource: https://r.test,
            scope: s}}
  - {{name: txc, match: txc.test, auth: {{type: token_exchange, token_url: https://sts.test/token,
                                         subject_token_command: [cat, t]}}}}
  - {{name: txr, match: txr.test, auth: {{type: token_exchange, token_url: https://sts.test/token, subject_route: cc}}}}
"""


def _signing_key_pem(password: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    enc = serialization.BestAvailableEncryption(password)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _load_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> config.Config:
    for name in ("ca.pem", "ca-key.pem", "token.txt"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "signing.pem").write_bytes(_signing_key_pem(b"s3cret-value-for-docs"))
    TestCA().issue(tmp_path, "client", common_name="docs", password="key-password-for-docs")
    monkeypatch.setenv("KEY_PASSWORD", "key-password-for-docs")
    from joserfc.jwk import ECKey

    (tmp_path / "dpop.pem").write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    (tmp_path / "dpop.pem").chmod(0o600)
    monkeypatch.setenv("ADMIN_TOKEN", "a" * 32)
    monkeypatch.setenv("SECRET_A", "s3cret-value-for-docs")
    monkeypatch.setenv("PROXY_USER", "proxy-user")
    monkeypatch.setenv("BWS_TOKEN", BWS_TOKEN)
    monkeypatch.setenv("REDIS_PASSWORD", "redis-password-for-docs")
    monkeypatch.setenv("STORE_KEY", "c3RvcmUta2V5LWZvci1kb2NzLTMyLWJ5dGVzLWxvbmch")
    (tmp_path / "routes.yaml").write_text(EVERY_KEY.replace("STATE", str(tmp_path / "state")))
    return config.load(tmp_path / "routes.yaml")


def test_every_key_the_parser_accepts_is_in_the_configuration_manual(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    yamlreader.KEYS.clear()
    cfg = _load_every_key(tmp_path, monkeypatch)
    # The file exercised every grant type and every block, so the registry holds every key.
    assert {r.auth.type_name for r in cfg.routes} == set(REGISTRY)
    assert cfg.admin and cfg.proxy_auth and cfg.destinations and cfg.bws
    keys = set(yamlreader.KEYS)
    assert "routes[].auth.type" in keys and "proxy_auth.users.*.hash" in keys
    manual = (ROOT / "docs" / "configuration.md").read_text()
    named = set(re.findall(r"`([^`\s]+)`", manual))
    assert sorted(keys - named) == [], "docs/configuration.md does not name these keys (in backticks)"


def test_the_registry_names_a_key_the_parser_refuses_nowhere(tmp_path: Path) -> None:
    """A key nobody reads is an error, not a registered key: the registry lists what is accepted."""
    yamlreader.KEYS.clear()
    (tmp_path / "routes.yaml").write_text("routes: [{name: a, match: a.test, auth: {type: basic, user: u}}]\n")
    with pytest.raises(config.ConfigError):
        config.load(tmp_path / "routes.yaml")
    assert "routes[].auth.user" not in yamlreader.KEYS
    assert "routes[].auth.username" in yamlreader.KEYS


def test_each_grant_type_has_its_example_in_the_grants_page() -> None:
    page = (ROOT / "docs" / "grants.md").read_text()
    for name in REGISTRY:
        assert f"\n## {name}\n" in page, name
        assert f"type: {name}" in page, name


def test_the_commands_page_embeds_each_commands_current_help() -> None:
    """docs/commands.md is what scripts/docs.py makes of it: run the script when this fails."""
    current = (ROOT / "docs" / "commands.md").read_text()
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docs.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert (ROOT / "docs" / "commands.md").read_text() == current  # --check never writes
    shown = set(re.findall(r"<!-- help: ([a-z-]+) -->", current))
    # Every command `authproxy --help` lists has its own block.
    top = current.split("<!-- help: authproxy -->")[1].split("<!-- /help -->")[0]
    listed = set(re.findall(r"^    ([a-z][a-z-]+)", top, re.M))
    assert "run" in listed and listed | {"authproxy"} == shown


def test_the_stale_check_fails_on_a_changed_help_block(tmp_path: Path) -> None:
    """The check is not vacuous: an edited block is reported with a diff."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import docs as script
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    current = (ROOT / "docs" / "commands.md").read_text()
    stale = current.replace("route table (default ./routes.yaml)", "route table")
    assert stale != current
    assert script.generate(stale) == current


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = []
    for doc in _doc_files():
        text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
        for m in _LINK.finditer(text):
            target = m.group(1) or m.group(2)
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_the_link_check_sees_a_broken_anchor() -> None:
    assert "grant-keys" in _anchors(ROOT / "docs" / "configuration.md")
    assert "no-such-heading" not in _anchors(ROOT / "docs" / "configuration.md")


def test_readme_is_a_front_door() -> None:
    """At most ~200 lines, the two commands first, and no history: the project speaks of itself only."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 210
    head = readme[: readme.index("\n## ")]
    assert "python3 -m pip install . && authproxy run" in head and "bash .ci/run" in head
    for doc in _doc_files():
        text = doc.read_text()
        found = re.findall(r"\b[Ss]ession \d|\b[Ii]ssue \d|#\d+\b(?!\d)", text)
        assert found == [], f"{doc.relative_to(ROOT)}: {found}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_readme_walkthrough_as_written(tmp_path: Path) -> None:
    """The five minutes, run as a new user would: only the two ports differ (the test's are free ones)."""
    readme = (ROOT / "README.md").read_text()
    part = readme[readme.index("## Five minutes") : readme.index("\n## Commands")]
    blocks = re.findall(r"^```(\w+)\n(.*?)^```$", part, re.M | re.S)
    assert [lang for lang, _ in blocks] == ["sh", "yaml", "sh", "text"]
    (_, setup), (_, routes), (_, commands), (_, shown) = blocks
    echo_port = _free_port()
    assert setup.splitlines()[-1] == "python3 echo.py &" and "8000" in setup and "8000" in routes
    subprocess.run(["sh", "-ec", "\n".join(setup.splitlines()[:-1])], cwd=tmp_path, check=True)
    work, home = tmp_path / "try-authproxy", tmp_path / "home"
    home.mkdir()
    echo_py = work / "echo.py"
    echo_py.write_text(echo_py.read_text().replace("8000", str(echo_port)))
    (work / "routes.yaml").write_text(routes.replace("8000", str(echo_port)))
    lines = commands.splitlines()
    key = re.fullmatch(r"export ECHO_KEY=(\S+)", lines[0])
    assert key is not None and lines[2].startswith("authproxy run &")
    echo = subprocess.Popen([sys.executable, str(echo_py)], cwd=work, stderr=subprocess.DEVNULL)
    proxy = start_proxy(work / "routes.yaml", env={"ECHO_KEY": key.group(1), "HOME": str(home)})
    try:
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.endswith(("_BUNDLE", "_FILE"))}
        env.update(HOME=str(home), PYTHONPATH=str(ROOT), AP_PYTHON=sys.executable, AP_PORT=str(proxy.port))
        # `authproxy` is this checkout; `env` is told the test's port, as `--listen` would.
        prelude = (
            'set -e\nauthproxy() { if [ "$1" = env ]; then "$AP_PYTHON" -m authproxy "$@" --listen "127.0.0.1:$AP_PORT";'
            ' else "$AP_PYTHON" -m authproxy "$@"; fi; }\n'
        )
        script = prelude + "\n".join([lines[0], lines[1], *lines[3:]])
        out = subprocess.run(["sh", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    finally:
        echo.kill()
        echo.wait()
        assert proxy.stop() == 0, proxy.stderr_text()
    assert out.returncode == 0, out.stderr
    answers = out.stdout.split("GET /hello\n")[1:]
    assert len(answers) == 2, out.stdout  # plain and intercepted
    for answer in answers:
        for line in shown.replace("8000", str(echo_port)).splitlines()[1:]:
            if not line.startswith(("User-Agent", "Via")):  # curl's version; the proxy's random pseudonym
                assert line in answer, (line, answer)
    assert "${ECHO_KEY}" in out.stdout  # check shows the key by its source
    for mode in ("plain echo.test:80", "intercept echo.test:443"):
        assert any(f"GET {mode} /hello route=echo status=200" in x for x in proxy.err_lines), proxy.err_lines
    assert_no_secrets(proxy.err_lines, [key.group(1)])
