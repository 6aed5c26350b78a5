"""What `authproxy env` prints: the variables that make common tools use the proxy and trust its CA."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from authproxy.config import Match, Route
from authproxy.net.hosts import is_loopback

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "WS_PROXY", "WSS_PROXY")
# Each names the CA bundle for one family of clients.
CA_VARS = (
    "SSL_CERT_FILE",  # OpenSSL, Python's ssl, Go (Linux), Ruby
    "REQUESTS_CA_BUNDLE",  # requests
    "CURL_CA_BUNDLE",  # curl
    "NODE_EXTRA_CA_CERTS",  # Node (added to its built-in roots)
    "GIT_SSL_CAINFO",  # git
    "PIP_CERT",  # pip
    "CARGO_HTTP_CAINFO",  # cargo
    "AWS_CA_BUNDLE",  # AWS CLI and SDKs
    "DENO_CERT",  # Deno
    "npm_config_cafile",  # npm
)
DEFAULT_NO_PROXY = "localhost,127.0.0.1,::1"


def loopback_routes(routes: Iterable[Route]) -> list[str]:
    """The routes a client would reach directly, not through the proxy, with the default NO_PROXY.

    That is a ``match`` on a loopback literal, ``localhost``, or a name under
    ``.localhost`` (RFC 6761 §6.3): curl, wget, Go, Ruby, undici, urllib and
    requests read the NO_PROXY entry ``localhost`` as "this name and every name
    under it". A route whose ``upstream`` alone is on loopback is not one:
    clients send its ``match`` host to the proxy, which dials the upstream.
    """
    return [r.name for r in routes if r.match is not None and _loopback_match(r.match)]


def _loopback_match(match: Match) -> bool:
    host = match.host  # normalized: lower case, no trailing dot; for `*.h`, `h`
    return is_loopback(host) or host.endswith(".localhost")


def default_no_proxy(routes: Iterable[Route]) -> tuple[str, list[str]]:
    """NO_PROXY when the user gave none, and the routes that emptied it (a local upstream must be proxied)."""
    local = loopback_routes(routes)
    return ("" if local else DEFAULT_NO_PROXY), local


def no_proxy_note(local: list[str]) -> str:
    """The line `authproxy env` prints when loopback left NO_PROXY: `#` starts a comment in sh, fish and PowerShell."""
    which = f"route {local[0]} (it matches" if len(local) == 1 else f"routes {', '.join(local)} (they match"
    return (
        f"# NO_PROXY leaves out localhost, 127.0.0.1 and ::1 for {which} a loopback host); Go, Java and Ruby "
        "go direct to loopback anyway, so match a name that does not resolve (such as api.test) instead"
    )


def placeholder_env(route: Route) -> str:
    """The variable a route's placeholder is printed as: ``placeholder_env``, else ``AUTHPROXY_PLACEHOLDER_<ROUTE>``."""
    spec = route.placeholder
    if spec is not None and spec.env:
        return spec.env
    return "AUTHPROXY_PLACEHOLDER_" + "".join(c if c.isalnum() else "_" for c in route.name.upper())


def variables(proxy_url: str, bundle: Path, no_proxy: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name in PROXY_VARS:
        out += [(name, proxy_url), (name.lower(), proxy_url)]
    out += [("NO_PROXY", no_proxy), ("no_proxy", no_proxy)]
    # Node 24+ reads HTTP(S)_PROXY only when asked to.
    out.append(("NODE_USE_ENV_PROXY", "1"))
    out += [(name, str(bundle)) for name in CA_VARS]
    return out


def render(pairs: list[tuple[str, str]], shell: str, notes: Iterable[str] = ()) -> str:
    lines = list(notes)
    for name, value in pairs:
        if shell == "fish":
            lines.append(f"set -gx {name} {_single_quoted(value, fish=True)}")
        elif shell == "powershell":
            lines.append(f"$env:{name} = '{value.replace(chr(39), chr(39) * 2)}'")
        else:
            lines.append(f"export {name}={_single_quoted(value)}")
    return "\n".join(lines) + "\n"


def _single_quoted(value: str, fish: bool = False) -> str:
    if fish:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return "'" + value.replace("'", "'\"'\"'") + "'"
