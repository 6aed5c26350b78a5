"""``authproxy hash-password``, ``login``, ``ca`` and ``env``: what a client or credential needs first.

Each prepares something before the proxy serves: a ``proxy_auth`` password
hash, a stored refresh token, the CA bundle clients trust, the variables that
point common tools at the proxy.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from authproxy.access import hash_password
from authproxy.cli.envvars import default_no_proxy, no_proxy_note, placeholder_env, render, variables
from authproxy.cli.usage import UsageError, route_named
from authproxy.config import Config, load, parse_listen
from authproxy.disk.ca import BUNDLE_NAME, CAFiles, LocalCA, ensure_ca
from authproxy.disk.state import ensure_dir
from authproxy.errors import ProxyError
from authproxy.net.hosts import HostError, format_authority
from authproxy.ops.metrics import Metrics
from authproxy.placeholders.index import value_of
from authproxy.placeholders.shared import shared_generated
from authproxy.secrecy.redact import redact
from authproxy.tokens.stores import open_store


def cmd_hash_password() -> int:
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("error: the two passwords differ.", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("error: an empty password cannot be hashed.", file=sys.stderr)
        return 2
    try:
        hashed = hash_password(password)
    except ValueError as exc:
        print(f"error: {exc}; choose a shorter one.", file=sys.stderr)
        return 2
    print(hashed)
    return 0


def cmd_login(path: str, name: str, open_browser: bool, timeout: float) -> int:
    from authproxy.config.parents import Parents
    from authproxy.tokens.login import LoginError, login  # with aiohttp: only this command needs it

    cfg = load(path)
    route = route_named(cfg, name, path)

    def say(text: str) -> None:
        print(redact(text), flush=True)

    async def run() -> str:
        store = open_store(cfg, Metrics())  # the file store, or the replicas' shared one
        try:
            return await login(
                route,
                store,
                cfg.timeouts.token_fetch,
                wait=timeout,
                open_browser=open_browser,
                say=say,
                via=lambda url: Parents.of(cfg).for_url(route, url),
                extra_ca=cfg.extra_ca_file,
            )
        finally:
            await store.close()

    try:
        where = asyncio.run(run())
    except (LoginError, ProxyError) as exc:
        detail = exc.detail if isinstance(exc, ProxyError) else str(exc)
        print(redact(f"error: route {name}: {detail}"), file=sys.stderr)
        return 1
    print(redact(f"Logged in: route {name}'s refresh token is stored in {where}."))
    return 0


def _bundle(cfg: Config) -> tuple[CAFiles, Path, Path | None]:
    files = ensure_ca(cfg.state_dir, cfg.ca_cert, cfg.ca_key)
    ca = LocalCA(files)
    try:
        bundle = ensure_dir(cfg.state_dir) / BUNDLE_NAME
        roots = ca.write_bundle(bundle, cfg.extra_ca_file)
    finally:
        ca.close()
    return files, bundle, roots


def cmd_ca(path: str) -> int:
    cfg = load(path)
    files, bundle, roots = _bundle(cfg)
    cert = files.cert
    print(cert)
    print(
        f"""
This CA signs the certificates authproxy presents for the hosts your routes match.
Trust it in one of these ways:

  In this shell, for curl, git, pip, requests, httpx, Node, npm, cargo, the AWS CLI:
    eval "$(authproxy env -c {path})"
  (points each tool at {bundle},
   which holds the system roots{f" from {roots}" if roots else ""} plus this CA)

  System-wide on Debian/Ubuntu:
    sudo cp {cert} /usr/local/share/ca-certificates/authproxy.crt && sudo update-ca-certificates
  On Fedora/RHEL:
    sudo cp {cert} /etc/pki/ca-trust/source/anchors/authproxy.pem && sudo update-ca-trust
  On macOS (Go programs and Safari read only the keychain):
    sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {cert}
  For Java (it ignores all of the above), a truststore of its own, leaving the JDK's untouched
  (copy the JDK's lib/security/cacerts to authproxy.truststore first to keep its roots too):
    keytool -importcert -noprompt -alias authproxy -file {cert} -keystore authproxy.truststore -storepass changeit
    java -Djavax.net.ssl.trustStore=authproxy.truststore -Djavax.net.ssl.trustStorePassword=changeit ...

The key ({files.key}) can sign a certificate for any site: keep it private."""
    )
    return 0


def cmd_env(path: str, shell: str, no_proxy: str | None, listen: str | None, placeholders: bool = False) -> int:
    cfg = load(path)
    host, port = cfg.listen_host, cfg.listen_port
    if listen:
        try:
            host, port = parse_listen(listen)
        except HostError as exc:
            raise UsageError(f"--listen: {exc}.") from None
    _, bundle, _ = _bundle(cfg)
    url = f"http://{format_authority(host, port)}"
    notes: list[str] = []
    if no_proxy is None:
        no_proxy, local = default_no_proxy(cfg.routes)
        notes += [no_proxy_note(local)] if local else []
    pairs = variables(url, bundle, no_proxy)
    if placeholders:
        # Made now if generated and new: the same file the proxy reads, so both say the same value.
        try:
            shared = _shared_placeholders(cfg)
        except (ProxyError, ValueError) as exc:
            print(redact(f"error: the placeholders cannot be had from the token store: {exc}"), file=sys.stderr)
            return 1
        pairs += [(placeholder_env(r), v) for r in cfg.routes if (v := value_of(r, cfg.state_dir, True, shared))]
    sys.stdout.write(render(pairs, "sh" if shell in ("bash", "zsh") else shell, notes))
    return 0


def _shared_placeholders(cfg: Config) -> dict[str, str] | None:
    """With a shared token store, the generated placeholders every replica swaps: read (or made) there."""
    if cfg.token_store is None:
        return None

    async def read() -> dict[str, str] | None:
        store = open_store(cfg, Metrics())
        try:
            return await shared_generated(cfg, store)
        finally:
            await store.close()

    return asyncio.run(read())
