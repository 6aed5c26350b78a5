"""A scrubbed reply's head: searched as one buffer, each field replaced on its own, Content-Encoding in any case.

``scrub_reply`` joins the status line and every name and value to search them
once per form, and notices a Content-Encoding name in that buffer lower-cased;
these pin what that must keep: fields masked one by one (a form is never found
across two fields), every spelling of the name noticed, a value that merely
says "content-encoding" not taken for one.
"""

from __future__ import annotations

import gzip
from base64 import b64encode
from collections.abc import AsyncIterator

import pytest

from authproxy.credentials.grants import Credential
from authproxy.errors import UnscrubbableEncoding
from authproxy.messages import Reply
from authproxy.ops.accesslog import AccessRecord
from authproxy.upstream.scrubbed import scrub_reply

SHORT = "tok-0123456"  # forms as short as header fields
LONG = "sk-live-" + "0123456789abcdef" * 4
NGINX = [
    (b"Server", b"nginx/1.22.1"),
    (b"Date", b"Sun, 06 Dec 2026 12:14:12 GMT"),
    (b"Content-Type", b"text/plain"),
    (b"Last-Modified", b"Sun, 06 Dec 2026 11:14:12 GMT"),
    (b"ETag", b'"6753a0c4-64"'),
]


async def _pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


async def _body(reply: Reply) -> bytes:
    assert reply.body is not None
    return b"".join([c async for c in reply.body])


def _rec() -> AccessRecord:
    return AccessRecord("GET", "plain", "h", "/")


@pytest.mark.parametrize("key", [SHORT, LONG])
def test_each_field_is_masked_where_a_form_is_and_nowhere_else(key: str) -> None:
    k = key.encode()
    b64 = b64encode(b"x:" + k)  # one of the Base64 runs of the key inside it
    headers = [*NGINX, (b"X-Echo", b"k=" + k), (k, b"v"), (b"Authorization", b"Basic " + b64), (b"Vary", k)]
    rec = _rec()
    out = scrub_reply(Reply(200, k + b" OK", headers, None), Credential(headers=(("X-Key", key),)), rec, False)
    assert out.reason == b"*" * len(k) + b" OK"
    assert out.headers[: len(NGINX)] == NGINX
    assert out.headers[len(NGINX)] == (b"X-Echo", b"k=" + b"*" * len(k))
    assert out.headers[len(NGINX) + 1] == (b"*" * len(k), b"v")
    name, value = out.headers[len(NGINX) + 2]
    assert name == b"Authorization" and value != b"Basic " + b64 and value.startswith(b"Basic ")
    assert out.headers[-1] == (b"Vary", b"*" * len(k))
    assert k not in b"".join(b"".join(h) for h in out.headers)


@pytest.mark.parametrize("key", [SHORT, LONG])
def test_a_form_split_across_two_fields_is_not_a_match(key: str) -> None:
    k = key.encode()
    half = len(k) // 2
    headers = [*NGINX, (b"X-A", k[:half]), (k[half:], b"v"), (b"X-B", k[:half] + b"\n" + k[half:])]
    reply = Reply(200, b"OK", list(headers), None)
    out = scrub_reply(reply, Credential(headers=(("X-Key", key),)), _rec(), False)
    assert out.headers == headers


@pytest.mark.parametrize("name", [b"Content-Encoding", b"content-encoding", b"CONTENT-ENCODING", b"cOnTeNt-EnCoDiNg"])
async def test_content_encoding_is_noticed_in_any_case_among_other_fields(name: bytes) -> None:
    body = b"echo " + LONG.encode() + b" done"
    headers = [*NGINX, (name, b"gzip"), (b"Accept-Ranges", b"bytes")]
    reply = Reply(200, b"OK", headers, _pieces(gzip.compress(body)))
    out = scrub_reply(reply, Credential(headers=(("X-Key", LONG),)), _rec(), False)
    assert await _body(out) == body.replace(LONG.encode(), b"*" * len(LONG))
    assert [n for n, _ in out.headers if n.lower() == b"content-encoding"] == []
    reply = Reply(200, b"OK", [*NGINX, (name, b"br")], _pieces(b"..."))
    with pytest.raises(UnscrubbableEncoding):
        scrub_reply(reply, Credential(headers=(("X-Key", LONG),)), _rec(), False)


async def test_a_value_or_a_longer_name_that_says_content_encoding_is_not_one() -> None:
    headers = [*NGINX, (b"Vary", b"Content-Encoding"), (b"X-Content-Encoding", b"br"), (b"Content-Encodings", b"br")]
    reply = Reply(200, b"Content-Encoding", list(headers), _pieces(b"plain ", b"text"))
    out = scrub_reply(reply, Credential(headers=(("X-Key", LONG),)), _rec(), False)
    assert out.headers == headers
    assert await _body(out) == b"plain text"
