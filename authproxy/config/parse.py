"""routes.yaml → a ``Config``: the file read and its top-level keys checked.

Every problem is collected (``problems.Problems``) so that one run of
``authproxy check`` shows them all.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from authproxy.access import parse_proxy_auth
from authproxy.config.audit import parse_audit
from authproxy.config.model import DEFAULT_LISTEN, DEFAULT_STATE_DIR, BwsSettings, Config, Limits, Timeouts
from authproxy.config.parents import Parents, loops_to_listener, parse_parents
from authproxy.config.route import parse_routes
from authproxy.config.storeconf import parse_token_store
from authproxy.credentials.grants.bws import check_access_token, parse_endpoints
from authproxy.net.destinations import parse_destinations
from authproxy.net.hosts import HostError, normalize_host, parse_port, split_hostport
from authproxy.schema.files import readable_file
from authproxy.schema.problems import ConfigError, Problems
from authproxy.schema.yamlreader import Document, Section
from authproxy.secrecy.redact import REDACTOR
from authproxy.secrecy.secrets import Secret, secrets_in


def parse_listen(text: str) -> tuple[str, int]:
    host, port = split_hostport(text.strip())
    if port is None:
        raise HostError(f"`{text}` needs a port (HOST:PORT)")
    return normalize_host(host or "127.0.0.1"), int(port) if port == "0" else parse_port(port)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate ``path``; raise ``ConfigError`` listing every error."""
    p = Path(path)
    problems = Problems(str(p))
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        problems.error("", None, f"cannot read the file ({exc.strerror or exc}).")
        raise ConfigError(problems.items) from None
    except UnicodeDecodeError as exc:
        line = text_line(p, exc.start)
        problems.error("", line, "the file is not valid UTF-8.")
        raise ConfigError(problems.items) from None
    doc = Document(problems, p.parent.resolve())
    try:
        node = yaml.compose(doc.protect(text), Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or "not valid YAML"
        hint = ""
        if "alphabetic or numeric" in str(reason) or "alias" in str(reason):
            hint = " (a value that starts with `*` must be quoted: '*.example.com')"
        problems.error("", line, f"not valid YAML: {reason}{hint}.")
        raise ConfigError(problems.items) from None
    if node is None:
        problems.error("", None, "the file is empty; it needs at least `routes:`.")
        raise ConfigError(problems.items)
    if not isinstance(node, yaml.MappingNode):
        problems.error("", node.start_mark.line + 1, "the top level must be a mapping.")
        raise ConfigError(problems.items)
    cfg = _parse(Section(node, "", doc), p)
    if problems.errors:
        raise ConfigError(problems.items)
    # From now on no output of this process shows them: every secret read, and every Secret the config holds.
    REDACTOR.learn_config([*doc.secrets, *(s.reveal() for s in secrets_in(cfg))])
    return cfg


def text_line(path: Path, offset: int) -> int | None:
    try:
        return path.read_bytes()[:offset].count(b"\n") + 1
    except OSError:
        return None


def _parse(top: Section, file: Path) -> Config:
    listen_text = top.text("listen", default=DEFAULT_LISTEN) or DEFAULT_LISTEN
    try:
        lhost, lport = parse_listen(listen_text)
    except HostError as exc:
        top.error("listen", str(exc))
        lhost, lport = "127.0.0.1", 8080
    state_dir = Path(top.text("state_dir", default=DEFAULT_STATE_DIR) or DEFAULT_STATE_DIR)
    unmatched = top.choice("unmatched", ("tunnel", "deny"), "tunnel")
    ca_cert = readable_file(top, "ca_cert")
    ca_key = readable_file(top, "ca_key")
    if top.has("ca_cert") != top.has("ca_key"):
        top.error("ca_key" if top.has("ca_cert") else "ca_cert", "give both `ca_cert` and `ca_key`, or neither")
    extra_ca_file = readable_file(top, "extra_ca_file")
    limits = _limits(top.section("limits"))
    timeouts = _timeouts(top.section("timeouts"))
    parent, no_parent = parse_parents(top)
    if parent is not None and loops_to_listener(parent, lhost, lport):
        top.error("upstream_proxy", f"{parent.authority} is this proxy's own `listen` address (a proxy loop)")
    bws = _bws(top, timeouts, extra_ca_file, Parents(parent, no_parent))
    routes = parse_routes(top)
    admin, admin_token, admin_hosts = _admin(top)
    proxy_auth = parse_proxy_auth(top)
    if proxy_auth is not None:
        known = {r.name for r in routes}
        for user in proxy_auth.users:
            for name in sorted((user.routes or frozenset()) - known):
                top.error("proxy_auth", f"user {user.name} names route `{name}`, which does not exist")
    destinations = parse_destinations(top)
    token_store = parse_token_store(top)
    audit = parse_audit(top)
    top.finish()
    return Config(
        file=file,
        listen_host=lhost,
        listen_port=lport,
        state_dir=state_dir.expanduser(),
        unmatched=unmatched,
        limits=limits,
        timeouts=timeouts,
        routes=routes,
        ca_cert=ca_cert,
        ca_key=ca_key,
        extra_ca_file=extra_ca_file,
        bws=bws,
        admin=admin,
        proxy_auth=proxy_auth,
        warnings=tuple(top.problems.warnings),
        admin_token=admin_token,
        admin_hosts=admin_hosts,
        destinations=destinations,
        token_store=token_store,
        upstream_proxy=parent,
        no_upstream_proxy=no_parent,
        audit=audit,
    )


def _admin(top: Section) -> tuple[tuple[str, int] | None, Secret | None, tuple[str, ...]]:
    """``admin: HOST:PORT``, or ``admin: {listen: HOST:PORT, token: ${VAR}, hosts: [NAME, ...]}``."""
    if not top.is_mapping("admin"):
        text = top.text("admin")
        return (None if text is None else _admin_listen(top, "admin", text)), None, ()
    sec = top.section("admin")
    if sec is None:
        return None, None, ()
    text = sec.text("listen", required=True)
    listen = None if text is None else _admin_listen(sec, "listen", text)
    token = _admin_token(sec)
    hosts = []
    for i, name in enumerate(sec.str_list("hosts") or []):
        try:
            hosts.append(normalize_host(name))
        except HostError as exc:
            sec.error("hosts", f"item {i}: {exc} (a name or address, without port or `*`)")
    sec.finish()
    return listen, token, tuple(hosts)


def _admin_listen(sec: Section, key: str, text: str) -> tuple[str, int] | None:
    try:
        return parse_listen(text)
    except HostError as exc:
        sec.error(key, str(exc))
        return None


# RFC 6750 §2.1: what a Bearer credential may be made of.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def _admin_token(sec: Section) -> Secret | None:
    """``admin.token``: it must resolve now (an unset variable would leave the listener open)."""
    text = sec.text("token")
    if text is None:
        return None
    source = sec.source("token") or ""
    if not text:
        sec.error("token", "is empty; set it to a random string, e.g. from `openssl rand -hex 32`")
        return None
    if not _B64TOKEN.fullmatch(text):
        sec.error("token", "must be letters, digits and `-._~+/` (RFC 6750 §2.1), e.g. from `openssl rand -hex 32`")
        return None
    token = Secret(text, source)
    if token.is_literal:
        sec.warn("token", "a literal secret in the file; prefer ${VAR} or ${file:PATH}")
    if len(text) < 16:
        sec.warn("token", "shorter than 16 characters; use a random one, e.g. from `openssl rand -hex 32`")
    return token


def _bws(top: Section, timeouts: Timeouts, extra_ca_file: Path | None, parents: Parents) -> BwsSettings | None:
    """Read the `bws:` block and let ``${bws:SECRET_ID}`` use it: one login per load, on first use."""
    sec = top.section("bws")
    if sec is None:
        return None
    # Imported only for a config with a `bws:` block: it loads PyJWT and cryptography's ciphers.
    from authproxy.credentials.bws import Resolver, SyncClient, parse_access_token

    token = sec.secret("access_token", required=True) or Secret("", "", ("bws.access_token",))
    check_access_token(sec, "access_token", token)
    endpoints = parse_endpoints(sec)
    sec.finish()
    if endpoints is None:
        top.doc.bws = Resolver(None, "the top-level `bws:` block has errors")
        return None
    try:
        client = SyncClient(
            parse_access_token(token.reveal()),
            *endpoints,
            timeouts.token_fetch,
            extra_ca_file,
            via=lambda url: parents.for_url(None, url),
        )
        top.doc.bws = Resolver(client)
    except ValueError:
        why = token.missing[0] if token.missing else "the `bws.access_token` is not valid"
        top.doc.bws = Resolver(None, why)
    return BwsSettings(token, *endpoints)


def per_client_default(max_connections: int) -> int:
    """Half the connection limit, rounded up: one client address can never hold every slot,
    so another client always finds half of them, yet a single client (on a laptop, every
    client is 127.0.0.1) keeps 512 of the default 1024, more than a browser's whole pool."""
    return (max_connections + 1) // 2


def _limits(sec: Section | None) -> Limits:
    if sec is None:
        return Limits()
    d = Limits()
    max_connections = sec.integer("max_connections", d.max_connections, minimum=1)
    out = Limits(
        max_header_bytes=sec.integer("max_header_bytes", d.max_header_bytes, minimum=1024),
        max_connections=max_connections,
        max_connections_per_client=sec.integer(
            "max_connections_per_client", per_client_default(max_connections), minimum=1
        ),
        replay_body=sec.integer("replay_body", d.replay_body, minimum=0),
        max_body_chunk=sec.integer("max_body_chunk", d.max_body_chunk, minimum=1024),
        max_headers=sec.integer("max_headers", d.max_headers, minimum=1),
        max_request_line=sec.integer("max_request_line", d.max_request_line, minimum=64),
    )
    sec.finish()
    return out


def _timeouts(sec: Section | None) -> Timeouts:
    if sec is None:
        return Timeouts()
    d = Timeouts()
    vals = {k: sec.number(k, getattr(d, k), minimum=0.001) for k in Timeouts.__dataclass_fields__}
    sec.finish()
    return Timeouts(**vals)
