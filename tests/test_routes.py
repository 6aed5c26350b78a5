"""Which route a request belongs to, and the host/path helpers under it.

Routes are built the way the proxy builds them: YAML in ``tmp_path`` through
``config.load``. Hosts are passed to the table already normalized, as the
proxy does (``hosts.normalize_host``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from authproxy.config import Route, load
from authproxy.errors import BadRequest
from authproxy.net.hosts import (
    HostError,
    PathError,
    is_loopback,
    normalize_host,
    normalize_path,
    prefix_matches,
    split_hostport,
)
from authproxy.routes import RouteTable

HTTPS = 443
HTTP = 80


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AP_ROUTES_KEY", "k")


def table(tmp_path: Path, *routes: str) -> RouteTable:
    """``routes`` are ``name match-text [gateway]`` descriptions, in file order."""
    lines = ["routes:"]
    for i, spec in enumerate(routes):
        name, match, *rest = spec.split()
        lines.append(f"  - name: {name}")
        if match != "-":
            lines.append(f'    match: "{match}"')
        if rest:
            lines.append(f"    gateway: {rest[0]}")
            lines.append(f"    upstream: https://up{i}.example/base")
        lines.append('    auth: {type: api_key, value: "${AP_ROUTES_KEY}"}')
    path = tmp_path / "routes.yaml"
    path.write_text("\n".join(lines) + "\n")
    return RouteTable(load(path).routes)


def name_of(route: Route | None) -> str | None:
    return route.name if route is not None else None


def m(t: RouteTable, host: str, path: str = "/", port: int = HTTPS, default: int = HTTPS) -> str | None:
    return name_of(t.match(normalize_host(host), port, default, path))


# ---------------------------------------------------------------- hosts


def test_host_is_case_insensitive(tmp_path: Path) -> None:
    t = table(tmp_path, "a API.Example.com")
    assert m(t, "api.example.com") == "a"
    assert m(t, "API.EXAMPLE.COM") == "a"


def test_matching_stays_right_after_the_per_host_memo_fills_and_is_emptied(tmp_path: Path) -> None:
    """The memo of candidates per host is bounded: a scan of many hosts empties it, answers stay the same."""
    t = table(tmp_path, "a api.example.com", "w *.example.org", "p api.example.com/v2")
    for i in range(5000):
        assert m(t, f"host{i}.example.net") is None
        assert m(t, f"h{i}.example.org") == "w"
    assert m(t, "api.example.com", "/v2/x") == "p"
    assert m(t, "api.example.com", "/v1") == "a"


def test_trailing_dot_is_ignored_both_sides(tmp_path: Path) -> None:
    t = table(tmp_path, "a api.example.com.")
    assert m(t, "api.example.com") == "a"
    assert m(t, "api.example.com.") == "a"


def test_idna_host_in_config_matches_punycode_request(tmp_path: Path) -> None:
    t = table(tmp_path, "a Bücher.example.")
    assert m(t, "xn--bcher-kva.example") == "a"
    assert m(t, "BÜCHER.example") == "a"
    assert m(t, "bucher.example") is None


def test_idna_wildcard(tmp_path: Path) -> None:
    t = table(tmp_path, "a *.bücher.example")
    assert m(t, "www.xn--bcher-kva.example") == "a"
    assert m(t, "xn--bcher-kva.example") is None


def test_other_host_does_not_match(tmp_path: Path) -> None:
    t = table(tmp_path, "a api.example.com")
    assert m(t, "api.example.org") is None
    assert m(t, "xapi.example.com") is None
    assert m(t, "sub.api.example.com") is None


def test_wildcard_matches_one_or_more_labels_not_the_apex(tmp_path: Path) -> None:
    t = table(tmp_path, "w *.example.com")
    assert m(t, "a.example.com") == "w"
    assert m(t, "a.b.c.example.com") == "w"
    assert m(t, "example.com") is None
    assert m(t, "badexample.com") is None
    assert m(t, "example.com.evil.test") is None


def test_ip_literal_hosts(tmp_path: Path) -> None:
    t = table(tmp_path, "v4 127.0.0.1:8080", "v6 [::1]:8443")
    assert m(t, "127.0.0.1", port=8080, default=HTTP) == "v4"
    assert m(t, "[0:0::1]", port=8443) == "v6"
    assert m(t, "::1", port=443) is None


# ---------------------------------------------------------------- ports


def test_no_port_means_the_scheme_default(tmp_path: Path) -> None:
    t = table(tmp_path, "a api.example.com")
    assert m(t, "api.example.com", port=443, default=HTTPS) == "a"
    assert m(t, "api.example.com", port=80, default=HTTP) == "a"
    assert m(t, "api.example.com", port=8443, default=HTTPS) is None
    assert m(t, "api.example.com", port=443, default=HTTP) is None
    assert m(t, "api.example.com", port=80, default=HTTPS) is None


def test_explicit_port_matches_that_port_only(tmp_path: Path) -> None:
    t = table(tmp_path, "a api.example.com:8443")
    assert m(t, "api.example.com", port=8443) == "a"
    assert m(t, "api.example.com", port=8443, default=HTTP) == "a"
    assert m(t, "api.example.com", port=443) is None


def test_any_port(tmp_path: Path) -> None:
    t = table(tmp_path, "a api.example.com:*", "w *.example.com:*")
    for port in (80, 443, 8443, 65535):
        assert m(t, "api.example.com", port=port) == "a"
        assert m(t, "x.example.com", port=port, default=HTTP) == "w"


def test_host_matched_ignores_the_path(tmp_path: Path) -> None:
    t = table(tmp_path, "a api.example.com/v2", "w *.example.org:8443")
    assert t.host_matched("api.example.com", 443, 443)
    assert not t.host_matched("api.example.com", 8443, 443)
    assert t.host_matched("x.example.org", 8443, 443)
    assert not t.host_matched("example.org", 8443, 443)
    assert not t.host_matched("other.example", 443, 443)
    # ...while match() on the same host still looks at the path.
    assert m(t, "api.example.com", "/v1") is None


# ---------------------------------------------------------------- precedence


def test_exact_beats_wildcard_whatever_the_order(tmp_path: Path) -> None:
    t = table(tmp_path, "w *.example.com", "e api.example.com")
    assert m(t, "api.example.com") == "e"
    assert m(t, "other.example.com") == "w"


def test_longer_wildcard_beats_shorter(tmp_path: Path) -> None:
    t = table(tmp_path, "short *.example.com", "long *.api.example.com")
    assert m(t, "x.api.example.com") == "long"
    assert m(t, "api.example.com") == "short"
    assert m(t, "x.web.example.com") == "short"


def test_exact_without_port_beats_wildcard_with_port(tmp_path: Path) -> None:
    t = table(tmp_path, "w *.example.com:443", "e api.example.com")
    assert m(t, "api.example.com") == "e"


def test_with_port_beats_without(tmp_path: Path) -> None:
    t = table(tmp_path, "any api.example.com:*", "plain api.example.com", "port api.example.com:443")
    assert m(t, "api.example.com", port=443) == "port"
    assert m(t, "api.example.com", port=8443) == "any"


def test_port_beats_path(tmp_path: Path) -> None:
    t = table(tmp_path, "path api.example.com/v2", "port api.example.com:443")
    assert m(t, "api.example.com", "/v2/x") == "port"


def test_longer_path_prefix_beats_shorter(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        "root api.example.com",
        "v2 api.example.com/v2",
        "admin api.example.com/v2/admin",
    )
    assert m(t, "api.example.com", "/v2/admin/users") == "admin"
    assert m(t, "api.example.com", "/v2/admin") == "admin"
    assert m(t, "api.example.com", "/v2/users") == "v2"
    assert m(t, "api.example.com", "/v3") == "root"
    assert m(t, "api.example.com", "/") == "root"


def test_file_order_breaks_ties(tmp_path: Path) -> None:
    t = table(tmp_path, "first api.example.com/v2", "second api.example.com/v2/")
    assert m(t, "api.example.com", "/v2/x") == "first"
    t2 = table(tmp_path, "first *.example.com", "second *.example.com")
    assert m(t2, "a.example.com") == "first"


def test_exact_with_unmatched_path_falls_back_to_wildcard(tmp_path: Path) -> None:
    t = table(tmp_path, "e api.example.com/v2", "w *.example.com")
    assert m(t, "api.example.com", "/v2/x") == "e"
    assert m(t, "api.example.com", "/v1") == "w"


# ---------------------------------------------------------------- paths


def test_path_prefix_ends_at_a_slash_boundary(tmp_path: Path) -> None:
    t = table(tmp_path, "v2 api.example.com/v2")
    assert m(t, "api.example.com", "/v2") == "v2"
    assert m(t, "api.example.com", "/v2/") == "v2"
    assert m(t, "api.example.com", "/v2/x") == "v2"
    assert m(t, "api.example.com", "/v2x") is None
    assert m(t, "api.example.com", "/v") is None
    assert m(t, "api.example.com", "/") is None


def test_prefix_written_with_trailing_slash(tmp_path: Path) -> None:
    t = table(tmp_path, "v2 api.example.com/v2/")
    assert m(t, "api.example.com", "/v2") == "v2"
    assert m(t, "api.example.com", "/v2x") is None


def test_dot_segments_are_removed_before_matching(tmp_path: Path) -> None:
    t = table(tmp_path, "v2 api.example.com/v2")
    assert m(t, "api.example.com", "/v2/../admin") is None
    assert m(t, "api.example.com", "/v2/./x") == "v2"
    assert m(t, "api.example.com", "/admin/../v2/x") == "v2"
    assert m(t, "api.example.com", "/v2/a/../../admin") is None
    assert m(t, "api.example.com", "//v2//x") == "v2"


def test_dot_segments_can_leave_the_prefix_for_a_broader_route(tmp_path: Path) -> None:
    t = table(tmp_path, "ro api.example.com/public", "all api.example.com/")
    assert m(t, "api.example.com", "/public/../private") == "all"


@pytest.mark.parametrize(
    "path",
    ["/v2%2Fadmin", "/v2/%2e%2e/admin", "/v2/%2E%2E/admin", "/v2\\..\\admin", "/v2/..;/admin", "/v2/..%3b/admin"],
)
def test_encoded_slash_dot_or_backslash_is_a_bad_request(tmp_path: Path, path: str) -> None:
    t = table(tmp_path, "v2 api.example.com/v2")
    with pytest.raises(BadRequest) as info:
        t.match("api.example.com", 443, 443, path)
    assert info.value.status == 400


def test_encoded_path_is_fine_when_no_prefix_is_checked(tmp_path: Path) -> None:
    t = table(tmp_path, "a api.example.com", "w *.example.com")
    assert m(t, "api.example.com", "/a%2Fb") == "a"
    assert m(t, "x.example.com", "/a\\b") == "w"


def test_encoded_path_on_an_unmatched_host_is_not_an_error(tmp_path: Path) -> None:
    t = table(tmp_path, "v2 api.example.com/v2")
    assert m(t, "other.example", "/v2%2Fadmin") is None


# ---------------------------------------------------------------- gateway


def test_gateway_strips_its_prefix(tmp_path: Path) -> None:
    t = table(tmp_path, "legacy - /reports")
    found = t.gateway("/reports/a/b")
    assert found is not None
    route, rest = found
    assert route.name == "legacy"
    assert rest == "/a/b"
    assert t.gateway("/reports") == (route, "/")
    assert t.gateway("/reports/") == (route, "/")
    assert t.gateway("/reports/a/") == (route, "/a/")


def test_gateway_respects_the_slash_boundary(tmp_path: Path) -> None:
    t = table(tmp_path, "legacy - /reports")
    assert t.gateway("/reportsx") is None
    assert t.gateway("/report") is None
    assert t.gateway("/") is None


def test_gateway_removes_dot_segments(tmp_path: Path) -> None:
    t = table(tmp_path, "legacy - /reports")
    assert t.gateway("/reports/../admin") is None
    found = t.gateway("/x/../reports/a/./b")
    assert found is not None
    assert found[1] == "/a/b"


def test_gateway_longest_prefix_wins(tmp_path: Path) -> None:
    t = table(tmp_path, "short - /api", "long - /api/v2")
    assert name_of(t.gateway("/api/v2/x")[0]) == "long"  # type: ignore[index]
    assert t.gateway("/api/v2/x")[1] == "/x"  # type: ignore[index]
    assert name_of(t.gateway("/api/v1/x")[0]) == "short"  # type: ignore[index]


def test_gateway_encoded_path_is_a_bad_request(tmp_path: Path) -> None:
    t = table(tmp_path, "legacy - /reports")
    with pytest.raises(BadRequest):
        t.gateway("/reports%2F..%2Fadmin")
    with pytest.raises(BadRequest):
        t.gateway("/reports/..;/admin")


def test_no_gateways_means_none(tmp_path: Path) -> None:
    t = table(tmp_path, "a api.example.com")
    assert t.gateway("/anything") is None


def test_gateway_route_without_match_is_not_host_matched(tmp_path: Path) -> None:
    t = table(tmp_path, "legacy - /reports", "a api.example.com")
    assert m(t, "up0.example") is None
    assert t.get("legacy") is not None
    assert t.get("a") is not None
    assert t.get("nope") is None


def test_gateway_route_with_match_also_matches_by_host(tmp_path: Path) -> None:
    t = table(tmp_path, "legacy reports.example /reports")
    assert m(t, "reports.example") == "legacy"
    assert name_of(t.gateway("/reports/x")[0]) == "legacy"  # type: ignore[index]


def test_candidates_are_cached_per_host_and_port(tmp_path: Path) -> None:
    t = table(tmp_path, "e api.example.com", "w *.example.com")
    first = t.candidates("api.example.com", 443, 443)
    assert [r.name for r in first] == ["e", "w"]
    assert t.candidates("api.example.com", 443, 443) is first
    assert t.candidates("api.example.com", 80, 80) == first
    assert t.candidates("api.example.com", 443, 80) == ()


def test_empty_table(tmp_path: Path) -> None:
    t = RouteTable([])
    assert t.match("a.example", 443, 443, "/") is None
    assert t.gateway("/x") is None
    assert not t.host_matched("a.example", 443, 443)


# ---------------------------------------------------------------- hosts.py helpers


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("  example.com ", "example.com"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("[::1]", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("::FFFF:1.2.3.4", "::ffff:102:304"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_normalize_host(raw: str, want: str) -> None:
    assert normalize_host(raw) == want


@pytest.mark.parametrize("bad", ["", ".", "[]", "a b.example", "a/b", "user@host", "a..b", "x" * 64 + ".example"])
def test_normalize_host_refuses(bad: str) -> None:
    with pytest.raises(HostError):
        normalize_host(bad)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("example.com", ("example.com", None)),
        ("example.com:8080", ("example.com", "8080")),
        ("example.com:*", ("example.com", "*")),
        ("[::1]:8443", ("::1", "8443")),
        ("[::1]", ("::1", None)),
        ("::1", ("::1", None)),
        ("2001:db8::1", ("2001:db8::1", None)),
    ],
)
def test_split_hostport(raw: str, want: tuple[str, str | None]) -> None:
    assert split_hostport(raw) == want


@pytest.mark.parametrize("bad", ["[::1", "[::1]8443", "[::1]x:1"])
def test_split_hostport_refuses(bad: str) -> None:
    with pytest.raises(HostError):
        split_hostport(bad)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("/", "/"),
        ("", "/"),
        ("v2/x", "/v2/x"),
        ("/a/b/../c", "/a/c"),
        ("/a/./b/", "/a/b/"),
        ("/a/b/..", "/a"),
        ("/../../etc", "/etc"),
        ("//a//b", "/a/b"),
        ("///a", "/a"),
        ("/a/b/", "/a/b/"),
        ("/a%20b", "/a%20b"),
        ("/v1/items;jsessionid=1", "/v1/items;jsessionid=1"),
        ("/v1/items%3Bx=1", "/v1/items%3Bx=1"),
        ("/v1/a;b/../c", "/v1/c"),
        ("/app/;jsessionid=1", "/app/;jsessionid=1"),
        ("/v1/...;/x", "/v1/...;/x"),
    ],
)
def test_normalize_path(raw: str, want: str) -> None:
    assert normalize_path(raw) == want


@pytest.mark.parametrize(
    "bad",
    [
        "/a%2Fb",
        "/a%2fb",
        "/a/%2E%2E/b",
        "/%2e",
        "/a\\b",
        "/a%5Cb",
        # Tomcat and Spring cut `;` parameters before removing dot segments.
        "/v1/..;/admin",
        "/v1/..;x=1/admin",
        "/v1/.;/x",
        "/v1/..;",
        "..;/x",
        "/v1/..%3b/admin",
        "/v1/..%3B/admin",
        "/v1/.%3Bx/y",
        "/v1/;/../admin",
        "/v1/;x=1/y",
        "/v1/%3b/y",
    ],
)
def test_normalize_path_refuses(bad: str) -> None:
    with pytest.raises(PathError):
        normalize_path(bad)


@pytest.mark.parametrize(
    ("prefix", "path", "want"),
    [
        ("/v2", "/v2", True),
        ("/v2", "/v2/", True),
        ("/v2", "/v2/x", True),
        ("/v2", "/v2x", False),
        ("/v2", "/v", False),
        ("/v2/", "/v2", True),
        ("/v2/", "/v2x", False),
        ("", "/anything", True),
        ("/", "/anything", True),
        ("/a/b", "/a", False),
    ],
)
def test_prefix_matches(prefix: str, path: str, want: bool) -> None:
    assert prefix_matches(prefix, path) is want


@pytest.mark.parametrize(
    ("host", "want"),
    [
        ("localhost", True),
        ("api.localhost", False),
        ("::ffff:127.0.0.1", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost.example", False),
        ("notlocalhost", False),
        ("10.0.0.1", False),
        ("::2", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, want: bool) -> None:
    assert is_loopback(host) is want
