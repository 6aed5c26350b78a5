"""Loading routes.yaml: interpolation, validation, every error with its path and line.

Pure unit tests: YAML written into ``tmp_path``, variables set with
``monkeypatch``; nothing touches the network.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from authproxy.config import Config, Limits, Timeouts, load
from authproxy.credentials.grants.api_key import ApiKey
from authproxy.credentials.grants.base import Credential
from authproxy.credentials.grants.basic import Basic
from authproxy.credentials.grants.bearer import Bearer
from authproxy.credentials.grants.client_credentials import ClientCredentials
from authproxy.credentials.grants.password import Password
from authproxy.schema.problems import ConfigError, Problem
from authproxy.secrecy.secrets import Secret, Value, interpolate

# ---------------------------------------------------------------- helpers


def write(tmp_path: Path, text: str, name: str = "routes.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load(write(tmp_path, text))


def problems_of(tmp_path: Path, text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    return info.value.problems


def errors_of(tmp_path: Path, text: str) -> list[Problem]:
    return [p for p in problems_of(tmp_path, text) if p.severity == "error"]


def only_error(tmp_path: Path, text: str) -> Problem:
    errs = errors_of(tmp_path, text)
    assert len(errs) == 1, [str(e) for e in errs]
    return errs[0]


def at(problems: list[Problem], path: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, (path, [str(p) for p in problems])
    return found[0]


def warnings_at(cfg: Config, path: str) -> list[Problem]:
    return [w for w in cfg.warnings if w.path == path]


# A route that loads with no problems at all (the secret comes from a variable).
@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AP_TEST_KEY", "sk_test_value_123")
    return "sk_test_value_123"


# ---------------------------------------------------------------- defaults and top level


def test_minimal_config_gets_the_defaults(tmp_path: Path, key_env: str) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: api.example
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
        """,
    )
    assert (cfg.listen_host, cfg.listen_port) == ("127.0.0.1", 8080)
    assert cfg.listen == "127.0.0.1:8080"
    assert cfg.unmatched == "tunnel"
    assert cfg.state_dir == Path("~/.local/state/authproxy").expanduser()
    assert cfg.limits == Limits()
    assert cfg.limits.max_header_bytes == 64 * 1024
    assert cfg.limits.max_connections == 1024
    assert cfg.limits.replay_body == 1024 * 1024
    assert cfg.timeouts == Timeouts()
    assert cfg.warnings == ()
    assert len(cfg.routes) == 1


def test_top_level_keys_are_read(tmp_path: Path, key_env: str) -> None:
    cfg = load_text(
        tmp_path,
        """\
        listen: "[::1]:9090"
        state_dir: /var/lib/authproxy
        unmatched: deny
        limits:
          max_header_bytes: 32KiB
          max_connections: 10
          replay_body: 2MiB
        timeouts:
          connect: 1.5
          client_header: 2
          idle: 3
          upstream_headers: 4
          token_fetch: 5
          drain: 6
        routes:
          - name: a
            match: api.example
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
        """,
    )
    assert (cfg.listen_host, cfg.listen_port) == ("::1", 9090)
    assert cfg.listen == "[::1]:9090"
    assert cfg.state_dir == Path("/var/lib/authproxy")
    assert cfg.unmatched == "deny"
    assert cfg.limits.max_header_bytes == 32 * 1024
    assert cfg.limits.max_connections == 10
    assert cfg.limits.replay_body == 2 * 1024 * 1024
    assert cfg.timeouts == Timeouts(connect=1.5, client_header=2, idle=3, upstream_headers=4, token_fetch=5, drain=6)


def test_bad_top_level_values_each_name_their_key(tmp_path: Path) -> None:
    errs = errors_of(
        tmp_path,
        """\
        listen: localhost
        unmatched: drop
        limits:
          max_connections: many
        timeouts:
          connect: -1
        routes: []
        """,
    )
    assert at(errs, "listen").line == 1
    assert "port" in at(errs, "listen").message
    assert at(errs, "unmatched").line == 2
    assert "tunnel, deny" in at(errs, "unmatched").message
    assert at(errs, "limits.max_connections").line == 4
    assert at(errs, "timeouts.connect").line == 6
    assert len(errs) == 4


def test_routes_is_required(tmp_path: Path) -> None:
    err = only_error(tmp_path, "listen: 127.0.0.1:8080\n")
    assert "`routes` is required" in err.message


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    err = only_error(tmp_path, "# only a comment\n")
    assert "empty" in err.message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    err = only_error(tmp_path, "- a\n- b\n")
    assert "mapping" in err.message
    assert err.line == 1


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "nope.yaml")
    assert "cannot read" in info.value.problems[0].message


def test_invalid_yaml_reports_its_line(tmp_path: Path) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, value: x
          - name: b
        """,
    )
    assert err.message.startswith("not valid YAML")
    assert err.line == 5


def test_unquoted_wildcard_is_reported_not_crashed(tmp_path: Path) -> None:
    # `*` starts a YAML alias; the loader must say so with a line, not crash.
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: *.example.com
            auth: {type: api_key, value: x}
        """,
    )
    assert err.line == 3
    assert "YAML" in err.message


