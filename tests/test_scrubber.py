"""The scrubber without sockets: every split of a stream, WebSocket framing, content codings, and the `scrub` key."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import re
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from authproxy import config
from authproxy.credentials.grants import Credential
from authproxy.errors import UnscrubbableEncoding
from authproxy.http1.h1errors import UpstreamBodyError
from authproxy.http1.wsframes import FrameError, FrameScrubber
from authproxy.messages import Reply
from authproxy.ops.accesslog import AccessRecord
from authproxy.secrecy.scrub import Scrubber, needles_for
from authproxy.upstream.scrubbed import scrub_reply, secrets_of

KEY = "sk-unit/Key+0123456789abcdef"
FORMS = [
    KEY.encode(),
    quote(KEY, safe="").encode(),
    re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(KEY, safe="")).encode(),  # lowercase hex digits
    json.dumps(KEY).strip('"').replace("/", "\\/").encode(),
    base64.b64encode(b"Bearer " + KEY.encode()),
    base64.urlsafe_b64encode(b"x:" + KEY.encode()),
]
STREAM = b"".join(b"<" + f + b">\n" for f in FORMS)


def _through(scrubber: Scrubber, data: bytes, cuts: list[int]) -> bytes:
    out, last = b"", 0
    for c in [*cuts, len(data)]:
        out += scrubber.feed(data[last:c])
        last = c
    return out + scrubber.flush()


def _clean(out: bytes) -> None:
    assert len(out) == len(STREAM)
    for f in FORMS:
        assert f not in out
    assert KEY.encode()[:12] not in out and base64.b64encode(KEY.encode())[4:16] not in out


def test_every_single_cut_and_every_pair_of_cuts_in_one_form() -> None:
    needles = needles_for([KEY])
    for i in range(len(STREAM) + 1):
        _clean(_through(Scrubber(needles), STREAM, [i]))
    first = len(FORMS[0]) + 2
    for i in range(first + 1):
        for j in range(i, first + 1):
            _clean(_through(Scrubber(needles), STREAM, [i, j]))


def test_one_byte_at_a_time_and_the_count() -> None:
    s = Scrubber(needles_for([KEY]))
    out = _through(s, STREAM, list(range(1, len(STREAM))))
    _clean(out)
    assert s.scrubbed == out.count(b"*") > sum(len(f) for f in FORMS[:4])


def test_a_tail_that_cannot_begin_a_form_leaves_at_once() -> None:
    s = Scrubber(needles_for([KEY]))
    assert s.feed(b'data: {"a": 1}\n\n') == b'data: {"a": 1}\n\n'
    assert s.feed(b"data: sk-un") == b"data: "  # may be the key's beginning: kept
    assert s.feed(b"known\n\n") == b"sk-unknown\n\n"
    assert s.feed(b"plain text.") == b"plain text."


def test_the_substitute_replaces_a_match_of_its_own_length_only() -> None:
    s = Scrubber(needles_for([KEY]), substitute=b"P" * len(KEY))
    out = s.feed(b"[" + KEY.encode() + b"] " + quote(KEY, safe="").encode()) + s.flush()
    assert out.startswith(b"[" + b"P" * len(KEY) + b"] ***")


def test_a_long_token_split_anywhere() -> None:
    """A JWT-sized value (kilobytes): the tail search must not depend on its length's nesting."""
    token = "eyJ" + "a1B2c3D4-_" * 200
    body = b'{"access_token": "' + token.encode() + b'"}\n'
    for cut in (10, 100, 1000, 2000, len(body) - 3):
        s = Scrubber(needles_for([token]))
        out = s.feed(body[:cut]) + s.feed(body[cut:]) + s.flush()
        assert out == body.replace(token.encode(), b"*" * len(token))


def test_short_values_are_replaced_as_written_and_tiny_ones_not_at_all() -> None:
    assert needles_for(["abc"]).forms == ()
    assert needles_for(["abcdef"]).forms == (b"abcdef",)


def test_secrets_of_a_credential() -> None:
    basic = base64.b64encode(b"alice:pw-0123456789").decode()
    cred = Credential(headers=(("Authorization", f"Basic {basic}"), ("X-Key", "raw-value-1")), query=(("k", "qv"),))
    assert secrets_of(cred) == (basic, "pw-0123456789", "raw-value-1", "qv")


def _frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bool = False) -> bytes:
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    return head + (b"\0\0\0\0" if mask else b"") + payload


def test_frames_keep_their_lengths_and_order_at_every_cut() -> None:
    key = KEY.encode()
    text = b"hello " + key + b" bye"
    frames = [
        _frame(1, text[:9], fin=False),
        _frame(9, b"p " + key[:5]),
        _frame(0, text[9:20], fin=False),
        _frame(0, text[20:]),
        _frame(2, b"\0" * 200 + key + b"\1" * 70000),
        _frame(8, b"\x03\xe8" + key),
    ]
    stream = b"".join(frames)
    needles = needles_for([KEY])
    for cut in [*range(80), len(stream) - 40, len(stream) - 1]:
        f = FrameScrubber(needles)
        out = f.feed(stream[:cut]) + f.feed(stream[cut:])
        assert len(out) == len(stream) and key not in out
        assert out[: len(frames[0])] == _frame(1, b"hello " + b"*" * 3, fin=False)
        assert out.endswith(_frame(8, b"\x03\xe8" + b"*" * len(key)))
        assert f.scrubbed == 3 * len(key)


