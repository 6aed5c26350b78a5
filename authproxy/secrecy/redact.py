"""One redactor for the whole process: it knows every secret, and every output passes through it.

What it knows (``REDACTOR``):

- the secrets of the configuration, learned by ``config.load``: every
  ``Secret`` in the loaded ``Config``, found by type (``${VAR}``,
  ``${file:}``, ``${bws:}`` or literal; ``admin.token`` too), every
  ``${bws:...}`` value wherever it is used, and the client secret and key of a
  Bitwarden access token. The last few loads are kept, so a secret a reload
  replaced stays hidden while requests of the old table finish;
- the credentials obtained at run time, each under a slot (a route): access
  tokens and the header values injected, refresh tokens as stored and as
  rotated, the Bitwarden JWT, a ``command`` helper's output. Each slot keeps
  its last few values, so a proxy that refreshes for months keeps a bounded
  set.

What it replaces, with ``****``, for a value of ``MIN_ENCODED`` bytes or more:

- the value as written, percent-encoded with any set of characters left bare
  and hex digits in either case (``quote``, ``quote_plus``,
  ``application/x-www-form-urlencoded``), JSON-escaped (``\\"``, ``\\\\``,
  ``\\/``, ``\\uXXXX`` in either case, surrogate pairs for characters beyond
  the BMP), HTML-escaped, and any character-by-character mix of these (a
  JSON-escaped form encoding is one);
- Base64, standard or URL-safe alphabet, padded or not, of any byte string
  that holds the value (or its percent-, form- or JSON-encoding) at any
  offset: Base64 encodes 3 bytes as 4 characters (RFC 4648 §4, §5), so for
  each of the three offsets modulo 3 there is a run of characters that the
  value's bytes alone determine; that run is replaced wherever it appears, and
  so ``Basic base64(id:secret)`` and RFC 6749 §2.3.1's
  ``base64(form(id):form(secret))`` are caught whatever the id. Each of the
  run's characters may itself be percent-encoded or JSON-escaped (a
  percent-encoded Basic value).

A shorter value is replaced only as written, and one under ``MIN_RAW`` bytes
not at all: masking every ``abc`` in every message would hide ordinary words
and protect nothing a guess would not find. ``authproxy check`` warns about
every secret under ``MIN_ENCODED`` bytes.

Cost: a value is compiled into one pattern when a redaction first needs it
after the set changed (one to a few milliseconds), and a redaction runs the
patterns in turn, longest value first: 2-3 microseconds per known value for a
200-character line; a text seen recently (an error body under a flood) is a
dictionary lookup. Nothing calls it for a request that succeeds: it runs on
log messages (not access lines), error bodies, the status views and the
command line's output.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import TypeVar, cast
from urllib.parse import quote, quote_plus

__all__ = [
    "MASK",
    "MIN_ENCODED",
    "MIN_RAW",
    "REDACTOR",
    "Redactor",
    "derived_forms",
    "learn_header_values",
    "redact",
    "redact_data",
]

MASK = "****"
MIN_ENCODED = 8  # bytes (UTF-8): from here on, every form is redacted
MIN_RAW = 4  # bytes: from here on, the value as written

# Recent short texts and what they came out as: an error body repeats under a flood of bad requests.
_MEMO_SIZE = 256
_MEMO_TEXT = 1024

_HEX = "0123456789ABCDEF"
# JSON's two-character escapes (RFC 8259 §7), `\/` included: some encoders escape `/`.
_JSON_SHORT = {'"': '"', "\\": "\\", "/": "/", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t"}
_HTML = {
    "&": ("&amp;",),
    "<": ("&lt;",),
    ">": ("&gt;",),
    '"': ("&quot;", "&#34;"),
    "'": ("&#x27;", "&#39;"),
}


def _hex_digit(n: int) -> str:
    d = _HEX[n]
    return d if d.isdigit() else f"[{d}{d.lower()}]"


def _hex_byte(b: int) -> str:
    return _hex_digit(b >> 4) + _hex_digit(b & 15)


def _json_u(code: int) -> str:
    return r"\\u" + "".join(_hex_digit((code >> shift) & 15) for shift in (12, 8, 4, 0))


def _char(c: str) -> str:
    """Every spelling of one character: raw, percent-encoded, `+` for space, JSON- and HTML-escaped."""
    alts = [re.escape(c), "".join("%" + _hex_byte(b) for b in c.encode())]
    if c == " ":
        alts.append(r"\+")
    code = ord(c)
    if code > 0xFFFF:
        v = code - 0x10000
        alts.append(_json_u(0xD800 + (v >> 10)) + _json_u(0xDC00 + (v & 0x3FF)))
    else:
        alts.append(_json_u(code))
    if c in _JSON_SHORT:
        alts.append(r"\\" + re.escape(_JSON_SHORT[c]))
    alts += [re.escape(h) for h in _HTML.get(c, ())]
    # Escapes before the bare character: `&amp;` must not match as `&` and leave `amp;` behind.
    alts.sort(key=len, reverse=True)
    return "(?:" + "|".join(alts) + ")"


# A Base64 character, as the standard or URL-safe alphabet has it, percent-encoded or JSON-escaped.
_B64_CHAR = {"+": r"(?:\+|-|%2[bB])", "/": r"(?:/|_|%2[fF]|\\/)"}


def base64_runs(data: bytes) -> list[str]:
    """For each offset of ``data`` modulo 3 in a longer byte string, the Base64 characters
    that ``data`` alone determines (standard alphabet, RFC 4648 §4).

    At offset ``k`` the value's bits start at bit ``8k`` of a 3-byte group;
    character ``i`` carries bits ``6i`` to ``6i + 6``, so the characters from
    ``ceil(8k / 6)`` to ``floor((8k + 8n) / 6)`` hold nothing but the value's
    bits, whatever surrounds it.
    """
    runs = []
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + data).decode("ascii")
        start, end = -(-8 * k // 6), (8 * k + 8 * len(data)) // 6
        if end > start:
            runs.append(enc[start:end])
    return runs


def _encodings(value: str) -> list[str]:
    """The texts whose Base64 is looked for: the value, and its percent-, form- and JSON-encodings."""
    out = [value]
    for enc in (quote(value, safe=""), quote_plus(value), quote(value)):
        out += [enc, re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), enc)]
    for js in (json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]):
        out += [js, js.replace("/", "\\/")]  # some encoders escape `/` (RFC 8259 §7 allows it)
    return list(dict.fromkeys(out))


_URL_SAFE = str.maketrans("+/", "-_")


def derived_forms(value: str) -> list[str]:
    """The literal spellings of ``value`` that an output may carry, longest first.

    What the patterns below find, each spelling as one encoder writes it
    (rather than their character-by-character mixes): the value, its
    percent-, form- and JSON-encodings, and the Base64 runs of each, in the
    standard and URL-safe alphabets (RFC 4648 §4, §5). The response scrubber
    looks for these with ``bytes.find``. Under ``MIN_ENCODED`` bytes the
    value as written only, under ``MIN_RAW`` nothing, as for the patterns.
    """
    size = len(value.encode())
    if size < MIN_RAW:
        return []
    if size < MIN_ENCODED:
        return [value]
    out = _encodings(value)
    for text in list(out):
        for run in base64_runs(text.encode()):
            out += [run, run.translate(_URL_SAFE)]
    return sorted(dict.fromkeys(out), key=lambda f: -len(f.encode()))


def _pattern(value: str) -> re.Pattern[str] | None:
    size = len(value.encode())
    if size < MIN_RAW:
        return None
    if size < MIN_ENCODED:
        return re.compile(re.escape(value))
    alts = ["".join(_char(c) for c in value)]
    for text in _encodings(value):
        for run in base64_runs(text.encode()):
            alts.append("".join(_B64_CHAR.get(c, c) for c in run))
    return re.compile("|".join(dict.fromkeys(alts)))


class Redactor:
    """Known values and the patterns that find them in any text.

    Thread-safe: a reload loads the config in a thread while the event loop
    writes logs. Patterns are compiled when a redaction first needs them
    after the set changed (values arrive rarely; output is more frequent).
    """

    def __init__(self, *, loads: int = 4, per_slot: int = 8, slots: int = 1024) -> None:
        self._lock = threading.Lock()
        self._fixed: set[str] = set()
        self._loads: deque[frozenset[str]] = deque(maxlen=loads)
        self._per_slot = per_slot
        self._max_slots = slots
        self._slots: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()
        self._compiled: dict[str, re.Pattern[str] | None] = {}
        # The patterns in order, and what recent texts came out as (an error body
        # repeats): None when the set changed since, swapped whole so that a
        # redaction running meanwhile never files a result under the new set.
        self._state: tuple[tuple[re.Pattern[str], ...], dict[str, str]] | None = ((), {})

    def learn(self, *values: str, slot: str | None = None) -> None:
        """Know ``values``: for good, or as the newest of ``slot`` (which keeps its last few)."""
        usable = [v for v in values if isinstance(v, str) and len(v.encode()) >= MIN_RAW]
        if not usable:
            return
        with self._lock:
            if slot is None:
                fresh = [v for v in usable if v not in self._fixed]
                self._fixed.update(fresh)
                changed = bool(fresh)
            else:
                changed = self._learn_slot(slot, usable)
            if changed:
                self._state = None

    def _learn_slot(self, slot: str, values: list[str]) -> bool:
        kept = self._slots.get(slot)
        if kept is None:
            kept = self._slots[slot] = OrderedDict()
            while len(self._slots) > self._max_slots:
                self._slots.popitem(last=False)
        self._slots.move_to_end(slot)
        changed = False
        for v in values:
            if v in kept:
                kept.move_to_end(v)
                continue
            kept[v] = None
            changed = True
        while len(kept) > self._per_slot:
            kept.popitem(last=False)
        return changed

    def learn_config(self, values: Iterable[str]) -> None:
        """The secrets of one configuration load; the last few loads stay known."""
        load = frozenset(v for v in values if len(v.encode()) >= MIN_RAW)
        with self._lock:
            if self._loads and self._loads[-1] == load:
                return
            self._loads.append(load)
            self._state = None

    def known(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._values())

    def _values(self) -> set[str]:
        values = set(self._fixed)
        for load in self._loads:
            values |= load
        for kept in self._slots.values():
            values.update(kept)
        return values

    def _prepare(self) -> tuple[tuple[re.Pattern[str], ...], dict[str, str]]:
        with self._lock:
            if self._state is not None:
                return self._state
            # Longest first: a value that holds another is masked whole, not around the shorter one.
            ordered = sorted(self._values(), key=lambda v: (-len(v.encode()), v))
            compiled: dict[str, re.Pattern[str] | None] = {}
            for v in ordered:
                compiled[v] = self._compiled[v] if v in self._compiled else _pattern(v)
            self._compiled = compiled
            self._state = (tuple(p for p in compiled.values() if p is not None), {})
            return self._state

    def redact(self, text: str) -> str:
        """``text`` with every known value, in every form it knows, replaced by ``****``."""
        state = self._state
        if state is None:
            state = self._prepare()
        patterns, memo = state
        if not patterns:
            return text
        hit = memo.get(text)
        if hit is not None:
            return hit
        out = text
        for p in patterns:
            out = p.sub(MASK, out)
        if len(text) <= _MEMO_TEXT:
            if len(memo) >= _MEMO_SIZE:
                memo.clear()  # atomic, unlike evicting one entry while another thread may add
            memo[text] = out
        return out


REDACTOR = Redactor()


def redact(text: str) -> str:
    """``text`` through the process's redactor."""
    return REDACTOR.redact(text)


_Data = TypeVar("_Data")


def redact_data(data: _Data) -> _Data:
    """Every string in a JSON-like structure (dicts, lists, tuples) through the process's redactor; keys stay."""
    return cast(_Data, _redact_any(data))


def _redact_any(data: object) -> object:
    if isinstance(data, str):
        return REDACTOR.redact(data)
    if isinstance(data, dict):
        return {k: _redact_any(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_redact_any(v) for v in data]
    if isinstance(data, tuple):
        return tuple(_redact_any(v) for v in data)
    return data


def learn_header_values(slot: str, values: Iterable[str]) -> None:
    """A credential's values as injected: each one, and the part after an auth scheme (``Bearer x``)."""
    found: list[str] = []
    for value in values:
        found.append(value)
        scheme, sep, rest = value.partition(" ")
        if sep and scheme.isalpha() and len(scheme) < 16 and rest:
            found.append(rest)
    REDACTOR.learn(*found, slot=slot)