def test_problem_str_format(tmp_path: Path) -> None:
    path = write(tmp_path, "routes:\n  - name: a\n    match: a.example\n    bogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    texts = [str(p) for p in info.value.problems if p.severity == "error"]
    assert f"error: {path}:4: routes[0].bogus: unknown key `bogus`" in texts
    assert str(Problem("warning", "f.yaml", None, "", "x")) == "warning: f.yaml: (top): x"


# ---------------------------------------------------------------- unknown and later keys


def test_unknown_keys_everywhere(tmp_path: Path, key_env: str) -> None:
    errs = errors_of(
        tmp_path,
        """\
        listn: 127.0.0.1:1
        routes:
          - name: a
            match: a.example
            upstreem: https://a.example
            auth:
              type: api_key
              value: ${AP_TEST_KEY}
              hedaer: X-Key
        """,
    )
    assert at(errs, "listn").line == 1
    assert at(errs, "routes[0].upstreem").line == 5
    assert at(errs, "routes[0].auth.hedaer").line == 9
    assert at(errs, "routes[0].auth.hedaer").message == "unknown key `hedaer`"
    assert len(errs) == 3


def test_unknown_grant_type(tmp_path: Path) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: magic}
        """,
    )
    assert err.path == "routes[0].auth.type"
    assert "unknown grant type `magic`" in err.message
    assert "api_key" in err.message


def test_auth_without_type_reports_only_the_missing_type(tmp_path: Path) -> None:
    # The keys next to a missing `type` are not "unknown": they belong to a grant
    # that could not be chosen. Reporting them as unknown sends the user hunting typos.
    errs = errors_of(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {value: x}
        """,
    )
    assert [e.message for e in errs] == ["`type` is required"]
    assert errs[0].path == "routes[0].auth"


def test_auth_is_required(tmp_path: Path) -> None:
    err = only_error(tmp_path, "routes:\n  - name: a\n    match: a.example\n")
    assert (err.path, err.line, err.message) == ("routes[0]", 2, "`auth` is required")


def test_key_given_twice(tmp_path: Path, key_env: str) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            match: b.example
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
        """,
    )
    assert (err.path, err.line) == ("routes[0].match", 4)
    assert "given twice" in err.message


# ---------------------------------------------------------------- every error in one load


def test_three_mistakes_three_problems_with_paths_and_lines(tmp_path: Path, key_env: str) -> None:
    errs = errors_of(
        tmp_path,
        """\
        routes:
          - name: billing
            match: api.billing.example
            auth:
              type: client_credentials
              token_url: https://id.billing.example/token
              client_id: abc
              client_secret: ${AP_TEST_KEY}
              client_auth: basic
          - name: legacy
            match: a.*.example
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
          - name: billing
            match: other.example
            auth: {type: basic, username: u, password: "${AP_TEST_KEY}"}
        """,
    )
    assert len(errs) == 3, [str(e) for e in errs]
    bad_choice = at(errs, "routes[0].auth.client_auth")
    assert bad_choice.line == 9
    assert "client_secret_basic, client_secret_post" in bad_choice.message
    bad_match = at(errs, "routes[1].match")
    assert bad_match.line == 11
    assert "first label" in bad_match.message
    dup = at(errs, "routes[2].name")
    assert dup.line == 13
    assert "already used by routes[0]" in dup.message


def test_errors_in_several_routes_keep_their_own_index(tmp_path: Path, key_env: str) -> None:
    errs = errors_of(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
          - name: b
            match: b.example
            auth:
              type: client_credentials
              token_url: ftp://id.example/token
              client_id: abc
              client_secret: ${AP_TEST_KEY}
        """,
    )
    assert at(errs, "routes[0]").line == 2
    bad_url = at(errs, "routes[1].auth.token_url")
    assert bad_url.line == 8
    assert "http:// or https://" in bad_url.message
    assert len(errs) == 2


# ---------------------------------------------------------------- interpolation


def test_env_var_in_flow_mapping(tmp_path: Path, key_env: str) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: legacy
            match: reports.example
            auth: {type: api_key, header: X-API-Key, value: ${AP_TEST_KEY}}
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, ApiKey)
    assert grant.value.reveal() == key_env
    assert grant.value.source == "${AP_TEST_KEY}"
    assert grant.header == "X-API-Key"


def test_flow_mapping_refs_keep_line_numbers_right(tmp_path: Path, key_env: str) -> None:
    errs = errors_of(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, value: ${AP_TEST_KEY}, header: X-A}
          - name: b
            match: b.example
            auth: {type: api_key, value: ${AP_TEST_KEY}, header: ${AP_TEST_KEY}, bogus: 1}
        """,
    )
    assert at(errs, "routes[1].auth.bogus").line == 7
    assert len(errs) == 1


def test_dollar_dollar_is_a_literal_dollar(tmp_path: Path, key_env: str) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth:
              type: api_key
              value: ${AP_TEST_KEY}
              prefix: "p$$ $${AP_TEST_KEY} "
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, ApiKey)
    assert grant.prefix == "p$ ${AP_TEST_KEY} "


def test_env_value_is_not_interpolated_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AP_OUTER", "x${AP_INNER}y$$")
    monkeypatch.setenv("AP_INNER", "inner")
    assert interpolate("${AP_OUTER}") == ("x${AP_INNER}y$$", ())


def test_file_reference_relative_to_config_dir(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "key").write_text("from-a-file\n")
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, value: "${file:secrets/key}"}
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, ApiKey)
    assert grant.value.reveal() == "from-a-file"  # trailing newline stripped
    assert grant.value.source == "${file:secrets/key}"
    assert cfg.warnings == ()


def test_file_reference_absolute(tmp_path: Path) -> None:
    secret = tmp_path / "abs"
    secret.write_text("abs-secret\r\n")
    sub = tmp_path / "conf"
    sub.mkdir()
    cfg = load(
        write(
            sub,
            f"""\
            routes:
              - name: a
                match: a.example
                auth: {{type: bearer, token: "${{file:{secret}}}"}}
            """,
        )
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, Bearer)
    assert grant.token is not None
    assert grant.token.reveal() == "abs-secret"


def test_missing_file_reference_is_a_missing_credential(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, value: "${file:nope.txt}"}
        """,
    )
    route = cfg.routes[0]
    assert len(route.missing) == 1
    assert "nope.txt" in route.missing[0]
    assert warnings_at(cfg, "routes[0].auth.value")


