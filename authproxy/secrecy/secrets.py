"""Values that may come from the environment or a file, and secrets that never print.

A ``Value`` remembers the text the user wrote (``${BILLING_CLIENT_SECRET}``) so
that ``check`` and error messages can name a secret by its source. ``Secret``
is a ``Value`` whose ``str``/``repr`` are masked: an accidental f-string or a
traceback's locals show ``****``, never the credential.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

_REF = re.compile(r"\$(\$|\{([^}]*)\})")
# A reference proper, skipping `$$` escapes.
_REF_ONLY = re.compile(r"(?<!\$)(?:\$\$)*\$\{")


class UnsupportedReference(ValueError):
    """A reference whose kind a later release handles."""


class Unresolved(Exception):
    """Raised by a ``${bws:...}`` resolver: the value cannot be had now; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Value:
    """An interpolated configuration string.

    ``missing`` lists the references that could not be resolved (unset
    variables, unreadable files); ``text`` then holds empty strings in their
    place and must not be used to talk to anyone.
    """

    text: str
    source: str
    missing: tuple[str, ...] = ()

    @property
    def is_literal(self) -> bool:
        """Written in the file as is: no reference to resolve (``$$`` is still literal)."""
        return _REF_ONLY.search(self.source) is None

    def reveal(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True, repr=False)
class Secret(Value):
    """A ``Value`` that is a credential: masked wherever it might be printed."""

    def __str__(self) -> str:
        return "****"

    def __repr__(self) -> str:
        return f"Secret({self.shown_source()})"

    def shown_source(self) -> str:
        """How ``check`` shows it: the reference, or ``****`` for a literal."""
        return "****" if self.is_literal else self.source


def interpolate(
    raw: str,
    base_dir: Path | None = None,
    bws: Callable[[str], str] | None = None,
    resolved: list[str] | None = None,
) -> tuple[str, tuple[str, ...]]:
    """Resolve ``${VAR}``, ``${file:PATH}``, ``${bws:SECRET_ID}`` and ``$$`` in ``raw``.

    Returns the text and the references that could not be resolved. Raises
    ``ValueError`` for a malformed reference. ``bws`` fetches a Secrets
    Manager secret (``bws.Resolver``), raising ``Unresolved`` when it cannot.
    Every value substituted in is appended to ``resolved``, so that messages
    about the config can be kept free of them.
    """
    missing: list[str] = []

    def resolve(m: re.Match[str]) -> str:
        out = _resolve(m, base_dir, bws, missing)
        if resolved is not None and m.group(1) != "$" and out:
            resolved.append(out)
        return out

    text = _REF.sub(resolve, raw)
    return text, tuple(missing)


def _resolve(m: re.Match[str], base_dir: Path | None, bws: Callable[[str], str] | None, missing: list[str]) -> str:
    """One reference's value; what cannot be had is appended to ``missing`` and stands as ``""``."""
    if m.group(1) == "$":
        return "$"
    ref = m.group(2).strip()
    if not ref:
        raise ValueError("empty reference `${}`")
    kind, sep, arg = ref.partition(":")
    if not sep:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", ref):
            raise ValueError(f"`${{{ref}}}` is not a valid environment variable name")
        val = os.environ.get(ref)
        if val is None:
            missing.append(f"environment variable {ref} is not set")
            return ""
        return val
    if kind == "file":
        path = Path(arg).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        try:
            # A trailing newline is an editor's habit, not part of the secret.
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            missing.append(f"file {path} cannot be read ({exc.strerror or 'unreadable'})")
            return ""
    if kind == "bws":
        if bws is None:
            raise ValueError(
                "`${bws:...}` works in values under `routes:`, with a top-level `bws:` block "
                "(access_token, and region or identity_url + api_url)"
            )
        try:
            return bws(arg)
        except Unresolved as exc:
            missing.append(str(exc))
            return ""
    raise ValueError(f"unknown reference kind `{kind}:` (use ${{VAR}}, ${{file:PATH}} or ${{bws:SECRET_ID}})")


def secrets_in(value: object) -> Iterator[Secret]:
    """Every ``Secret`` in an object, however deep (a ``Config``: its grants, ``admin.token``, ``bws``):
    found by type, so a key added later cannot be missed by a list of names."""
    if isinstance(value, Secret):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from secrets_in(getattr(value, f.name))
    elif isinstance(value, (tuple, list, frozenset, set)):
        for item in value:
            yield from secrets_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from secrets_in(item)
