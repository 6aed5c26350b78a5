"""The scrubber's search (secrecy/findany.py): glibc's memmem and CPython's own give the same answers.

Every test runs twice, with the C library's ``memmem`` for large buffers
(``native=True``; on glibc it is used) and with ``bytes`` methods only
(``native=False``, what runs on musl or macOS), and checks the answers
against a plain ``bytes.find`` walk or against where the strings were put.
"""

from __future__ import annotations

import os
import random
from typing import cast

import pytest

from authproxy.secrecy import findany
from authproxy.secrecy.findany import NATIVE_MIN, AnyOf
from authproxy.secrecy.scrub import Needles, Scrubber, needles_for

NATIVES = [pytest.param(True, id="memmem"), pytest.param(False, id="python")]
TOKEN_FORMS = needles_for(["test-token"]).forms  # the value and its three Base64 runs


def _glibc() -> bool:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return False
    return bool(version and version.startswith("glibc"))


def _walk(data: bytes, forms: tuple[bytes, ...]) -> list[tuple[int, int]]:
    """Every occurrence, overlapping ones too, by one ``find`` after another."""
    out = []
    for form in forms:
        i = data.find(form)
        while i >= 0:
            out.append((i, i + len(form)))
            i = data.find(form, i + 1)
    return out


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_memmem_is_used_where_the_c_library_is_glibc() -> None:
    assert (findany.NATIVE is not None) == _glibc()
    assert AnyOf([b"abc"]).native == _glibc()
    assert not AnyOf([b"abc"], native=False).native


@pytest.mark.parametrize("native", NATIVES)
@pytest.mark.parametrize("size", [0, 1, 12, NATIVE_MIN - 1, NATIVE_MIN, 1 << 20])
def test_nothing_found_in_data_without_the_strings(native: bool, size: int) -> None:
    search = AnyOf(TOKEN_FORMS, native)
    data = bytes(size) if size < 100 else _random(size, size)
    assert not search.found(data)
    assert search.spans(data) == []


@pytest.mark.parametrize("native", NATIVES)
@pytest.mark.parametrize("size", [13, 100, NATIVE_MIN - 1, NATIVE_MIN, NATIVE_MIN + 1, 256 * 1024])
def test_each_form_at_the_first_and_the_last_byte(native: bool, size: int) -> None:
    search = AnyOf(TOKEN_FORMS, native)
    for form in TOKEN_FORMS:
        body = _random(size - len(form), size)
        for data, start in ((form + body, 0), (body + form, size - len(form))):
            assert len(data) == size
            assert search.found(data)
            assert (start, start + len(form)) in search.spans(data)
            assert search.spans(data) == _walk(data, TOKEN_FORMS)
        cut = form[:-1]
        assert not search.found(body + cut)  # all but its last byte: not a match
        assert not search.found(form[1:] + body)


@pytest.mark.parametrize("native", NATIVES)
def test_overlapping_occurrences_of_one_form_and_of_two(native: bool) -> None:
    pad = bytes(NATIVE_MIN)  # past NATIVE_MIN, so memmem searches on from each match
    for data in (b"a" * 10, pad + b"a" * 10 + pad):
        spans = AnyOf([b"aaaa"], native).spans(data)
        first = data.find(b"a")
        assert spans == [(first + i, first + i + 4) for i in range(7)]
    forms = (b"abcab", b"cabca")
    for data in (b"xabcabcabx", pad + b"xabcabcabx" + pad):
        base = data.find(b"x")
        spans = AnyOf(forms, native).spans(data)
        assert spans == [(base + 1, base + 6), (base + 4, base + 9), (base + 3, base + 8)]


@pytest.mark.parametrize("native", NATIVES)
def test_a_large_buffer_with_forms_put_at_random_places(native: bool) -> None:
    rng = random.Random(7)
    data = bytearray(_random(32 << 20, 7))
    put: list[tuple[int, int]] = []
    for _ in range(200):
        form = rng.choice(TOKEN_FORMS)
        at = rng.randrange(len(data) - len(form))
        if any(s < at + len(form) and at < e for s, e in put):
            continue
        data[at : at + len(form)] = form
        put.append((at, at + len(form)))
    whole = bytes(data)
    search = AnyOf(TOKEN_FORMS, native)
    assert search.found(whole)
    assert sorted(search.spans(whole)) == sorted(put)
    assert search.spans(whole) == _walk(whole, TOKEN_FORMS)
    # A bytearray is not handed to ctypes: the same answers by bytes methods.
    mutable = cast(bytes, bytearray(whole))
    assert sorted(search.spans(mutable)) == sorted(put)
    assert search.found(mutable)


@pytest.mark.parametrize("native", NATIVES)
def test_forms_found_in_order_of_the_strings_given(native: bool) -> None:
    data = _random(NATIVE_MIN * 2, 3)
    data = b"BBBB" + data + b"AAAA"
    assert AnyOf([b"AAAA", b"BBBB"], native).spans(data) == [(len(data) - 4, len(data)), (0, 4)]


def test_empty_and_repeated_strings_are_dropped() -> None:
    search = AnyOf([b"", b"abc", b"abc"])
    assert search.forms == (b"abc",)
    assert search.shortest == 3
    empty = AnyOf([])
    assert not empty.found(b"anything") and not empty.found(_random(NATIVE_MIN, 1))
    assert empty.spans(_random(NATIVE_MIN, 1)) == []


def _stream(seed: int, native: bool, sizes: list[int]) -> tuple[bytes, int]:
    """A 4 MiB body with every form spread through it, cut at ``sizes``, through one Scrubber."""
    rng = random.Random(seed)
    forms = needles_for(["sk-live/Token+0123456789"]).forms  # percent-encoded and escaped forms too
    body = bytearray(_random(4 << 20, seed))
    for i in range(400):
        form = forms[i % len(forms)]
        at = rng.randrange(len(body) - len(form))
        body[at : at + len(form)] = form
    data = bytes(body)
    s = Scrubber(Needles(forms, native), tally=None)
    out, at, k = [], 0, 0
    while at < len(data):
        n = sizes[k % len(sizes)]
        out.append(s.feed(data[at : at + n]))
        at, k = at + n, k + 1
    out.append(s.flush())
    return b"".join(out), s.scrubbed


@pytest.mark.parametrize("sizes", [[256 * 1024], [NATIVE_MIN - 3, 17, 300_000, 5], [1 << 20]])
def test_the_scrubber_gives_the_same_bytes_either_way(sizes: list[int]) -> None:
    native, native_n = _stream(11, True, sizes)
    python, python_n = _stream(11, False, sizes)
    assert native == python
    assert native_n == python_n > 0
    for form in needles_for(["sk-live/Token+0123456789"]).forms:
        assert form not in native
