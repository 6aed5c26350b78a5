"""What `authproxy env` prints: the variables that make common tools use the proxy and trust its CA."""

from __future__ import annotations

from pathlib import Path

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


def variables(proxy_url: str, bundle: Path, no_proxy: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name in PROXY_VARS:
        out += [(name, proxy_url), (name.lower(), proxy_url)]
    out += [("NO_PROXY", no_proxy), ("no_proxy", no_proxy)]
    # Node 24+ reads HTTP(S)_PROXY only when asked to.
    out.append(("NODE_USE_ENV_PROXY", "1"))
    out += [(name, str(bundle)) for name in CA_VARS]
    return out


def render(pairs: list[tuple[str, str]], shell: str) -> str:
    lines = []
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
