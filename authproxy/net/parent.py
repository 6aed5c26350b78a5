"""The parent proxy (``upstream_proxy``): what it is, read from routes.yaml, and how the control plane uses it.

``upstream_proxy: http://USER:PASS@host:port`` names an HTTP proxy that
everything the proxy sends out goes through (the data plane dials it in
chain.py; aiohttp's requests get ``aiohttp_args``). Only ``http://``: the
proxy speaks to its parent in HTTP/1.1 (``CONNECT``, absolute-form
requests), as curl and every ``HTTPS_PROXY`` client do; a TLS connection to
the parent itself, SOCKS, Negotiate and NTLM are not spoken.

The user and password may be written literally (percent-encoded, as in any
URL) or come from references (``${VAR}``, ``${file:PATH}``), taken as they
are. The password is a ``Secret``, and so is the ``Proxy-Authorization``
value made of it (``Basic`` + Base64 of ``user:password``, RFC 7617, UTF-8):
``config.load`` hands both to the redactor, so neither shows in any output,
raw or encoded.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

from authproxy.errors import Denied, ProxyError, UpstreamProxyAuthFailed, UpstreamProxyError, UpstreamProxyTimeout
from authproxy.net.hosts import HostError, format_authority, normalize_host, parse_port, split_hostport
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.redact import MIN_ENCODED
from authproxy.secrecy.secrets import Secret, Value, interpolate

if TYPE_CHECKING:
    import aiohttp

# A route's ``upstream_proxy: direct``: none for this route, whatever the top level says.
DIRECT: Literal["direct"] = "direct"

_REF = re.compile(r"\$\$|\$\{[^}]*\}")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)


@dataclass(frozen=True, slots=True)
class Parent:
    """An HTTP proxy to go through, and the ``Proxy-Authorization`` value it gets (None: no credentials)."""

    host: str
    port: int
    user: Value | None = None
    password: Secret | None = None
    authorization: Secret | None = None
    shown: str = ""  # as written, the password by its reference (or ****): what `check` prints

    @property
    def authority(self) -> str:
        """``host:port``: the name every message gives the parent; never its credentials."""
        return format_authority(self.host, self.port)

    @property
    def header(self) -> tuple[bytes, bytes] | None:
        if self.authorization is None:
            return None
        return (b"Proxy-Authorization", self.authorization.reveal().encode("ascii"))

    def __repr__(self) -> str:
        return f"Parent({self.authority})"

    @property
    def on_loopback(self) -> bool:
        """On this host by its spelling (cntlm or px on 127.0.0.1): clear text to it stays on this host."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def clear_text_refusal(parent: Parent, what: str) -> Denied:
    """A credential that may travel in clear text only on this host (the loopback exception), through a
    parent that is not on it: it would leave the host in clear text, so it is refused."""
    return Denied(
        f"{what} would travel in clear text through the parent proxy {parent.authority}, off this host; "
        "use https://, or `upstream_proxy: direct` on the route (or list the host in `no_upstream_proxy`)."
    )


def parse_upstream_proxy(sec: Section, key: str = "upstream_proxy", *, allow_direct: bool) -> Parent | str | None:
    """``key`` of ``sec``: a Parent, ``DIRECT`` (where ``allow_direct``), or None when absent or wrong."""
    text = sec.text(key)  # read and resolved once through the reader: unset variables are errors here
    if text is None:
        return None
    raw = (sec.source(key) or "").strip()
    if raw == DIRECT:
        if allow_direct:
            return DIRECT
        sec.error(key, "`direct` is a route's way to say no parent; at the top level leave `upstream_proxy` out")
        return None
    parsed = _parse(sec, key, raw)
    if isinstance(parsed, str):
        sec.error(key, parsed)
        return None
    return parsed


def _parse(sec: Section, key: str, raw: str) -> Parent | str:
    """The parent ``raw`` names (references unresolved), or why it names none."""
    refs: list[str] = []

    def hide(m: re.Match[str]) -> str:
        refs.append(m.group(0))
        return f"\x00{len(refs) - 1}\x00"

    masked = _REF.sub(hide, raw)
    m = _SCHEME.match(masked)
    if m is None:
        return "must be a URL such as http://USER:PASS@proxy.example:3128 (or `direct` on a route)"
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme != "http":
        return (
            f"`{scheme}://` parents are not supported: authproxy speaks to its parent in plain HTTP/1.1 "
            "(CONNECT and absolute-form requests); write http://host:port"
        )
    authority, _, tail = rest.partition("/")
    if tail.strip("/") or "?" in authority or "#" in authority:
        return "must be http://[USER:PASS@]host:port, without a path, query or fragment"
    userinfo, at, hostport = authority.rpartition("@")
    try:
        host_text, port_text = split_hostport(_unmask(hostport, refs, sec, key))
        if not port_text:
            raise HostError("give the parent's port (http://host:3128)")
        port = parse_port(port_text)
        host = normalize_host(host_text)
    except (HostError, ValueError) as exc:
        return f"the parent's address: {exc}"
    shown_host = format_authority(host, port)
    if not at:
        return Parent(host, port, shown=f"http://{shown_host}")
    user_raw, colon, pass_raw = userinfo.partition(":")
    user = _part(user_raw, refs, sec, key)
    password = _part(pass_raw, refs, sec, key)
    if ":" in user.text:
        return "the user name may not hold `:` (RFC 7617 §2)"
    if "\r" in user.text + password.text or "\n" in user.text + password.text:
        return "the user name and password may not hold a line break"
    secret = Secret(password.text, password.source)
    sec.doc.keep_secret(password.text)
    token = base64.b64encode(f"{user.text}:{password.text}".encode()).decode("ascii")
    authorization = Secret(f"Basic {token}", "****")
    sec.doc.keep_secret(authorization.text)
    sec.doc.keep_secret(token)
    if colon and password.text and secret.is_literal:
        sec.warn(key, "a literal password in the file; prefer http://${PROXY_USER}:${PROXY_PASSWORD}@host:port")
    if password.text and len(password.text.encode()) < MIN_ENCODED:
        sec.warn(key, f"a password under {MIN_ENCODED} bytes; output is kept free of it only as written, not encoded")
    shown_pass = f":{secret.shown_source()}" if colon else ""
    return Parent(host, port, user, secret, authorization, f"http://{user.source}{shown_pass}@{shown_host}")


