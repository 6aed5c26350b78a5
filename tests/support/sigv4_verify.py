"""Checking a SigV4-signed request with botocore's signing code, never with the proxy's.

``expected_signature`` rebuilds the request from the headers its
``SignedHeaders`` names and lets botocore's ``SigV4Auth`` (``S3SigV4Auth`` for
S3) compute the canonical request, the string to sign and the signature.
``ChunkChecker`` checks an ``aws-chunked`` body's chunk signatures: the string
to sign is written here from AWS's documentation ("Signature Calculations
for the Authorization Header: Transferring Payload in Multiple Chunks"),
the HMAC with botocore's signing key (``SigV4Auth.signature``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$")
EMPTY = hashlib.sha256(b"").hexdigest()


@dataclass
class Parsed:
    access_key: str
    region: str
    service: str
    signed: list[str]
    signature: str
    amz_date: str


def parse(headers: dict[str, str]) -> Parsed:
    low = {k.lower(): v for k, v in headers.items()}
    m = _AUTH.match(low["authorization"])
    assert m, low["authorization"]
    return Parsed(m[1], m[3], m[4], m[5].split(";"), m[6], low["x-amz-date"])


def _auth(p: Parsed, secret: str, token: str | None) -> SigV4Auth:
    cls = S3SigV4Auth if p.service == "s3" else SigV4Auth
    return cls(Credentials(p.access_key, secret, token), p.service, p.region)


def _request(method: str, url: str, headers: dict[str, str], body: bytes | None, p: Parsed) -> AWSRequest:
    kept = {k: v for k, v in headers.items() if k.lower() in p.signed}
    req = AWSRequest(method=method, url=url, data=body or b"", headers=kept)
    req.context["timestamp"] = p.amz_date
    return req


def expected_signature(
    method: str, url: str, headers: dict[str, str], body: bytes | None, secret: str, token: str | None = None
) -> str:
    p = parse(headers)
    auth = _auth(p, secret, token)
    req = _request(method, url, headers, body, p)
    return auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req)


def check_request(
    method: str, url: str, headers: dict[str, str], body: bytes | None, secret: str, token: str | None = None
) -> Parsed:
    """Assert the request's signature is the one botocore computes; returns what its Authorization says."""
    p = parse(headers)
    assert "host" in p.signed
    assert expected_signature(method, url, headers, body, secret, token) == p.signature
    return p


@dataclass
class ChunkChecker:
    """Fed an aws-chunked body piece by piece; checks each chunk's signature as it completes."""

    method: str
    url: str
    headers: dict[str, str]
    secret: str
    token: str | None = None
    decoded: int = 0
    chunks: int = 0
    done: bool = False
    _buf: bytearray = field(default_factory=bytearray)
    _previous: str = ""

    def __post_init__(self) -> None:
        p = parse(self.headers)
        self._p = p
        self._auth = _auth(p, self.secret, self.token)
        self._req = _request(self.method, self.url, self.headers, None, p)
        self._previous = p.signature
        self._scope = f"{p.amz_date[:8]}/{p.region}/{p.service}/aws4_request"

    def feed(self, data: bytes) -> None:
        self._buf += data
        while not self.done:
            head_end = self._buf.find(b"\r\n")
            if head_end < 0:
                return
            size_hex, _, sig = bytes(self._buf[:head_end]).partition(b";chunk-signature=")
            size = int(size_hex, 16)
            if len(self._buf) < head_end + 2 + size + 2:
                return
            chunk = bytes(self._buf[head_end + 2 : head_end + 2 + size])
            assert self._buf[head_end + 2 + size : head_end + 4 + size] == b"\r\n"
            del self._buf[: head_end + 4 + size]
            sts = "\n".join(
                ("AWS4-HMAC-SHA256-PAYLOAD", self._p.amz_date, self._scope, self._previous, EMPTY,
                 hashlib.sha256(chunk).hexdigest())
            )
            want = self._auth.signature(sts, self._req)
            assert sig.decode() == want, f"chunk {self.chunks} signature"
            self._previous = want
            self.decoded += size
            self.chunks += 1
            if size == 0:
                self.done = True
                assert not self._buf, "bytes after the final chunk"
