"""Who may use the proxy (`proxy_auth`) and what a route's credential may be used for (`allow`).

Proxy authentication is HTTP Basic in `Proxy-Authorization` (RFC 9110 §11.7.1)
checked against bcrypt hashes. bcrypt is slow on purpose (~50-250 ms a check),
so a verified header is remembered by a keyed digest for a while: a keep-alive
client pays once, not per request. The digest key is random per process, so
the cache holds nothing a memory dump could replay elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass

from cachetools import TTLCache

from authproxy.errors import Denied, ProxyAuthRequired, one_line
from authproxy.net.hosts import PathError, normalize_path, prefix_matches, rule_path
from authproxy.schema.yamlreader import Section

_METHOD_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ-")
# bcrypt reads at most 72 bytes of a password (bcrypt 5 refuses more), so no
# longer password can be configured, and none can be checked.
MAX_PASSWORD_BYTES = 72
# Headers in which servers take the method instead of the request line's
# (Express's method-override, Rack, Laravel, Symfony, Google's APIs): to an
# allow list each one is the method. Compared with `_` read as `-`, since
# CGI-style servers (PHP, WSGI) fold both into the same variable name.
_METHOD_HEADERS = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})
# Likewise the path: IIS's URL Rewrite and Symfony (before 5.x) route on these instead of the request line's.
_PATH_HEADERS = frozenset({b"x-original-url", b"x-rewrite-url"})


@dataclass(frozen=True, slots=True)
class User:
    name: str
    hash: bytes
    routes: frozenset[str] | None  # None: every route


@dataclass(frozen=True, slots=True)
class ProxyAuth:
    realm: str
    users: tuple[User, ...]


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One `allow` entry: a request passes when its method and path both fit."""

    methods: frozenset[str] | None  # None: any method
    paths: tuple[str, ...] | None  # None: any path; prefixes end at a `/`


def parse_proxy_auth(top: Section) -> ProxyAuth | None:
    sec = top.section("proxy_auth")
    if sec is None:
        return None
    realm = sec.text("realm", default="authproxy") or "authproxy"
    if '"' in realm or "\\" in realm:
        sec.error("realm", 'must not contain `"` or `\\`')
    users: list[User] = []
    block = sec.section("users", required=True)
    if block is not None:
        for name in block.names():
            if ":" in name or not name:
                block.error(name, "a user name cannot be empty or contain `:` (RFC 7617)")
            user = _user(block, name)
            if user is not None:
                users.append(user)
        if not users and not block.problems.errors:
            sec.error("users", "give at least one user")
    sec.finish()
    return ProxyAuth(realm, tuple(users))


def _user(block: Section, name: str) -> User | None:
    routes: frozenset[str] | None = None
    if block.is_mapping(name):
        sub = block.section(name)
        assert sub is not None
        hashed = sub.text("hash", required=True)
        listed = sub.str_list("routes")
        routes = frozenset(listed) if listed is not None else None
        sub.finish()
    else:
        hashed = block.text(name, required=True)
    if hashed is None:
        return None
    if not hashed.startswith(("$2a$", "$2b$", "$2y$")) or len(hashed) != 60:
        block.error(name, "must be a bcrypt hash (make one with `authproxy hash-password`)")
        return None
    return User(name, hashed.encode(), routes)


def parse_allow(sec: Section) -> tuple[AllowRule, ...] | None:
    rules = []
    if not sec.has("allow"):
        return None
    found = False
    for rule_sec in sec.sections("allow"):
        found = True
        methods = rule_sec.str_list("methods")
        paths = rule_sec.str_list("paths")
        if methods is not None:
            methods = [m.upper() for m in methods]
            bad = [m for m in methods if not m or not set(m) <= _METHOD_OK]
            if bad:
                rule_sec.error("methods", f"`{bad[0]}` is not an HTTP method")
        norm_paths = None
        if paths is not None:
            norm_paths = []
            for p in paths:
                try:
                    norm_paths.append(normalize_path(p) if p.startswith("/") else _bad_path(p))
                except PathError as exc:
                    rule_sec.error("paths", f"`{p}`: {exc}")
        if methods is None and paths is None:
            rule_sec.error(None, "an allow rule needs `methods`, `paths`, or both")
        rule_sec.finish()
        rules.append(
            AllowRule(
                frozenset(methods) if methods is not None else None,
                tuple(norm_paths) if norm_paths is not None else None,
            )
        )
    if not found:
        sec.error("allow", "give a list of rules, e.g. [{methods: [GET, HEAD], paths: [/v1/]}]")
    return tuple(rules)


def _bad_path(p: str) -> str:
    raise PathError("a path prefix starts with `/`")