def test_bws_reference_needs_a_bws_block(tmp_path: Path) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth:
              type: api_key
              value: ${bws:0a1b2c}
        """,
    )
    assert (err.path, err.line) == ("routes[0].auth.value", 6)
    assert "top-level `bws:` block" in err.message


@pytest.mark.parametrize(
    ("raw", "words"),
    [("${}", "empty"), ("${1BAD}", "not a valid environment variable"), ("${vault:x}", "unknown reference")],
)
def test_malformed_references_are_errors(tmp_path: Path, raw: str, words: str) -> None:
    err = only_error(
        tmp_path,
        f"""\
        routes:
          - name: a
            match: a.example
            auth:
              type: api_key
              value: "{raw}"
        """,
    )
    assert (err.path, err.line) == ("routes[0].auth.value", 6)
    assert words in err.message


def test_unset_variable_in_auth_loads_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AP_UNSET_KEY", raising=False)
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: ok
            match: ok.example
            auth: {type: basic, username: u, password: "${AP_UNSET_PASS_OK}"}
          - name: a
            match: a.example
            auth:
              type: api_key
              value: ${AP_UNSET_KEY}
        """,
    )
    route = cfg.routes[1]
    assert len(route.missing) == 1
    assert "environment variable AP_UNSET_KEY" in route.missing[0]
    (warning,) = warnings_at(cfg, "routes[1].auth.value")
    assert warning.severity == "warning"
    assert warning.line == 9
    assert "AP_UNSET_KEY is not set" in warning.message
    # The other route's missing variable is its own, not shared.
    assert all("AP_UNSET_KEY" not in m for m in cfg.routes[0].missing)
    assert "AP_UNSET_PASS_OK" in cfg.routes[0].missing[0]


def test_set_variables_leave_nothing_missing(tmp_path: Path, key_env: str) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
        """,
    )
    assert cfg.routes[0].missing == ()


@pytest.mark.parametrize(
    ("key", "line_text", "extra"),
    [
        ("match", "match: ${AP_UNSET_HOST}", ""),
        ("gateway", "gateway: ${AP_UNSET_HOST}", "    upstream: https://u.example\n"),
        ("upstream", "upstream: https://${AP_UNSET_HOST}", "    match: m.example\n"),
    ],
)
def test_unset_variable_in_routing_keys_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key_env: str, key: str, line_text: str, extra: str
) -> None:
    monkeypatch.delenv("AP_UNSET_HOST", raising=False)
    text = f'routes:\n  - name: a\n    {line_text}\n{extra}    auth: {{type: api_key, value: "${{AP_TEST_KEY}}"}}\n'
    errs = errors_of(tmp_path, text)
    err = at(errs, f"routes[0].{key}")
    assert err.line == 3
    assert "AP_UNSET_HOST is not set" in err.message


def test_literal_secret_warns(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, value: sk_literal}
        """,
    )
    (warning,) = warnings_at(cfg, "routes[0].auth.value")
    assert warning.line == 4
    assert "literal secret" in warning.message
    assert "sk_literal" not in warning.message


def test_verify_false_warns(tmp_path: Path, key_env: str) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            verify: false
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
        """,
    )
    assert cfg.routes[0].verify is False
    (warning,) = warnings_at(cfg, "routes[0].verify")
    assert warning.line == 4


# ---------------------------------------------------------------- secrets never print


def test_secret_str_and_repr_hide_the_value() -> None:
    s = Secret("hunter2-very-secret", "${AP_PW}")
    assert str(s) == "****"
    assert "hunter2" not in repr(s)
    assert "${AP_PW}" in repr(s)
    assert "hunter2" not in f"{s} {s!r} {[s]}"
    literal = Secret("hunter2-literal", "hunter2-literal")
    assert "hunter2" not in repr(literal)
    assert literal.shown_source() == "****"


def test_value_keeps_its_source() -> None:
    v = Value("plain", "${AP_X}")
    assert v.source == "${AP_X}"
    assert not v.is_literal
    assert Value("a", "a").is_literal


def test_literal_secret_with_dollar_escape_is_masked(tmp_path: Path) -> None:
    # `p@$$word` is a literal secret (`$$` is just an escaped `$`): `check`
    # must show it as ****, not echo the password back.
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: basic, username: u, password: "p@$$w0rd-literal"}
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, Basic)
    assert grant.password.reveal() == "p@$w0rd-literal"
    assert dict(grant.sources()) == {"password": "****"}
    assert "w0rd-literal" not in repr(grant.password)


def test_repr_of_a_loaded_config_holds_no_secret(tmp_path: Path, key_env: str) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
          - name: b
            match: b.example
            auth: {type: basic, username: u, password: "${AP_TEST_KEY}"}
        """,
    )
    assert key_env not in repr(cfg)


