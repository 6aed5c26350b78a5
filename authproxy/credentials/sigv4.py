"""AWS Signature Version 4: the canonical request, the signing key, the seed and chunk signatures.

Pure functions over plain types (no botocore here: this runs on every
request of an ``aws_sigv4`` route, and botocore's ``AWSRequest`` costs far
more than the few hashes a signature needs). The rules, from AWS's
"Create a signed AWS API request" and "Signature Calculations for the
Authorization Header: Transferring Payload in Multiple Chunks":

- the canonical URI is the path as sent, for S3; for every other service
  its dot segments and empty segments removed and then URI-encoded once
  more (the path on the wire is already encoded, so ``%`` becomes ``%25``);
- the canonical query is every ``name=value`` pair, each side decoded and
  re-encoded with only ``A-Za-z0-9-_.~`` left bare, sorted;
- header values are trimmed and their inner runs of spaces folded to one;
  names lowercased and sorted; a repeated header's values joined by ``,``;
- the signing key is four HMAC-SHA256 steps from ``AWS4`` + the secret over
  the date, the region, the service and ``aws4_request``;
- a streamed upload (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``) sends its body
  as ``aws-chunked`` chunks, each signed over the previous signature and the
  chunk's hash, the first over the seed signature of the request head.

The tests check every one of these against botocore's own implementation.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
_CHUNK_ALGORITHM = "AWS4-HMAC-SHA256-PAYLOAD"
_CHUNK_SIG = b";chunk-signature="
_SIG_HEX = 64


@dataclass(frozen=True, slots=True, repr=False)
class Keys:
    """One set of AWS credentials: the access key id is no secret; the rest are."""

    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:
        return f"Keys({self.access_key}, ****)"


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret_key).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.digest(key, msg.encode(), "sha256")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, and AWS's folding of ``//`` (as every SDK does before signing)."""
    if not path:
        return "/"
    out: list[str] = []
    for seg in path.split("/"):
        if not seg or seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
        else:
            out.append(seg)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and out else ""
    return first + "/".join(out) + last


def canonical_target(path: str, query: str, s3: bool) -> str:
    """The canonical URI and query lines: remembered for short targets, which a workload sends again and again
    (a bounded cache of short strings: at most ~1 MB whatever the traffic)."""
    if len(path) + len(query) <= 256:
        return _cached_target(path, query, s3)
    return _canonical_target(path, query, s3)


def _canonical_target(path: str, query: str, s3: bool) -> str:
    return canonical_uri(path, s3) + "\n" + canonical_query(query)


_cached_target = lru_cache(maxsize=1024)(_canonical_target)


def canonical_uri(path: str, s3: bool) -> str:
    if s3:
        return path or "/"
    return quote(remove_dot_segments(path), safe="/~")


def canonical_query(query: str) -> str:
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def canonical_headers(headers: list[tuple[str, str]]) -> tuple[str, str]:
    """The canonical header block and the ``SignedHeaders`` list, from (lowercase name, value) pairs."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name, []).append(" ".join(value.split()))
    names = sorted(merged)
    block = "".join(f"{n}:{','.join(merged[n])}\n" for n in names)
    return block, ";".join(names)


@dataclass(frozen=True, slots=True)
class Scope:
    """When and for what a signature is made: ``20250102T030405Z`` and ``20250102/region/service/aws4_request``."""

    amz_date: str
    region: str
    service: str

    @property
    def date(self) -> str:
        return self.amz_date[:8]

    @property
    def text(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def seed_signature(
    key: bytes,
    scope: Scope,
    method: str,
    path: str,
    query: str,
    signed: list[tuple[str, str]],
    payload_hash: str,
    s3: bool,
) -> tuple[str, str]:
    """The request's signature and its ``SignedHeaders`` list."""
    block, names = canonical_headers(signed)
    creq = "\n".join((method, canonical_target(path, query, s3), block, names, payload_hash))
    digest = hashlib.sha256(creq.encode("utf-8", "surrogateescape")).hexdigest()
    sts = "\n".join((ALGORITHM, scope.amz_date, scope.text, digest))
    return hmac.digest(key, sts.encode(), "sha256").hex(), names


def authorization(access_key: str, scope: Scope, names: str, signature: str) -> str:
    return f"{ALGORITHM} Credential={access_key}/{scope.text}, SignedHeaders={names}, Signature={signature}"


class ChunkSigner:
    """The ``aws-chunked`` framing of a streamed upload: each chunk signed over the one before."""

    __slots__ = ("_key", "_prefix", "_previous")

    def __init__(self, key: bytes, scope: Scope, seed: str) -> None:
        self._key = key
        self._prefix = f"{_CHUNK_ALGORITHM}\n{scope.amz_date}\n{scope.text}\n"
        self._previous = seed

    def frame(self, data: bytes) -> bytes:
        """One chunk as sent: ``hex-size;chunk-signature=SIG`` CRLF data CRLF (an empty one ends the body)."""
        sts = f"{self._prefix}{self._previous}\n{EMPTY_SHA256}\n{hashlib.sha256(data).hexdigest()}"
        sig = hmac.digest(self._key, sts.encode(), "sha256").hex()
        self._previous = sig
        return b"".join((b"%x" % len(data), _CHUNK_SIG, sig.encode(), b"\r\n", data, b"\r\n"))


def chunked_length(size: int, chunk: int) -> int:
    """The Content-Length of ``size`` bytes framed in ``chunk``-byte signed chunks, the final empty one included."""

    def framed(n: int) -> int:
        return len(b"%x" % n) + len(_CHUNK_SIG) + _SIG_HEX + 2 + n + 2

    full, rest = divmod(size, chunk)
    return full * framed(chunk) + (framed(rest) if rest else 0) + framed(0)