def _unmask(text: str, refs: list[str], sec: Section, key: str) -> str:
    """A part of the URL with its references resolved (they must be: ``sec.text`` said so already)."""
    raw = re.sub(r"\x00(\d+)\x00", lambda m: refs[int(m.group(1))], text)
    bws = sec.doc.resolve_bws if sec.doc.bws is not None else None
    value, _ = interpolate(raw, sec.base_dir, bws, sec.doc.resolved)
    return value


def _part(text: str, refs: list[str], sec: Section, key: str) -> Value:
    """The user or password: literal pieces percent-decoded (RFC 3986 §3.2.1), references as they resolve."""
    out: list[str] = []
    for piece in re.split(r"(\x00\d+\x00)", text):
        if piece.startswith("\x00"):
            out.append(_unmask(piece, refs, sec, key))
        else:
            out.append(unquote(piece))
    source = re.sub(r"\x00(\d+)\x00", lambda m: refs[int(m.group(1))], text)
    return Value("".join(out), source)


# --------------------------------------------------------------------------- aiohttp's requests


def aiohttp_args(parent: Parent | None, url: str, headers: dict[str, str]) -> dict[str, Any]:
    """The keyword arguments that send one aiohttp request through ``parent`` (none for direct).

    aiohttp sends ``proxy_headers`` on its CONNECT (https:// URLs) but not on
    an absolute-form request (http:// URLs), which carries the header itself.
    """
    if parent is None:
        return {}
    if urlsplit(url).scheme.lower() == "http" and not parent.on_loopback:
        # An http:// URL is accepted only to a loopback host (grants/checks.py): through a parent
        # off this host, what it carries (a client secret, a code) would not stay on it.
        raise clear_text_refusal(parent, "a request to an http:// URL")
    args: dict[str, Any] = {"proxy": f"http://{parent.authority}"}
    header = parent.header
    if header is not None:
        value = header[1].decode("ascii")
        if urlsplit(url).scheme.lower() == "https":
            args["proxy_headers"] = {"Proxy-Authorization": value}
        else:
            headers["Proxy-Authorization"] = value
    return args


def aiohttp_failure(parent: Parent, exc: BaseException, route: str | None = None) -> ProxyError | None:
    """The error a failure of an aiohttp request sent through ``parent`` is, when it is the parent's."""
    import aiohttp

    who = f"the parent proxy {parent.authority}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        if exc.status == 407:
            return UpstreamProxyAuthFailed(auth_failed(parent, _schemes(exc.headers)), route)
        return UpstreamProxyError(f"{who} answered {exc.status} to CONNECT.", route)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        why = exc.os_error.strerror or type(exc.os_error).__name__
        return UpstreamProxyError(f"cannot connect to {who}: {why}.", route)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamProxyTimeout(f"{who} did not accept a connection in time.", route)
    return None


def answered_407(parent: Parent, resp: aiohttp.ClientResponse, route: str | None = None) -> ProxyError | None:
    """An absolute-form request's 407 comes from the parent: only a proxy sends one (RFC 9110 §15.5.8)."""
    if resp.status != 407:
        return None
    return UpstreamProxyAuthFailed(auth_failed(parent, resp.headers.getall("Proxy-Authenticate", [])), route)


def auth_failed(parent: Parent, challenges: list[str]) -> str:
    """The one sentence for a parent's 407, naming the scheme it asked for when that is not Basic."""
    who = f"the parent proxy {parent.authority}"
    schemes = [c.split(" ", 1)[0].strip() for c in challenges if c.strip()]
    if schemes and not any(s.lower() == "basic" for s in schemes):
        return f"{who} asks for {', '.join(schemes)[:60]} authentication; authproxy speaks Basic only (407)."
    if parent.authorization is None:
        return f"{who} wants credentials (407); give them in `upstream_proxy` (http://USER:PASS@host:port)."
    return f"{who} refused authproxy's credentials (407)."


def _schemes(headers: Any) -> list[str]:
    if headers is None:
        return []
    return list(headers.getall("Proxy-Authenticate", [])) if hasattr(headers, "getall") else []