# ---------------------------------------------------------------- api_key


def test_api_key_defaults_to_authorization_header(tmp_path: Path, key_env: str) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, value: "${AP_TEST_KEY}", prefix: "Bearer "}
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, ApiKey)
    assert (grant.header, grant.prefix, grant.query) == ("Authorization", "Bearer ", None)
    assert grant.sources() == [("value", "${AP_TEST_KEY}")]
    assert key_env not in repr(grant)


def test_api_key_query_parameter(tmp_path: Path, key_env: str) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, query: key, value: "${AP_TEST_KEY}"}
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, ApiKey)
    assert (grant.header, grant.query) == (None, "key")


def test_api_key_header_and_query_is_one_error(tmp_path: Path, key_env: str) -> None:
    errs = errors_of(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth:
              type: api_key
              value: ${AP_TEST_KEY}
              header: X-API-Key
              query: key
        """,
    )
    err = at(errs, "routes[0].auth.query")
    assert err.line == 8
    assert "not both" in err.message
    # `header` is a known key: it must not be reported as unknown as well.
    assert len(errs) == 1, [str(e) for e in errs]


def test_api_key_prefix_with_query_is_an_error(tmp_path: Path, key_env: str) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, query: key, prefix: "Bearer ", value: "${AP_TEST_KEY}"}
        """,
    )
    assert err.path == "routes[0].auth.prefix"


def test_api_key_bad_header_name(tmp_path: Path, key_env: str) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, header: "X API Key", value: "${AP_TEST_KEY}"}
        """,
    )
    assert err.path == "routes[0].auth.header"
    assert "not a valid header name" in err.message


def test_api_key_value_required(tmp_path: Path) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth:
              type: api_key
        """,
    )
    # A block mapping's own line is that of its first key.
    assert (err.path, err.line, err.message) == ("routes[0].auth", 5, "`value` is required")


@pytest.mark.parametrize("bad", ["line1\nline2", "abc\r", "\r\nX-Evil: 1"])
def test_crlf_in_env_value_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("AP_CRLF", bad)
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth:
              type: api_key
              value: ${AP_CRLF}
        """,
    )
    assert (err.path, err.line) == ("routes[0].auth.value", 6)
    assert "CR or LF" in err.message
    assert "X-Evil" not in err.message


def test_crlf_in_file_value_is_refused(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("one\ntwo\n")
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, value: "${file:k}"}
        """,
    )
    assert err.path == "routes[0].auth.value"


def test_crlf_in_prefix_is_refused(tmp_path: Path, key_env: str) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth:
              type: api_key
              value: ${AP_TEST_KEY}
              prefix: "Bearer\\r\\nX-Evil: 1 "
        """,
    )
    assert (err.path, err.line) == ("routes[0].auth.prefix", 7)
    assert "CR or LF" in err.message


def test_crlf_in_bearer_token_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AP_CRLF", "tok\nen")
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: bearer, token: "${AP_CRLF}"}
        """,
    )
    assert err.path == "routes[0].auth.token"


# ---------------------------------------------------------------- bearer


def test_bearer_token(tmp_path: Path, key_env: str) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: bearer, token: "${AP_TEST_KEY}"}
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, Bearer)
    assert grant.token_file is None
    assert grant.sources() == [("token", "${AP_TEST_KEY}")]


def test_bearer_token_file_relative_to_config(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: bearer, token_file: tokens/jwt}
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, Bearer)
    assert grant.token is None
    assert grant.token_file == tmp_path.resolve() / "tokens" / "jwt"
    assert grant.sources() == [("token_file", str(tmp_path.resolve() / "tokens" / "jwt"))]


@pytest.mark.parametrize(
    "auth",
    ["{type: bearer}", '{type: bearer, token: "${AP_TEST_KEY}", token_file: /tmp/t}'],
)
def test_bearer_needs_exactly_one_source(tmp_path: Path, key_env: str, auth: str) -> None:
    err = only_error(
        tmp_path,
        f"""\
        routes:
          - name: a
            match: a.example
            auth: {auth}
        """,
    )
    assert (err.path, err.line) == ("routes[0].auth", 4)
    assert "exactly one of `token` or `token_file`" in err.message


# ---------------------------------------------------------------- basic


def test_basic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AP_USER", "alice")
    monkeypatch.setenv("AP_PASS", "s3cret-basic-pw")
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: basic, username: "${AP_USER}", password: "${AP_PASS}"}
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, Basic)
    assert grant.username.reveal() == "alice"
    assert grant.sources() == [("password", "${AP_PASS}")]
    assert cfg.warnings == ()


def test_basic_username_with_colon(tmp_path: Path, key_env: str) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth:
              type: basic
              username: "a:b"
              password: ${AP_TEST_KEY}
        """,
    )
    assert (err.path, err.line) == ("routes[0].auth.username", 6)
    assert "`:`" in err.message


def test_basic_needs_both_fields(tmp_path: Path) -> None:
    errs = errors_of(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: basic}
        """,
    )
    assert sorted(e.message for e in errs) == ["`password` is required", "`username` is required"]
    assert all(e.path == "routes[0].auth" and e.line == 4 for e in errs)


