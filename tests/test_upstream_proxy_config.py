"""``upstream_proxy`` and ``no_upstream_proxy`` as routes.yaml spells them: parsing, refusals, the choice, redaction."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pytest

from authproxy import config
from authproxy.cli.report import cmd_check
from authproxy.config.parents import Parents
from authproxy.net.parent import DIRECT, Parent
from authproxy.secrecy.redact import redact
from tests.conftest import assert_no_secrets

PASSWORD = "pr0xy-Pa55:w@rd/x"


def _load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "routes.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n" + textwrap.dedent(text))
    return config.load(path)


def _errors(tmp_path: Path, text: str) -> str:
    with pytest.raises(config.ConfigError) as info:
        _load(tmp_path, text)
    return str(info.value)


ROUTES = """
routes:
  - {name: a, match: a.test, auth: {type: bearer, token: t0ken-value}}
"""


def test_user_and_password_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("PROXY_USER", "corp\\alice")
    monkeypatch.setenv("PROXY_PASSWORD", PASSWORD)  # `:`, `@`, `/`: taken as they are, not as URL syntax
    cfg = _load(tmp_path, "upstream_proxy: http://${PROXY_USER}:${PROXY_PASSWORD}@Proxy.Corp.test:3128\n" + ROUTES)
    parent = cfg.upstream_proxy
    assert isinstance(parent, Parent)
    assert (parent.host, parent.port, parent.authority) == ("proxy.corp.test", 3128, "proxy.corp.test:3128")
    token = base64.b64encode(f"corp\\alice:{PASSWORD}".encode()).decode()
    assert parent.header == (b"Proxy-Authorization", f"Basic {token}".encode())
    assert PASSWORD not in repr(parent) and PASSWORD not in repr(cfg)
    # The redactor knows the password and the header made of it.
    assert_no_secrets([redact(f"pw {PASSWORD} header Basic {token} b64 {token}")], [PASSWORD, token])
    assert cmd_check(str(tmp_path / "routes.yaml"), strict=False) == 0
    out = capsys.readouterr()
    assert "parent proxy: http://${PROXY_USER}:${PROXY_PASSWORD}@proxy.corp.test:3128." in out.err
    assert_no_secrets([out.out, out.err], [PASSWORD])


def test_literal_credentials_are_percent_decoded_and_warned_about(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "upstream_proxy: http://bob:s3cret%40pass@10.0.0.1:8080\n" + ROUTES)
    parent = cfg.upstream_proxy
    assert parent is not None and parent.password is not None and parent.user is not None
    assert (parent.user.text, parent.password.reveal()) == ("bob", "s3cret@pass")
    assert parent.shown == "http://bob:****@10.0.0.1:8080"
    assert any("literal password" in str(w) for w in cfg.warnings)


def test_a_parent_without_credentials(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "upstream_proxy: 'http://[::1]:3128'\n" + ROUTES)
    assert cfg.upstream_proxy == Parent("::1", 3128, shown="http://[::1]:3128")
    assert cfg.upstream_proxy.header is None


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("https://proxy.test:3128", "`https://` parents are not supported"),
        ("socks5://proxy.test:1080", "`socks5://` parents are not supported"),
        ("http://proxy.test", "give the parent's port"),
        ("http://proxy.test:3128/path", "without a path"),
        ("proxy.test:3128", "must be a URL"),
        ("direct", "`direct` is a route's way"),
        ("http://${UNSET_PARENT_PASSWORD_X}@proxy.test:3128", "UNSET_PARENT_PASSWORD_X is not set"),
        ("http://a:b@127.0.0.1:8080", "this proxy's own `listen` address"),
    ],
)
def test_what_check_refuses(tmp_path: Path, value: str, said: str) -> None:
    msg = _errors(tmp_path, f"upstream_proxy: '{value}'\n" + ROUTES)
    assert "upstream_proxy" in msg and said in msg, msg


def test_no_upstream_proxy_patterns_are_the_route_match_syntax(tmp_path: Path) -> None:
    msg = _errors(tmp_path, "upstream_proxy: http://p.test:3128\nno_upstream_proxy: ['a.*.test', 'b.test/v1']\n" + ROUTES)
    assert "no_upstream_proxy[0]" in msg and "`*` may only stand as the first label" in msg
    assert "no_upstream_proxy[1]" in msg and "no path here" in msg


def test_the_choice(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        """
        upstream_proxy: http://parent.test:3128
        no_upstream_proxy: ["*.corp.test", "intranet.test", "dev.test:*"]
        routes:
          - {name: own, match: own.test, upstream_proxy: "http://other.test:8080", auth: {type: bearer, token: t0ken-1}}
          - {name: direct, match: direct.test, upstream_proxy: direct, auth: {type: bearer, token: t0ken-2}}
          - {name: plain, match: plain.test, auth: {type: bearer, token: t0ken-3}}
        """,
    )
    parents = Parents.of(cfg)
    own, direct, plain = cfg.routes
    assert direct.upstream_proxy == DIRECT
    top = cfg.upstream_proxy
    assert parents.choose(own, "intranet.test", 443, 443).authority == "other.test:8080"  # the route's own wins
    assert parents.choose(direct, "plain.test", 443, 443) is None
    assert parents.choose(plain, "plain.test", 443, 443) is top
    assert parents.choose(None, "x.corp.test", 443, 443) is None
    assert parents.choose(None, "x.corp.test", 8443, 443) is top  # no port in the pattern: 443 (or 80) only
    assert parents.choose(None, "corp.test", 443, 443) is top  # `*.h` never matches h itself
    assert parents.choose(None, "intranet.test", 443, 443) is None
    assert parents.choose(None, "intranet.test", 8443, 443) is top  # no port: the scheme's default only
    assert parents.choose(None, "dev.test", 8443, 443) is None  # `:*`: every port
    assert parents.for_url(None, "https://intranet.test/token") is None
    assert parents.for_url(None, "http://intranet.test:8080/token") is top
    assert parents.for_url(own, "https://id.test/token").authority == "other.test:8080"


def test_routes_reject_a_bad_parent_with_their_path(tmp_path: Path) -> None:
    msg = _errors(
        tmp_path,
        "routes:\n  - {name: a, match: a.test, upstream_proxy: 'ftp://x:1', auth: {type: bearer, token: t0ken-1}}\n",
    )
    assert "routes[0].upstream_proxy" in msg and "`ftp://` parents are not supported" in msg
