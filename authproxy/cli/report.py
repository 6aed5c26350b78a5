"""``authproxy check``, ``token`` and ``status``: commands that read a config, or a running proxy, and report.

What they print of the config passes through the redactor; only ``token --show`` prints a credential, on purpose.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from authproxy.cli.usage import UsageError, route_named
from authproxy.config import Route, load, parse_listen
from authproxy.config.parents import describe as describe_parents
from authproxy.credentials.tlsclient import Trust, tls_view
from authproxy.errors import ProxyError
from authproxy.net.destinations import Policy
from authproxy.net.hosts import HostError, format_authority, is_loopback
from authproxy.runtime import Runtime
from authproxy.secrecy.redact import redact


def cmd_check(path: str, strict: bool) -> int:
    cfg = load(path)
    for w in cfg.warnings:
        print(redact(str(w)), file=sys.stderr)
    rows = [("NAME", "MODE", "MATCH", "TYPE", "SECRETS")]
    for r in cfg.routes:
        parts = [r.match.text] if r.match else []
        if r.gateway:
            parts.append(f"{r.gateway} -> {_upstream_text(r)}")
        match = " ".join(parts)
        secrets = " ".join(f"{k}={v}" for k, v in r.auth.sources()) or "-"
        rows.append((r.name, r.mode, match, r.auth.type_name, secrets))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(redact("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=False)) + "  " + row[4]))
    # On stderr, so that stdout stays one line per route.
    # A route that trusts the system roots alone and presents no certificate goes unsaid.
    for r in cfg.routes:
        if cfg.extra_ca_file or r.ca_file or not r.verify or r.client_cert or r.auth.client_cert():
            print(redact(_tls_line(r, cfg.extra_ca_file)), file=sys.stderr)
    beyond = not is_loopback(cfg.listen_host)
    policy = Policy.build(cfg.destinations, beyond_loopback=beyond)
    given = cfg.destinations is not None and cfg.destinations.deny is not None
    why = (
        "destinations.deny as written; link_local is always denied"
        if given
        else f"the defaults for listening on {cfg.listen}, {'beyond' if beyond else 'on'} loopback"
    )
    print(f"destinations for unmatched traffic: {policy.describe()} ({why}).", file=sys.stderr)
    if cfg.token_store is not None:  # not connected to here: `run` does that before it listens
        ts = cfg.token_store
        print(redact(f"token store: {ts.where}, keys prefixed {ts.prefix}, shared by every replica."), file=sys.stderr)
    parents = describe_parents(cfg)
    if parents is not None:
        print(redact(parents), file=sys.stderr)
    return 2 if strict and cfg.warnings else 0


def _tls_line(r: Route, extra_ca: Path | None) -> str:
    """Which trust store the route's TLS uses, and the client certificates it presents (never a key)."""
    view = tls_view(Trust(extra_ca, r.ca_file, r.verify), r.client_cert, r.auth.client_cert())
    clear = r.upstream is not None and r.upstream.scheme == "http"
    line = f"tls {r.name}: " + ("none to the upstream (http://)" if clear else f"trusts {view['trust']}")
    if view["client_cert"]:
        line += f"; presents {view['client_cert']}"
    if view["token_client_cert"] and view["token_client_cert"] != view["client_cert"]:
        line += f"; to its token endpoint {view['token_client_cert']}"
    return line + "."


def _upstream_text(route: object) -> str:
    up = getattr(route, "upstream", None)
    if up is None:
        return "-"
    return f"{up.scheme}://{up.host}:{up.port}{up.path}"


def cmd_token(path: str, name: str, show: bool) -> int:
    cfg = load(path)
    route = route_named(cfg, name, path)

    async def obtain() -> list[str]:
        rt = Runtime(cfg)
        try:
            cred, _ = await rt.tokens.get(route)
        finally:
            await rt.close()
        # --show prints the credential on purpose; everything else is redacted.
        return cred.shown_lines() if show else [redact(line) for line in cred.masked_lines()]

    try:
        lines = asyncio.run(obtain())
    except ProxyError as err:
        print(redact(f"error: route {name}: {err.detail}"), file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


def cmd_status(path: str, admin: str | None) -> int:
    from authproxy.admin.statusclient import StatusRefused, fetch_status, status_table  # only this command

    # The file gives the token (and the address, unless --admin names one); with --admin, only if it exists.
    cfg = load(path) if admin is None or Path(path).exists() else None
    if admin is not None:
        try:
            where = parse_listen(admin)
        except HostError as exc:
            raise UsageError(f"--admin: {exc}.") from None
    elif cfg is None or cfg.admin is None:
        raise UsageError(f"{path} has no `admin:` listener to ask; set `admin: 127.0.0.1:9090` and restart.")
    else:
        where = cfg.admin
    token = cfg.admin_token if cfg is not None else None
    at = format_authority(*where)
    try:
        data = fetch_status(*where, token=None if token is None else token.reveal())
    except StatusRefused as exc:
        print(f"error: the admin listener at {at} {_refused(exc.status, path, token is not None)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach the admin listener at {at} ({exc}).", file=sys.stderr)
        return 1
    # Redacted by the proxy already; and again here, with what this process knows of the file.
    sys.stdout.write(redact(status_table(data)))
    return 0


def _refused(status: int, path: str, sent_token: bool) -> str:
    """Why the admin listener said no, as the rest of a sentence."""
    if status == 401 and not sent_token:
        return f"wants its token, and {path} has none (set `admin.token` to the one the proxy runs with)."
    if status == 401:
        return f"refused the token in {path} (`admin.token`): it is not the one the proxy runs with."
    if status == 421:
        return "refused the Host it was asked by; ask it by its own address (--admin HOST:PORT)."
    return f"answered {status}."