# ---------------------------------------------------------------- client_credentials and password

CC_ENV = {"AP_CC_ID": "client-abc", "AP_CC_SECRET": "cc-secret-value-xyz"}


@pytest.fixture
def cc_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in CC_ENV.items():
        monkeypatch.setenv(k, v)


def test_client_credentials_defaults(tmp_path: Path, cc_env: None) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: billing
            match: api.billing.example
            auth:
              type: client_credentials
              token_url: https://id.billing.example/connect/token
              client_id: ${AP_CC_ID}
              client_secret: ${AP_CC_SECRET}
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, ClientCredentials)
    c = grant.client
    assert c.token_url.reveal() == "https://id.billing.example/connect/token"
    assert c.client_id is not None
    assert c.client_id.reveal() == "client-abc"
    assert c.client_auth == "client_secret_basic"
    assert c.body == "form"
    assert (c.scope, c.audience, c.extra) == (None, None, ())
    assert (c.refresh_skew, c.default_ttl) == (60.0, 300.0)
    assert grant.refresh_skew() == 60.0
    assert grant.fetches is True
    assert grant.sources() == [("client_secret", "${AP_CC_SECRET}")]
    assert "cc-secret-value-xyz" not in repr(grant)
    assert cfg.warnings == ()


def test_client_credentials_all_options(tmp_path: Path, cc_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AP_TENANT", "t-1")
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: billing
            match: api.billing.example
            auth:
              type: client_credentials
              token_url: https://id.billing.example/connect/token
              client_id: ${AP_CC_ID}
              client_secret: ${AP_CC_SECRET}
              client_auth: client_secret_post
              body: json
              scope: invoices.read
              audience: https://api.billing.example
              extra: {tenant: "${AP_TENANT}", resource: r}
              refresh_skew: 10
              default_ttl: 120
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, ClientCredentials)
    c = grant.client
    assert (c.client_auth, c.body, c.scope, c.audience) == (
        "client_secret_post",
        "json",
        "invoices.read",
        "https://api.billing.example",
    )
    assert {k: v.reveal() for k, v in c.extra} == {"tenant": "t-1", "resource": "r"}
    assert (c.refresh_skew, c.default_ttl) == (10.0, 120.0)
    assert c.base_params() == {
        "scope": "invoices.read",
        "audience": "https://api.billing.example",
        "tenant": "t-1",
        "resource": "r",
    }


def test_client_credentials_required_keys(tmp_path: Path) -> None:
    errs = errors_of(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth:
              type: client_credentials
        """,
    )
    # One problem per missing key; an absent `token_url` is not also "not an http URL".
    assert sorted(e.message for e in errs) == [
        "`client_id` is required",
        "`client_secret` is required",
        "`token_url` is required",
    ]
    assert all((e.path, e.line) == ("routes[0].auth", 5) for e in errs)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("client_auth", "client_secret_jot", "client_secret_basic, client_secret_post"),
        ("body", "xml", "form, json"),
        ("refresh_skew", "soon", "number"),
        ("default_ttl", "0", ">= 1"),
    ],
)
def test_client_credentials_bad_choices(tmp_path: Path, cc_env: None, key: str, value: str, words: str) -> None:
    err = only_error(
        tmp_path,
        f"""\
        routes:
          - name: a
            match: a.example
            auth:
              type: client_credentials
              token_url: https://id.example/token
              client_id: ${{AP_CC_ID}}
              client_secret: ${{AP_CC_SECRET}}
              {key}: {value}
        """,
    )
    assert (err.path, err.line) == (f"routes[0].auth.{key}", 9)
    assert words in err.message


def test_unset_client_secret_still_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AP_CC_ID", "id")
    monkeypatch.delenv("AP_CC_UNSET", raising=False)
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth:
              type: client_credentials
              token_url: https://id.example/token
              client_id: ${AP_CC_ID}
              client_secret: ${AP_CC_UNSET}
        """,
    )
    assert "AP_CC_UNSET" in cfg.routes[0].missing[0]
    assert warnings_at(cfg, "routes[0].auth.client_secret")[0].line == 8


def test_password_grant_public_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AP_PW", "resource-owner-pw")
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth:
              type: password
              token_url: https://id.example/oauth/token
              client_id: public-app
              username: alice
              password: ${AP_PW}
              body: json
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, Password)
    assert grant.client.client_secret is None
    assert grant.client.client_auth == "client_secret_basic"
    assert grant.client.body == "json"
    assert grant.username.reveal() == "alice"
    assert grant.sources() == [("password", "${AP_PW}")]
    assert cfg.warnings == ()


