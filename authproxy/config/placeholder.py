"""A route's placeholder keys in ``auth:``: what a workload holds instead of the secret.

``placeholder: VALUE | generate``, ``placeholder_env: NAME``,
``placeholder_in_path: true``, ``require: placeholder`` and
``stub_token_endpoint: true``. A placeholder is not a secret (the workload
is given it); the value it stands for is, and stays with the grant.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from authproxy.credentials.grants import Grant
from authproxy.credentials.grants.oauth import OAuthClientGrant
from authproxy.schema.yamlreader import Section

GENERATE = "generate"
# Visible ASCII without space, `"` or `\\`: it goes as is into a header value, a query
# string, a Basic user or password, JSON and a shell's single quotes (RFC 9110 §5.5).
_SHAPE = re.compile(r"[!#-\[\]-~]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SHORT = 16


@dataclass(frozen=True, slots=True)
class PlaceholderSpec:
    """A route's placeholder settings; ``value`` None means ``generate`` (kept in the state dir)."""

    value: str | None
    env: str | None
    in_path: bool
    required: bool
    stub_token_url: str | None  # the token_url the proxy answers itself, when stubbed


def parse_placeholder(sec: Section, grant: Grant | None) -> PlaceholderSpec | None:
    """Read the placeholder keys of an ``auth:`` block (before its ``finish``)."""
    text = sec.text("placeholder")
    env = sec.text("placeholder_env")
    in_path = sec.boolean("placeholder_in_path", False)
    # `require` names what a request must carry; a placeholder is the one thing it can name so far.
    required = sec.has("require") and sec.choice("require", ("placeholder",), "") == "placeholder"
    stub = sec.boolean("stub_token_endpoint", False)
    if text is None:
        for key in ("placeholder_env", "placeholder_in_path", "require", "stub_token_endpoint"):
            if sec.has(key):
                sec.error(key, "needs `placeholder` (a value, or `generate`)")
        return None
    value = None if text == GENERATE else text
    if value is not None:
        if not _SHAPE.fullmatch(value):
            sec.error("placeholder", 'use visible ASCII without spaces, `"` or `\\`')
        elif grant is not None and any(value == s.reveal() for s in grant.secrets() if not s.missing):
            sec.error("placeholder", "is the secret itself: the workload would hold the real value")
        elif len(value) < SHORT:
            sec.warn("placeholder", f"shorter than {SHORT} characters: it may turn up by chance in other requests")
    if env is not None and not _ENV_NAME.fullmatch(env):
        sec.error("placeholder_env", "must be an environment variable name (letters, digits, `_`)")
    return PlaceholderSpec(value, env, in_path, required, _stub_url(sec, grant) if stub else None)


def _stub_url(sec: Section, grant: Grant | None) -> str | None:
    if grant is None:
        return None
    client = getattr(grant, "client", None) if isinstance(grant, OAuthClientGrant) else None
    if client is None or client.token_url.missing or not client.token_url.text:
        sec.error("stub_token_endpoint", "needs a grant with a `token_url` (an OAuth grant)")
        return None
    return str(client.token_url.text)


def check_unique(top: Section, specs: Sequence[tuple[str, PlaceholderSpec | None]]) -> None:
    """Two routes with one placeholder could not tell their secrets apart (nor their hosts)."""
    seen: dict[str, str] = {}
    for name, spec in specs:
        if spec is None or spec.value is None:
            continue
        other = seen.setdefault(spec.value, name)
        if other != name:
            top.error("routes", f"routes {other} and {name} have the same `placeholder`")