@pytest.mark.parametrize(
    "frame",
    [
        _frame(1, b"x", rsv=0x40),
        _frame(1, b"x", mask=True),
        _frame(3, b"x"),
        _frame(0, b"x"),
        _frame(9, b"x", fin=False),
    ],
)
def test_frames_that_cannot_be_read_fail_closed(frame: bytes) -> None:
    with pytest.raises(FrameError):
        FrameScrubber(needles_for([KEY])).feed(frame)


async def _pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for c in chunks:
        await asyncio.sleep(0)
        yield c


def _reply(encoding: bytes | None, *chunks: bytes) -> Reply:
    headers = [(b"Content-Type", b"text/plain")]
    if encoding is not None:
        headers.append((b"Content-Encoding", encoding))
    return Reply(200, b"OK", headers, _pieces(*chunks))


async def _body(reply: Reply) -> bytes:
    assert reply.body is not None
    return b"".join([c async for c in reply.body])


BODY = b"echo " + KEY.encode() + b" " * 300000 + KEY.encode()
CRED = Credential(headers=(("X-Key", KEY),))


@pytest.mark.parametrize(
    ("coding", "data"),
    [
        (b"gzip", gzip.compress(BODY)),
        (b"gzip", gzip.compress(BODY[:100]) + gzip.compress(BODY[100:])),  # two members (RFC 1952 §2.2)
        (b"deflate", zlib.compress(BODY)),
        (b"deflate", zlib.compress(BODY)[2:-4]),  # raw deflate, as some servers send it
        (b"identity", BODY),
    ],
)
async def test_readable_codings_are_decoded_and_scrubbed(coding: bytes, data: bytes) -> None:
    rec = AccessRecord("GET", "plain", "h", "/")
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    reply = scrub_reply(_reply(coding, *pieces), CRED, rec, False)
    out = await _body(reply)
    assert out == BODY.replace(KEY.encode(), b"*" * len(KEY))
    assert rec.scrubbed == 2 * len(KEY)
    assert all(n.lower() != b"content-encoding" for n, _ in reply.headers) or coding == b"identity"


@pytest.mark.parametrize("coding", [b"br", b"zstd", b"gzip, gzip", b"compress", b"x-unknown"])
def test_other_codings_are_refused(coding: bytes) -> None:
    with pytest.raises(UnscrubbableEncoding):
        scrub_reply(_reply(coding, b"..."), CRED, AccessRecord("GET", "plain", "h", "/"), False)


def test_a_head_response_keeps_its_coding() -> None:
    reply = scrub_reply(_reply(b"br", b""), CRED, AccessRecord("HEAD", "plain", "h", "/"), True)
    assert (b"Content-Encoding", b"br") in reply.headers


async def test_a_corrupt_gzip_body_breaks_off() -> None:
    data = gzip.compress(BODY)
    reply = scrub_reply(_reply(b"gzip", data[:50], b"garbage" * 10), CRED, AccessRecord("GET", "p", "h", "/"), False)
    with pytest.raises(UpstreamBodyError):
        await _body(reply)


def test_headers_and_reason_are_scrubbed_in_every_form() -> None:
    reply = Reply(
        200,
        b"OK " + KEY.encode(),
        [(b"X-Echo", quote(KEY, safe="").encode()), (KEY.encode(), b"v"), (b"Plain", b"nothing")],
        None,
    )
    rec = AccessRecord("GET", "plain", "h", "/")
    out = scrub_reply(reply, CRED, rec, False)
    assert out.reason == b"OK " + b"*" * len(KEY)
    assert out.headers[0][1] == b"*" * len(quote(KEY, safe="")) and out.headers[1][0] == b"*" * len(KEY)
    assert out.headers[2] == (b"Plain", b"nothing")
    assert rec.scrubbed == 2 * len(KEY) + len(quote(KEY, safe=""))


ROUTES = """
routes:
  - {name: k, match: k.test, auth: {type: api_key, value: abcdefgh12345678}}
  - {name: b, match: b.test, auth: {type: basic, username: u, password: abcdefgh12345678}}
  - {name: t, match: t.test, auth: {type: bearer, token: abcdefgh12345678}}
  - {name: c, match: c.test, auth: {type: command, argv: [echo, x]}}
  - {name: off, match: off.test, scrub: false, auth: {type: api_key, value: abcdefgh12345678}}
  - name: cc
    match: cc.test
    auth: {type: client_credentials, token_url: https://id.test/t, client_id: c, client_secret: abcdefgh12345678}
  - name: ccon
    match: ccon.test
    scrub: true
    auth: {type: client_credentials, token_url: https://id.test/t, client_id: c, client_secret: abcdefgh12345678}
"""


def test_scrub_defaults_by_grant_and_the_key_overrides(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(f"state_dir: {tmp_path}/state\n" + ROUTES)
    cfg = config.load(path)
    assert {r.name: r.scrub for r in cfg.routes} == {
        "k": True,
        "b": True,
        "t": True,
        "c": True,
        "off": False,
        "cc": False,
        "ccon": True,
    }


def test_a_scrub_value_that_is_not_a_boolean_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(
        f"state_dir: {tmp_path}/state\nroutes:\n  - name: a\n    match: a.test\n    scrub: maybe\n"
        "    auth: {type: api_key, value: abcdefgh12345678}\n"
    )
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    assert "routes[0].scrub" in str(err.value) and ":5" in str(err.value)