def test_password_grant_confidential_client_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cc_env: None
) -> None:
    monkeypatch.setenv("AP_PW", "resource-owner-pw")
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth:
              type: password
              token_url: https://id.example/oauth/token
              client_id: ${AP_CC_ID}
              client_secret: ${AP_CC_SECRET}
              username: alice
              password: ${AP_PW}
        """,
    )
    grant = cfg.routes[0].auth
    assert isinstance(grant, Password)
    shown = grant.sources()
    assert shown == [("client_secret", "${AP_CC_SECRET}"), ("password", "${AP_PW}")]
    for secret in ("resource-owner-pw", CC_ENV["AP_CC_SECRET"]):
        assert secret not in repr(shown)
        assert secret not in repr(grant)


def test_password_grant_requirements(tmp_path: Path, key_env: str) -> None:
    errs = errors_of(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth:
              type: password
              token_url: https://id.example/oauth/token
              client_secret: ${AP_TEST_KEY}
        """,
    )
    assert at(errs, "routes[0].auth.client_secret").line == 7
    assert "needs a `client_id`" in at(errs, "routes[0].auth.client_secret").message
    assert sorted(e.message for e in errs if e.path == "routes[0].auth") == [
        "`password` is required",
        "`username` is required",
    ]
    assert len(errs) == 3


# ---------------------------------------------------------------- masked credential lines


def test_masked_lines() -> None:
    cred = Credential(
        headers=(("Authorization", "Bearer abc.def.ghi"), ("X-API-Key", "sk_live_123")),
        query=(("key", "q-secret"),),
    )
    assert cred.masked_lines() == ["Authorization: Bearer ****", "X-API-Key: ****", "?key=****"]
    assert cred.shown_lines() == [
        "Authorization: Bearer abc.def.ghi",
        "X-API-Key: sk_live_123",
        "?key=q-secret",
    ]
    assert "abc.def" not in repr(cred)
    assert "q-secret" not in repr(cred)


def test_masked_basic_line() -> None:
    assert Credential(headers=(("Authorization", "Basic dTpw"),)).masked_lines() == ["Authorization: Basic ****"]


def test_credential_expiry() -> None:
    assert not Credential().expired()
    assert Credential(expires_at=100.0).expired(now=100.0)
    assert not Credential(expires_at=100.0).expired(now=99.0)


# ---------------------------------------------------------------- route shape


def test_route_fields_and_modes(tmp_path: Path, key_env: str) -> None:
    (tmp_path / "ca.pem").write_text("not really a cert\n")
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: intercepted
            match: API.Example.COM.
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
          - name: plain
            match: "plain.example:8080/v2/"
            upstream: http://plain.example:8080
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
          - name: legacy
            match: reports.example
            gateway: /reports/
            upstream: https://reports.example/base/
            ca_file: ca.pem
            auth: {type: api_key, header: X-API-Key, value: "${AP_TEST_KEY}"}
        """,
    )
    a, b, c = cfg.routes
    assert [r.name for r in cfg.routes] == ["intercepted", "plain", "legacy"]
    assert [r.index for r in cfg.routes] == [0, 1, 2]
    assert [r.line for r in cfg.routes] == [2, 5, 9]
    assert [r.mode for r in cfg.routes] == ["intercept", "plain", "gateway"]
    assert a.match is not None
    assert (a.match.host, a.match.wildcard, a.match.port, a.match.any_port, a.match.path) == (
        "api.example.com",
        False,
        None,
        False,
        "",
    )
    assert a.match.text == "API.Example.COM."
    assert a.upstream is None and a.gateway is None and a.verify is True
    assert b.match is not None
    assert (b.match.host, b.match.port, b.match.path) == ("plain.example", 8080, "/v2")
    assert b.upstream is not None
    assert (b.upstream.scheme, b.upstream.host, b.upstream.port, b.upstream.path) == (
        "http",
        "plain.example",
        8080,
        "",
    )
    assert c.gateway == "/reports"
    assert c.upstream is not None
    assert (c.upstream.scheme, c.upstream.port, c.upstream.path) == ("https", 443, "/base")
    assert c.ca_file == tmp_path.resolve() / "ca.pem"


@pytest.mark.parametrize(
    ("match", "expect"),
    [
        ('"*.example.com"', ("example.com", True, None, False, "")),
        ("a.example:*", ("a.example", False, None, True, "")),
        ("a.example:8443/v1/../v2", ("a.example", False, 8443, False, "/v2")),
        ('"[::1]:8443"', ("::1", False, 8443, False, "")),
        ("127.0.0.1", ("127.0.0.1", False, None, False, "")),
        ("Bücher.example.", ("xn--bcher-kva.example", False, None, False, "")),
        ('"*.Bücher.example"', ("xn--bcher-kva.example", True, None, False, "")),
        ("a.example/", ("a.example", False, None, False, "")),
    ],
)
def test_match_forms(tmp_path: Path, key_env: str, match: str, expect: tuple[object, ...]) -> None:
    cfg = load_text(
        tmp_path,
        f"""\
        routes:
          - name: a
            match: {match}
            auth: {{type: api_key, value: "${{AP_TEST_KEY}}"}}
        """,
    )
    m = cfg.routes[0].match
    assert m is not None
    assert (m.host, m.wildcard, m.port, m.any_port, m.path) == expect


@pytest.mark.parametrize(
    ("match", "words"),
    [
        ("a.*.example", "first label"),
        ('"*example.com"', "first label"),
        ("a.example:0", "port"),
        ("a.example:70000", "port"),
        ("a.example:http", "port"),
        ('"a.example:"', "port"),
        ("a.example/v2%2Fadmin", "encoded"),
        ("a.example/v2\\\\admin", "encoded"),
        ('"a b.example"', "not a valid host"),
    ],
)
def test_bad_match(tmp_path: Path, key_env: str, match: str, words: str) -> None:
    err = only_error(
        tmp_path,
        f"""\
        routes:
          - name: a
            match: {match}
            auth: {{type: api_key, value: "${{AP_TEST_KEY}}"}}
        """,
    )
    assert (err.path, err.line) == ("routes[0].match", 3)
    assert words in err.message


def test_gateway_without_upstream(tmp_path: Path, key_env: str) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: legacy
            gateway: /reports
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
        """,
    )
    assert (err.path, err.line) == ("routes[0].gateway", 3)
    assert "needs `upstream`" in err.message