def check_allowed(
    rules: tuple[AllowRule, ...] | None, route: str, method: str, path: str, headers: list[tuple[bytes, bytes]]
) -> None:
    """403 unless some rule admits ``method`` on ``path`` (query already cut off), and each override too.

    A path no rule can judge (an encoded `/`, a dot segment with parameters)
    is the 400 that route prefixes give too (``rule_path``).
    """
    if rules is None:
        return
    norm = rule_path(path)
    if not _admits(rules, method, norm):
        raise Denied(f"{method} {path[:100]} is outside route {route}'s allow list.", route)
    methods, paths = _overrides(headers)
    if not methods and not paths:
        return
    # The upstream may obey any one of them, with the request line's method or path for the other half.
    for m_header, m in [("", method), *methods]:
        for p_header, p in [("", path), *paths]:
            if not (m_header or p_header):
                continue
            if not p.startswith("/") or not _admits(rules, m, rule_path(p)):
                header = one_line(m_header or p_header)[:40]
                raise Denied(
                    f"{header} asks for {one_line(m)[:20]} {one_line(p)[:100]}, "
                    f"which is outside route {route}'s allow list.",
                    route,
                )


def _overrides(headers: list[tuple[bytes, bytes]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(header, method) and (header, path) for every override a server might obey instead of the request line."""
    methods: list[tuple[str, str]] = []
    paths: list[tuple[str, str]] = []
    for name, value in headers:
        key = name.lower().replace(b"_", b"-")
        if key in _METHOD_HEADERS:
            # Every element of every copy: servers differ in which one they take
            # (method-override the first of a list, others the last, or the last copy).
            for part in value.split(b","):
                if m := part.strip().decode("latin-1").upper():
                    methods.append((name.decode("latin-1"), m))
        elif key in _PATH_HEADERS and (p := value.strip().decode("latin-1").partition("?")[0]):
            paths.append((name.decode("latin-1"), p))
    return methods, paths


def _admits(rules: tuple[AllowRule, ...], method: str, norm: str) -> bool:
    for rule in rules:
        if rule.methods is not None and method not in rule.methods:
            continue
        if rule.paths is not None and not any(prefix_matches(p, norm) for p in rule.paths):
            continue
        return True
    return False


class Authenticator:
    """Checks `Proxy-Authorization`; remembers verified headers briefly."""

    def __init__(self, conf: ProxyAuth) -> None:
        self.conf = conf
        self._users = {u.name: u for u in conf.users}
        self._key = os.urandom(32)
        self._ok: TTLCache[bytes, str] = TTLCache(maxsize=4096, ttl=300)
        import bcrypt  # only a proxy with `proxy_auth` loads it (the shipped routes.yaml has none)

        self._checkpw = bcrypt.checkpw
        # A hash to compare against for unknown users, so timing does not tell
        # which user names exist.
        self._decoy = bcrypt.hashpw(b"decoy", bcrypt.gensalt(rounds=10))

    @property
    def challenge(self) -> bytes:
        return f'Basic realm="{self.conf.realm}", charset="UTF-8"'.encode()

    def _refuse(self, detail: str) -> ProxyAuthRequired:
        err = ProxyAuthRequired(detail)
        err.challenge = self.challenge
        return err

    async def check(self, headers: list[tuple[bytes, bytes]]) -> User:
        value = next((v for n, v in headers if n.lower() == b"proxy-authorization"), None)
        if value is None:
            raise self._refuse("this proxy requires authentication (Proxy-Authorization: Basic).")
        digest = hmac.new(self._key, value, hashlib.sha256).digest()
        known = self._ok.get(digest)
        if known is not None:
            return self._users[known]
        scheme, _, b64 = value.partition(b" ")
        try:
            if scheme.lower() != b"basic":
                raise ValueError
            name, sep, password = base64.b64decode(b64.strip(), validate=True).decode("utf-8").partition(":")
            if not sep:
                raise ValueError
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise self._refuse("the Proxy-Authorization header is not valid Basic credentials.") from None
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            # No configured password is this long (hash-password refuses it), and bcrypt would raise.
            raise self._refuse(
                f"the proxy password is longer than {MAX_PASSWORD_BYTES} bytes, which bcrypt cannot check."
            )
        user = self._users.get(name)
        hashed = user.hash if user is not None else self._decoy
        ok = await asyncio.to_thread(self._checkpw, password.encode(), hashed)
        if not ok or user is None:
            raise self._refuse("wrong proxy user name or password.")
        self._ok[digest] = name
        return user


def check_user_route(user: User | None, route: str | None) -> None:
    if user is None or user.routes is None or route is None:
        return
    if route not in user.routes:
        raise Denied(f"proxy user {user.name} may not use route {route}.", route)


def hash_password(password: str) -> str:
    """The bcrypt hash for `proxy_auth`; ValueError for a password bcrypt cannot take whole."""
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes, the most bcrypt can check")
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=12)).decode()
