"""The redactor against generated secrets, hidden in generated text in every encoding.

Hypothesis draws secrets of 8 bytes or more from any printable character
(non-ASCII and beyond the BMP included), hides them at any offset in
surrounding text, in one encoding or two composed, and checks that nothing
derived from the secret survives. What "derived" means is computed here and
in ``tests/support/forms.py``, not by ``authproxy.secrecy.redact``: the Base64 runs
come from comparing two encodings, so an arithmetic slip in the module cannot
hide itself.

Surrounding text never shares a character with the secret, so that anything
left of the secret in the output is a leak, not a coincidence.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authproxy.config import load
from authproxy.credentials import oautherror
from authproxy.ops import accesslog
from authproxy.secrecy.redact import MASK, REDACTOR, Redactor, learn_header_values, redact_data

from .support.forms import lower_hex, secret_forms, stable_runs

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Printable, in every script: letters, marks, digits, punctuation, symbols, spaces.
_PRINTABLE = st.characters(categories=["L", "M", "N", "P", "S", "Zs"])
SECRETS = st.text(_PRINTABLE, min_size=2, max_size=40).filter(lambda s: len(s.encode()) >= 8)
# Unreserved ASCII (RFC 3986 §2.3): every encoding below leaves it as it is, and none of it
# starts an escape, so surrounding text made of it cannot be read as part of a secret's form.
_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


def _fresh(*secrets: str) -> Redactor:
    r = Redactor()
    r.learn(*secrets)
    return r


# -- text encodings: character by character, so encode(a + s + b) == encode(a) + encode(s) + encode(b)

TEXT_ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda t: t,
    "quote": lambda t: quote(t, safe=""),
    "quote keeping /": quote,
    "quote, lower-case hex": lambda t: lower_hex(quote(t, safe="")),
    "quote_plus (form encoding)": quote_plus,
    "quote_plus, lower-case hex": lambda t: lower_hex(quote_plus(t)),
    "JSON, ensure_ascii": lambda t: json.dumps(t)[1:-1],
    "JSON, native": lambda t: json.dumps(t, ensure_ascii=False)[1:-1],
    "JSON with \\/": lambda t: json.dumps(t)[1:-1].replace("/", "\\/"),
    "JSON-escaped form encoding": lambda t: json.dumps(quote_plus(t))[1:-1],
    "JSON-escaped percent encoding, lower hex": lambda t: json.dumps(lower_hex(quote(t, safe="")))[1:-1],
    "HTML": html.escape,
}


@PROPERTY
@given(secret=SECRETS, kind=st.sampled_from(sorted(TEXT_ENCODINGS)), data=st.data())
def test_every_text_encoding_is_masked_exactly(secret: str, kind: str, data: st.DataObject) -> None:
    encode = TEXT_ENCODINGS[kind]
    hidden = encode(secret)
    pool = [c for c in _UNRESERVED if c not in hidden and c not in secret]
    around = st.text(st.sampled_from(pool), max_size=12) if pool else st.just("")
    left, right = data.draw(around), data.draw(around)
    text = encode(left + secret + right)
    assert hidden in text  # the test hides what it thinks it hides
    assert _fresh(secret).redact(text) == encode(left) + MASK + encode(right)


# -- Base64: the secret (or its percent/form encoding) at any offset inside an encoded blob

_B64: dict[str, Callable[[bytes], str]] = {
    "standard": lambda b: base64.b64encode(b).decode(),
    "standard, unpadded": lambda b: base64.b64encode(b).decode().rstrip("="),
    "URL-safe": lambda b: base64.urlsafe_b64encode(b).decode(),
    "URL-safe, unpadded": lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="),
}
_OUTER: dict[str, Callable[[str], str]] = {
    "as is": lambda t: t,
    "percent-encoded": lambda t: quote(t, safe=""),
    "percent-encoded, lower hex": lambda t: lower_hex(quote(t, safe="")),
    "JSON with \\/": lambda t: t.replace("/", "\\/"),
}
_INNER: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "RFC 6749 §2.3.1 (quote)": lambda s: quote(s, safe=""),
    "form encoding": quote_plus,
}


def _alphabet(core: str, b64: str) -> str:
    return core.replace("+", "-").replace("/", "_") if b64.startswith("URL") else core


@PROPERTY
@given(
    secret=SECRETS,
    inner=st.sampled_from(sorted(_INNER)),
    b64=st.sampled_from(sorted(_B64)),
    outer=st.sampled_from(sorted(_OUTER)),
    data=st.data(),
)
def test_base64_at_every_offset_is_masked(secret: str, inner: str, b64: str, outer: str, data: st.DataObject) -> None:
    hidden = _INNER[inner](secret)
    others = st.characters(categories=["L", "N", "P", "S", "Zs"]).filter(lambda c: c not in secret + hidden)
    before = data.draw(st.text(others, max_size=7), label="before").encode()  # an id, and `:`, say
    after = data.draw(st.text(others, max_size=4), label="after").encode()
    middle = hidden.encode()
    blob = _OUTER[outer](_B64[b64](before + middle + after))
    text = f"Authorization: Basic {blob} (sent)"

    out = _fresh(secret).redact(text)

    core = stable_runs(middle, before, after)
    assert len(core) >= 10  # 8 bytes or more: 60 bits no other text shares by chance
    width = min(12, len(core))
    windows = {_OUTER[outer](_alphabet(core[i : i + width], b64)) for i in range(len(core) - width + 1)}
    assert any(w in text for w in windows)  # it was there before
    survivors = [w for w in windows if w in out]
    assert not survivors, f"{len(survivors)} pieces of the secret's Base64 survive"
    assert out.startswith("Authorization: Basic ") and out.endswith(" (sent)")


@PROPERTY
@given(secrets=st.lists(SECRETS, min_size=2, max_size=4, unique=True), data=st.data())
def test_several_secrets_in_one_text(secrets: list[str], data: st.DataObject) -> None:
    """Each secret in a form of its own, side by side: none survives, whichever holds another."""
    kinds = data.draw(st.lists(st.sampled_from(sorted(TEXT_ENCODINGS)), min_size=len(secrets), max_size=len(secrets)))
    parts = [TEXT_ENCODINGS[k](s) for k, s in zip(kinds, secrets, strict=True)]
    text = " | ".join(parts)
    out = _fresh(*secrets).redact(text)
    for s in secrets:
        assert s not in out
    for part in parts:
        assert part not in out


@PROPERTY
@given(secret=SECRETS)
def test_every_form_the_fixtures_grep_for_is_masked(secret: str) -> None:
    """What ``conftest.assert_no_secrets`` looks for, each form alone: the redactor finds it."""
    r = _fresh(secret)
    for form in secret_forms(secret):
        assert form not in r.redact(f"<{form}>"), "a form the fixtures grep for survives"


# -- lengths ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(secret=st.text(_PRINTABLE, min_size=1, max_size=7).filter(lambda s: 4 <= len(s.encode()) < 8))
def test_a_short_secret_is_masked_as_written(secret: str) -> None:
    assert _fresh(secret).redact(f"x {secret} y") == f"x {MASK} y"


def test_a_secret_under_four_bytes_is_left_alone() -> None:
    # Masking every "abc" everywhere would hide ordinary words and protect nothing.
    assert _fresh("abc").redact("abc abcd") == "abc abcd"


def test_the_longer_of_two_nested_secrets_is_masked_whole() -> None:
    r = _fresh("inner-secret-1", "outer-inner-secret-1-tail")
    assert r.redact("a outer-inner-secret-1-tail b inner-secret-1 c") == f"a {MASK} b {MASK} c"


# -- what it keeps ------------------------------------------------------------------------------


def test_a_slot_keeps_its_last_values_and_a_load_its_last_four() -> None:
    r = Redactor(per_slot=2)
    r.learn("token-number-1", slot="route:a")
    r.learn("token-number-2", slot="route:a")
    r.learn("token-number-3", slot="route:a")
    assert r.redact("token-number-1 token-number-2 token-number-3") == f"token-number-1 {MASK} {MASK}"
    for i in range(5):
        r.learn_config([f"config-secret-{i}"])
    assert r.redact("config-secret-0 config-secret-1 config-secret-4") == f"config-secret-0 {MASK} {MASK}"


def test_a_new_value_is_masked_in_a_text_seen_before() -> None:
    """Recent texts are remembered; learning a value forgets what they came out as."""
    r = _fresh("first-secret-value")
    text = "first-secret-value and later-secret-value"
    assert r.redact(text) == f"{MASK} and later-secret-value"
    r.learn("later-secret-value")
    assert r.redact(text) == f"{MASK} and {MASK}"


def test_a_header_value_and_its_token_are_both_learned() -> None:
    learn_header_values("test:redact-header", ["Bearer tok-abcdef-123456"])
    assert REDACTOR.redact("Bearer tok-abcdef-123456 / tok-abcdef-123456") == f"{MASK} / {MASK}"


def test_redact_data_walks_json_structures() -> None:
    REDACTOR.learn("status-secret-0x5eed", slot="test:redact-data")
    data = {"routes": [{"name": "a", "token": {"last_error": "saw status-secret-0x5eed", "fetches": 2}}]}
    assert redact_data(data) == {"routes": [{"name": "a", "token": {"last_error": f"saw {MASK}", "fetches": 2}}]}


# -- the log formatters ---------------------------------------------------------------------------


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError(f"failed with {args[0]}")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("authproxy.test", logging.ERROR, __file__, 1, message, args, info)


def test_formatters_mask_messages_and_tracebacks() -> None:
    secret = 'log-s3cret "quoted" /x'
    REDACTOR.learn(secret, slot="test:formatter")
    encoded = quote_plus(secret)
    for fmt in (accesslog.TextFormatter(), accesslog.JsonFormatter()):
        out = fmt.format(_record("token endpoint said %s", encoded, exc=True))
        assert "ValueError" in out and "Traceback" in out
        for form in secret_forms(secret):
            assert form not in out
        assert MASK in out


# -- what a token endpoint's error may say -----------------------------------------------------------


def test_oauth_error_code_must_be_a_short_token() -> None:
    assert oautherror.describe({"error": "invalid_client"}) == ("invalid_client", "invalid_client")
    assert oautherror.describe({"error": "x" * 65}) == (None, "an unreadable error")
    assert oautherror.describe({"error": "bad code <script>"}) == (None, "an unreadable error")
    assert oautherror.describe({"error": 42, "error_description": "hm"}) == (None, "an unreadable error: hm")
    assert oautherror.describe({"access_token": "x"}) is None


def test_oauth_error_description_is_redacted_then_one_short_line() -> None:
    secret = "descr-secret-€-1234"
    REDACTOR.learn(secret, slot="test:oauth-description")
    desc = f"client_secret={quote_plus(secret)}\r\nand\tmore " + "y" * 400
    code, text = oautherror.describe({"error": "invalid_client", "error_description": desc}) or (None, "")
    assert code == "invalid_client"
    assert text.startswith(f"invalid_client: client_secret={MASK} and more yyy")
    assert "\n" not in text and "\r" not in text and "\t" not in text
    assert len(text) <= len("invalid_client: ") + oautherror.MAX_DESCRIPTION
    assert text.endswith("…")


# -- what a load teaches it ---------------------------------------------------------------------------


def test_a_load_teaches_every_secret_and_warns_about_short_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RD_CLIENT_SECRET", "rd-client-secret-value")
    monkeypatch.setenv("RD_CLIENT_ID", "rd-client-id-not-secret")
    monkeypatch.setenv("RD_HELPER_ARG", "rd-helper-argument-secret")
    monkeypatch.setenv("RD_ADMIN_TOKEN", "rd-admin-token-0123456789")
    (tmp_path / "key.txt").write_text("rd-file-key-value\n")
    path = tmp_path / "routes.yaml"
    path.write_text(
        textwrap.dedent(
            """
            admin: {listen: "127.0.0.1:0", token: "${RD_ADMIN_TOKEN}"}
            routes:
              - name: cc
                match: a.example
                auth: {type: client_credentials, token_url: "https://idp.example/t",
                       client_id: "${RD_CLIENT_ID}", client_secret: "${RD_CLIENT_SECRET}"}
              - name: file
                match: b.example
                auth: {type: api_key, value: "${file:key.txt}"}
              - name: helper
                match: c.example
                auth: {type: command, argv: [get-token, "${RD_HELPER_ARG}"]}
              - name: short
                match: d.example
                auth: {type: basic, username: u, password: "shortpw"}
            """
        )
    )
    cfg = load(path)
    known = REDACTOR.known()
    learned = ("rd-client-secret-value", "rd-file-key-value", "rd-helper-argument-secret", "shortpw")
    for value in (*learned, "rd-admin-token-0123456789"):
        assert value in known
    assert "rd-client-id-not-secret" not in known  # a client id is no secret: log lines may name it
    short = [w for w in cfg.warnings if w.path == "routes[3].auth.password" and "under 8 bytes" in w.message]
    assert len(short) == 1, cfg.warnings
    assert "shortpw" not in str(short[0])