def test_upstream_path_without_gateway(tmp_path: Path, key_env: str) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            upstream: https://a.example/api
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
        """,
    )
    assert (err.path, err.line) == ("routes[0].upstream", 4)
    assert "only used with `gateway`" in err.message


@pytest.mark.parametrize(
    "upstream",
    [
        "ftp://a.example",
        "https://",
        "https://u:p@a.example",
        "https://a.example/?q=1",
        "https://[::1",
        "https://a.example:99999",
        "https://a.example:0",
    ],
)
def test_bad_upstream(tmp_path: Path, key_env: str, upstream: str) -> None:
    err = only_error(
        tmp_path,
        f"""\
        routes:
          - name: a
            match: a.example
            upstream: "{upstream}"
            auth: {{type: api_key, value: "${{AP_TEST_KEY}}"}}
        """,
    )
    assert (err.path, err.line) == ("routes[0].upstream", 4)


@pytest.mark.parametrize("gateway", ["reports", "/", "/a/..", "/a/%2e%2e"])
def test_bad_gateway(tmp_path: Path, key_env: str, gateway: str) -> None:
    # `/a/..` is `/` after dot-segment removal: a prefix that would swallow every path.
    errs = errors_of(
        tmp_path,
        f"""\
        routes:
          - name: a
            gateway: "{gateway}"
            upstream: https://u.example
            auth: {{type: api_key, value: "${{AP_TEST_KEY}}"}}
        """,
    )
    assert at(errs, "routes[0].gateway").line == 3


def test_duplicate_gateway(tmp_path: Path, key_env: str) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            gateway: /reports
            upstream: https://u.example
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
          - name: b
            gateway: /reports/
            upstream: https://v.example
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
        """,
    )
    assert (err.path, err.line) == ("routes[1].gateway", 7)
    assert "already used by routes[0]" in err.message


def test_route_needs_match_or_gateway(tmp_path: Path, key_env: str) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
        """,
    )
    assert (err.path, err.line) == ("routes[0]", 2)
    assert "`match`, `gateway`" in err.message


@pytest.mark.parametrize("name", ["has space", "semi;colon", ""])
def test_bad_route_name(tmp_path: Path, key_env: str, name: str) -> None:
    errs = errors_of(
        tmp_path,
        f"""\
        routes:
          - name: "{name}"
            match: a.example
            auth: {{type: api_key, value: "${{AP_TEST_KEY}}"}}
        """,
    )
    assert at(errs, "routes[0].name").line == 2


def test_route_must_be_a_mapping(tmp_path: Path) -> None:
    err = only_error(tmp_path, "routes:\n  - just-a-string\n")
    assert (err.path, err.line) == ("routes[0]", 2)


def test_ca_file_must_exist(tmp_path: Path, key_env: str) -> None:
    err = only_error(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            ca_file: missing.pem
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
        """,
    )
    assert (err.path, err.line) == ("routes[0].ca_file", 4)


def test_config_objects_are_immutable(tmp_path: Path, key_env: str) -> None:
    cfg = load_text(
        tmp_path,
        """\
        routes:
          - name: a
            match: a.example
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
        """,
    )
    with pytest.raises(AttributeError):
        cfg.routes[0].name = "b"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.unmatched = "deny"  # type: ignore[misc]


def test_ca_files_and_extra_ca_file(tmp_path: Path, key_env: str) -> None:
    (tmp_path / "ca.pem").write_text("cert")
    (tmp_path / "ca-key.pem").write_text("key")
    (tmp_path / "corp.pem").write_text("roots")
    path = tmp_path / "routes.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            ca_cert: ca.pem
            ca_key: ca-key.pem
            extra_ca_file: corp.pem
            routes:
              - name: a
                match: a.example
                auth: {type: api_key, value: "${AP_TEST_KEY}"}
            """
        )
    )
    cfg = load(path)
    assert cfg.ca_cert == tmp_path / "ca.pem" and cfg.ca_key == tmp_path / "ca-key.pem"
    assert cfg.extra_ca_file == tmp_path / "corp.pem"


def test_ca_cert_without_key_and_missing_files_are_errors(tmp_path: Path, key_env: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            ca_cert: nowhere.pem
            extra_ca_file: also-nowhere.pem
            routes:
              - name: a
                match: a.example
                auth: {type: api_key, value: "${AP_TEST_KEY}"}
            """
        )
    )
    with pytest.raises(ConfigError) as exc:
        load(path)
    msgs = {(p.path, p.line): p.message for p in exc.value.problems if p.severity == "error"}
    assert msgs[("ca_cert", 1)].endswith("nowhere.pem is not a readable file")
    assert msgs[("extra_ca_file", 2)].endswith("also-nowhere.pem is not a readable file")
    assert msgs[("ca_key", 1)] == "give both `ca_cert` and `ca_key`, or neither"


