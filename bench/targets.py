"""What runs: the scenarios, the extras and the targets (direct, authproxy variants, peers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    scheme: str
    tool: str
    direct_only: bool = False


# Run in this order within a round: the TLS load grows a proxy's RSS the most (and RSS does not
# shrink back), so the downloads come before it.
SCENARIOS: dict[str, Scenario] = {
    "small": Scenario("http", "wrk"),
    "small_wide": Scenario("http", "wrk"),
    "download": Scenario("http", "curl"),
    "download_tls": Scenario("https", "curl"),
    "small_tls": Scenario("https", "hey"),
    "small_tls_wrk": Scenario("https", "wrk", direct_only=True),
}
EXTRAS = ("cold", "scaling", "idle", "refresh")

# name -> (schemes it runs, how it injects). Rows appear in this order.
TARGET_INFO: dict[str, tuple[tuple[str, ...], str]] = {
    "direct": (("http", "https"), "the client sends `Authorization` itself, straight to nginx"),
    "authproxy": (
        ("http", "https"),
        "this checkout (`python -m authproxy run`), a `bearer` route per upstream port; CONNECT intercepted "
        "with the bench CA",
    ),
    "squid": (
        ("http",),
        "squid-openssl as a plain forward proxy: `request_header_access Authorization deny` + "
        "`request_header_add Authorization` for dst 127.0.0.1",
    ),
    "squid-bump": (
        ("https",),
        "the same squid with `ssl-bump` on its port (peek, stare, bump; leaves made by "
        "security_file_certgen from the bench CA)",
    ),
    "tinyproxy": (("http",), "`AddHeader Authorization`; plain HTTP only (it cannot intercept a CONNECT)"),
    "proxy.py": (
        ("http", "https"),
        "`bench/peers/proxypy_plugin.py` (`handle_client_request`); TLS interception with the bench CA",
    ),
    "mitmproxy": (
        ("http", "https"),
        "mitmdump with `bench/peers/mitmproxy_addon.py` (`requestheaders`), `stream_large_bodies=1m`",
    ),
}
PROXIES = tuple(n for n in TARGET_INFO if n != "direct")
AUTHPROXY = "authproxy"
INSTALLED = "authproxy-installed"  # this checkout as `pip install .` installs it, run with every default


def authproxy_name(workers: str) -> str:
    """The target name of one authproxy configuration (--authproxy-workers): `authproxy` for a single
    process, `authproxy-w2`, `authproxy-wauto` for `run --workers 2` / `auto`."""
    return AUTHPROXY if workers == "1" else f"{AUTHPROXY}-w{workers}"


def is_authproxy(name: str) -> bool:
    """True for every authproxy variant (`authproxy`, `authproxy-w2`, ...); no peer's name starts so."""
    return name == AUTHPROXY or name.startswith(f"{AUTHPROXY}-")


@dataclass
class Target:
    name: str
    schemes: tuple[str, ...]
    how: str
    port: int = 0
    missing: str | None = None  # why it cannot run (not installed)
    insecure: bool = False  # its minted certificate failed curl's verification; -k was used
    workers: str | None = None  # authproxy's `run --workers` (None: not authproxy)
    display: str = ""  # its name in the tables (authproxy: `authproxy --workers 2 --loop uvloop`)
    installed: bool = False  # the `authproxy-installed` target: its own venv's `authproxy` command

    def __post_init__(self) -> None:
        self.display = self.display or self.name

    @property
    def is_proxy(self) -> bool:
        return self.name != "direct"

    @property
    def is_authproxy(self) -> bool:
        return is_authproxy(self.name)

    def runs(self, scenario: str) -> bool:
        sc = SCENARIOS[scenario]
        return sc.scheme in self.schemes and not (sc.direct_only and self.is_proxy)
