"""Typed reads from a YAML mapping that keep the path and line of every value.

``yaml.compose`` gives nodes with ``start_mark``; reading through a
``Section`` records every problem (with ``routes[2].auth.token_url`` and the
line) instead of stopping at the first one, and ``finish()`` reports keys
nobody read: a typo must not silently drop a credential.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from authproxy.schema.problems import Problems
from authproxy.secrecy.redact import MIN_ENCODED, MIN_RAW, REDACTOR, Redactor
from authproxy.secrecy.secrets import Secret, UnsupportedReference, Value, interpolate

_TRUE = {"true", "yes", "on"}
_REF = re.compile(r"\$\{([^}\n]*)\}")
_TOKEN = re.compile(r"\$__authproxy_ref_(\d+)__")
_INDEX = re.compile(r"\[\d+\]")

# Every key the parser has asked for, as a path pattern (``routes[].auth.token_url``;
# ``*`` for a name the user chooses, as in ``proxy_auth.users.*``): the parser's own
# list of the keys it accepts, which the configuration manual is checked against.
KEYS: set[str] = set()


@dataclass(slots=True)
class Document:
    """What every section of one file shares."""

    problems: Problems
    base_dir: Path
    refs: list[str] = field(default_factory=list)
    # Resolves ``${bws:SECRET_ID}`` (a ``bws.Resolver``), once the top-level `bws:` block is read.
    bws: Callable[[str], str] | None = None
    # Every value a reference resolved to: never quoted back in a message.
    resolved: list[str] = field(default_factory=list)
    # Every secret value read (``Secret`` keys, ``${bws:...}`` values, an access
    # token's parts): the process's redactor learns them once the file loads.
    secrets: list[str] = field(default_factory=list)
    # The redactor of this file's messages: it knows every resolved value, since a
    # secret may sit in the wrong key (``verify: ${API_KEY}``).
    _messages: Redactor = field(default_factory=Redactor)
    _told: int = 0

    def scrub(self, message: str) -> str:
        """A message about the config with no resolved value in it, in any form the redactor knows."""
        if self._told < len(self.resolved):
            self._messages.learn(*self.resolved[self._told :])
            self._told = len(self.resolved)
        return REDACTOR.redact(self._messages.redact(message))

    def keep_secret(self, text: str) -> None:
        if text:
            self.secrets.append(text)

    def resolve_bws(self, secret_id: str) -> str:
        """``${bws:SECRET_ID}``: whatever key it stands in, a Secrets Manager value is a secret."""
        assert self.bws is not None
        value = self.bws(secret_id)
        self.keep_secret(value)
        return value

    def protect(self, text: str) -> str:
        """Hide ``${...}`` from the YAML parser.

        In a flow mapping (``auth: {type: api_key, value: ${KEY}}``) the
        braces are YAML syntax; a placeholder made of plain-scalar characters
        keeps every line where it was, so reported line numbers stay true.
        """

        def hide(m: re.Match[str]) -> str:
            self.refs.append(m.group(0))
            return f"$__authproxy_ref_{len(self.refs) - 1}__"

        return _REF.sub(hide, text)

    def restore(self, text: str) -> str:
        if "$__authproxy_ref_" not in text:
            return text
        return _TOKEN.sub(lambda m: self.refs[int(m.group(1))], text)


_FALSE = {"false", "no", "off"}


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class Section:
    """One YAML mapping, read key by key."""

    def __init__(
        self,
        node: yaml.MappingNode,
        path: str,
        doc: Document,
        missing: list[str] | None = None,
        pattern: str | None = None,
    ) -> None:
        self.node = node
        self.path = path
        self.pattern = _INDEX.sub("[]", path) if pattern is None else pattern
        self._named = False  # its keys are names the user chose (``names()`` was asked)
        self.doc = doc
        self.problems = problems = doc.problems
        self.base_dir = doc.base_dir
        # References that could not be resolved; shared with child sections so a
        # route can say which variable keeps it from working.
        self.missing = missing if missing is not None else []
        self._items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        self._read: set[str] = set()
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if not isinstance(key, str):
                problems.error(path, line_of(k), "keys must be strings")
                continue
            if key in self._items:
                problems.error(self.sub(key), line_of(k), f"`{key}` is given twice")
            self._items[key] = (k, v)

    @property
    def line(self) -> int:
        return line_of(self.node)

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self._items

    def names(self) -> list[str]:
        """The keys as given, when they are names the user chooses (users, extra parameters)."""
        self._named = True
        return list(self._items)

    def _pattern(self, key: str) -> str:
        key = "*" if self._named else key
        return f"{self.pattern}.{key}" if self.pattern else key

    def is_mapping(self, key: str) -> bool:
        item = self._items.get(key)
        return item is not None and isinstance(item[1], yaml.MappingNode)

    def line_at(self, key: str) -> int:
        return line_of(self._items[key][1]) if key in self._items else self.line

    def error(self, key: str | None, message: str) -> None:
        message = self.doc.scrub(message)
        if key is None:
            self.problems.error(self.path, self.line, message)
        else:
            self.problems.error(self.sub(key), self.line_at(key), message)

    def warn(self, key: str | None, message: str) -> None:
        message = self.doc.scrub(message)
        if key is None:
            self.problems.warn(self.path, self.line, message)
        else:
            self.problems.warn(self.sub(key), self.line_at(key), message)

    def _node(self, key: str, required: bool) -> yaml.Node | None:
        self._read.add(key)
        KEYS.add(self._pattern(key))
        item = self._items.get(key)
        if item is None:
            if required:
                self.error(None, f"`{key}` is required")
            return None
        if isinstance(item[1], yaml.ScalarNode) and item[1].tag.endswith(":null"):
            if required:
                self.error(key, f"`{key}` is required")
            return None
        return item[1]

    def _scalar(self, key: str, required: bool) -> str | None:
        node = self._node(key, required)
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode):
            self.error(key, "must be a single value, not a list or mapping")
            return None
        return self.doc.restore(str(node.value))

    def _interpolate(self, key: str, raw: str) -> tuple[str, tuple[str, ...]] | None:
        try:
            bws = self.doc.resolve_bws if self.doc.bws is not None else None
            return interpolate(raw, self.base_dir, bws, self.doc.resolved)
        except UnsupportedReference as exc:
            self.error(key, str(exc))
        except ValueError as exc:
            self.error(key, f"{exc}")
        return None

    def value(self, key: str, *, required: bool = False) -> Value | None:
        """A string that may stay unresolved: the route then answers 502."""
        raw = self._scalar(key, required)
        if raw is None:
            return None
        res = self._interpolate(key, raw)
        if res is None:
            return None
        text, missing = res
        self._note_missing(key, missing)
        return Value(text, raw, missing)

    def secret(self, key: str, *, required: bool = False) -> Secret | None:
        """A ``value`` that is a credential: kept from every output, and warned about when written literally."""
        val = self.value(key, required=required)
        if val is None:
            return None
        text, raw = val.text, val.source
        self.doc.keep_secret(text)
        if "${" not in raw:
            self.warn(key, "a literal secret in the file; prefer ${VAR} or ${file:PATH}")
        if text and len(text.encode()) < MIN_ENCODED:
            self.warn(
                key,
                f"a secret under {MIN_ENCODED} bytes; logs and error bodies are kept free of it only as written,"
                f" not encoded (and not at all under {MIN_RAW} bytes)",
            )
        return Secret(text, raw, val.missing)

    def _note_missing(self, key: str, missing: tuple[str, ...]) -> None:
        for what in missing:
            self.missing.append(what)
            self.warn(key, f"{what}; this route answers 502 until that is fixed")

    def text(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        """A string that must resolve now (hosts, paths, URLs)."""
        raw = self._scalar(key, required)
        if raw is None:
            return default
        res = self._interpolate(key, raw)
        if res is None:
            return default
        text, missing = res
        if missing:
            self.error(key, missing[0])
            return default
        return text

    def source(self, key: str) -> str | None:
        """The value as written, references unresolved (what ``Secret.source`` keeps); no problem reported."""
        item = self._items.get(key)
        if item is None or not isinstance(item[1], yaml.ScalarNode):
            return None
        return self.doc.restore(str(item[1].value))

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        val = self.text(key)
        if val is None:
            return default
        if val not in choices:
            self.error(key, f"must be one of {', '.join(choices)}, not `{val}`")
            return default
        return val

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        val = self.text(key)
        if val is None:
            return default
        try:
            num = float(val)
        except ValueError:
            self.error(key, f"must be a number, not `{val}`")
            return default
        if num != num or num < minimum or num == float("inf"):
            self.error(key, f"must be a finite number >= {minimum:g}")
            return default
        return num

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        val = self.text(key)
        if val is None:
            return default
        mult = 1
        low = val.strip().lower()
        # Sizes read better with a unit: 64KiB, 1MiB.
        for suffix, factor in (("kib", 1024), ("mib", 1024**2), ("gib", 1024**3)):
            if low.endswith(suffix):
                mult, low = factor, low[: -len(suffix)].strip()
                break
        try:
            num = int(low) * mult
        except ValueError:
            self.error(key, f"must be a whole number, not `{val}`")
            return default
        if num < minimum:
            self.error(key, f"must be at least {minimum}")
            return default
        return num

    def boolean(self, key: str, default: bool) -> bool:
        val = self.text(key)
        if val is None:
            return default
        if val.lower() in _TRUE:
            return True
        if val.lower() in _FALSE:
            return False
        self.error(key, f"must be true or false, not `{val}`")
        return default

    def section(self, key: str, *, required: bool = False) -> Section | None:
        node = self._node(key, required)
        if node is None:
            return None
        if not isinstance(node, yaml.MappingNode):
            self.error(key, "must be a mapping (key: value lines)")
            return None
        return Section(node, self.sub(key), self.doc, self.missing, self._pattern(key))

    def _list(
        self, key: str, required: bool = False, not_a_list: str = "must be a list"
    ) -> yaml.SequenceNode | None:
        """The list at ``key``, or None (absent, or reported as not a list)."""
        node = self._node(key, required)
        if node is None:
            return None
        if not isinstance(node, yaml.SequenceNode):
            self.error(key, not_a_list)
            return None
        return node

    def sections(self, key: str) -> Iterator[Section]:
        """The mappings of a list, each with its index in the path."""
        node = self._list(key)
        if node is None:
            return
        for i, item in enumerate(node.value):
            path = f"{self.sub(key)}[{i}]"
            if not isinstance(item, yaml.MappingNode):
                self.problems.error(path, line_of(item), "must be a mapping (key: value lines)")
                continue
            yield Section(item, path, self.doc, [], f"{self._pattern(key)}[]")

    def str_list(self, key: str) -> list[str] | None:
        node = self._list(key)
        if node is None:
            return None
        out = []
        for i, item in enumerate(node.value):
            if not isinstance(item, yaml.ScalarNode):
                self.problems.error(f"{self.sub(key)}[{i}]", line_of(item), "must be a string")
                continue
            res = self._interpolate(key, self.doc.restore(str(item.value)))
            if res is not None:
                out.append(res[0])
        return out

    def value_items(
        self, key: str, *, required: bool = False, not_a_list: str = "must be a list"
    ) -> list[Value | None] | None:
        """A list of strings that may stay unresolved, as ``value`` reads one: one entry per item.

        A broken item is reported at its own path and line and stands as None,
        so the caller still sees how many items were written.
        """
        node = self._list(key, required, not_a_list)
        if node is None:
            return None
        out: list[Value | None] = []
        for i, item in enumerate(node.value):
            res = None
            if isinstance(item, yaml.ScalarNode) and not item.tag.endswith(":null"):
                raw = self.doc.restore(str(item.value))
                res = self._interpolate(key, raw)
            else:
                self.problems.error(f"{self.sub(key)}[{i}]", line_of(item), "must be a string")
            if res is None:
                out.append(None)
                continue
            text, missing = res
            self._note_missing(key, missing)
            out.append(Value(text, raw, missing))
        return out

    def str_items(self, key: str) -> list[tuple[str, str, int]] | None:
        """A list of strings, each with its own path (``key[2]``) and line, for judging entries one by one."""
        node = self._list(key)
        if node is None:
            return None
        out = []
        for i, item in enumerate(node.value):
            path, line = f"{self.sub(key)}[{i}]", line_of(item)
            if not isinstance(item, yaml.ScalarNode):
                self.problems.error(path, line, "must be a string")
                continue
            res = self._interpolate(key, self.doc.restore(str(item.value)))
            if res is None:
                continue
            text, missing = res
            if missing:
                self.problems.error(path, line, missing[0])
                continue
            out.append((text, path, line))
        return out

    def str_map(self, key: str) -> dict[str, Value] | None:
        sec = self.section(key)
        if sec is None:
            return None
        out = {}
        for name in sec.names():
            val = sec.value(name)
            if val is not None:
                out[name] = val
        return out

    def finish(self) -> None:
        """Report keys nobody read: an unknown key is an error, never ignored."""
        for key, (knode, _) in self._items.items():
            if key not in self._read:
                self.problems.error(self.sub(key), line_of(knode), f"unknown key `{key}`")