def test_a_secret_in_the_wrong_key_is_never_quoted_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISPLACED_SECRET", "sk-live-misplaced-0001")
    path = tmp_path / "routes.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            unmatched: ${MISPLACED_SECRET}
            routes:
              - name: a
                match: a.example
                verify: ${MISPLACED_SECRET}
                auth: {type: api_key, value: "${MISPLACED_SECRET}", header: "${MISPLACED_SECRET} x"}
            """
        )
    )
    with pytest.raises(ConfigError) as exc:
        load(path)
    text = "\n".join(str(p) for p in exc.value.problems)
    assert "sk-live-misplaced-0001" not in text
    assert "routes[0].verify" in text and "unmatched" in text


# ---------------------------------------------------------------- hardening: limits, clear text, path rules


def test_max_connections_per_client_defaults_to_half_the_connection_limit(tmp_path: Path, key_env: str) -> None:
    route = textwrap.dedent(
        """\
        routes:
          - name: a
            match: api.example
            auth: {type: api_key, value: "${AP_TEST_KEY}"}
        """
    )
    assert load_text(tmp_path, route).limits.max_connections_per_client == 512
    assert load_text(tmp_path, "limits: {max_connections: 4096}\n" + route).limits.max_connections_per_client == 2048
    assert load_text(tmp_path, "limits: {max_connections: 1}\n" + route).limits.max_connections_per_client == 1
    cfg = load_text(tmp_path, "limits: {max_connections_per_client: 8}\n" + route)
    assert (cfg.limits.max_connections, cfg.limits.max_connections_per_client) == (1024, 8)
    err = only_error(tmp_path, "limits: {max_connections_per_client: 0}\n" + route)
    assert err.path == "limits.max_connections_per_client" and err.line == 1


_OAUTH_ROUTE = """\
    routes:
      - name: app
        match: api.example
        auth:
          type: {type}
          client_id: app
          {key}: {url}
          {more}
    """


def _oauth(type_: str, key: str, url: str) -> str:
    more = {
        "client_credentials": "client_secret: ${AP_TEST_KEY}",
        # issuer alone is enough; authorization_url needs token_url beside it.
        "authorization_code": "token_url: https://id.example/token" if key == "authorization_url" else "scope: x",
    }[type_]
    return _OAUTH_ROUTE.format(type=type_, key=key, url=url, more=more)


CLEAR_KEYS = [
    ("client_credentials", "token_url"),
    ("authorization_code", "issuer"),
    ("authorization_code", "authorization_url"),
]


@pytest.mark.parametrize(("type_", "key"), CLEAR_KEYS)
@pytest.mark.parametrize(
    "url",
    [
        "http://id.example/token",
        "http://foo.localhost/token",  # a name under .localhost is not loopback until resolved
        "http://localhost.evil.example/token",
        "http://10.0.0.1/token",
        "http://0.0.0.0/token",
        "http://2130706433/token",  # 127.0.0.1 as an integer: a spelling, not a literal
        "http://127.1/token",
    ],
)
def test_clear_text_oauth_url_is_a_config_error(tmp_path: Path, key_env: str, type_: str, key: str, url: str) -> None:
    err = only_error(tmp_path, _oauth(type_, key, url))
    assert err.path == f"routes[0].auth.{key}"
    assert err.line == 7
    assert "clear text" in err.message
    assert err.message.count(". ") == 0, err.message  # one sentence


@pytest.mark.parametrize(("type_", "key"), CLEAR_KEYS)
@pytest.mark.parametrize(
    "url",
    [
        "https://id.example/token",
        "http://127.0.0.1:8080/token",
        "http://127.9.8.7/token",
        "http://[::1]:9000/token",
        "http://[::ffff:127.0.0.1]/token",
        "http://localhost:9000/token",
        "http://LocalHost/token",
    ],
)
def test_loopback_or_https_oauth_url_is_accepted(tmp_path: Path, key_env: str, type_: str, key: str, url: str) -> None:
    cfg = load_text(tmp_path, _oauth(type_, key, url))
    assert cfg.routes[0].name == "app"


def test_clear_text_token_url_from_a_variable_is_refused_too(tmp_path: Path, key_env: str, monkeypatch) -> None:
    monkeypatch.setenv("AP_TOKEN_URL", "http://id.example/token")
    err = only_error(tmp_path, _oauth("client_credentials", "token_url", "${AP_TOKEN_URL}"))
    assert err.path == "routes[0].auth.token_url" and "clear text" in err.message


@pytest.mark.parametrize(
    "prefix", ["/v1/..;/admin", "/v1/.;x/y", "/v1/..%3B/admin", "/v1/;x/../admin", "/v1/%2e%2e/admin"]
)
def test_path_rules_that_servers_read_otherwise_are_config_errors(tmp_path: Path, key_env: str, prefix: str) -> None:
    errs = errors_of(
        tmp_path,
        f"""\
        routes:
          - name: a
            match: "api.example{prefix}"
            auth: {{type: api_key, value: "${{AP_TEST_KEY}}"}}
          - name: b
            match: b.example
            auth: {{type: api_key, value: "${{AP_TEST_KEY}}"}}
            allow: [{{paths: ["{prefix}"]}}]
        """,
    )
    assert {e.path for e in errs} == {"routes[0].match", "routes[1].allow[0].paths"}, [str(e) for e in errs]
