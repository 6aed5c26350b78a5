"""Signing one request with AWS SigV4: what the workload signed is replaced, the body never buffered.

What a request gets:

- the workload's own signature is dropped (``Authorization``,
  ``X-Amz-Date``, ``X-Amz-Security-Token``, ``X-Amz-Content-SHA256``: it may
  hold placeholder keys) and ours added, over ``host``, ``content-type``,
  ``content-md5``, ``content-encoding`` and every ``x-amz-*`` header;
- a service other than S3: the body's SHA-256. The pipeline buffers bodies
  up to ``limits.replay_body``; a larger one cannot be hashed before it is
  sent, so it is refused (413 ``body_too_large_to_sign``);
- S3, no body: ``UNSIGNED-PAYLOAD``. A buffered body: its SHA-256. A larger
  one with a Content-Length: ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``, the body
  re-framed as ``aws-chunked`` 64 KiB chunks, each signed as it passes
  (``x-amz-decoded-content-length`` the client's length). A larger one
  without a length: 413, since S3 needs the decoded length in the signed
  head. A body the workload already framed with
  ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` (the SDKs' default with checksums)
  goes as it is, only its head re-signed; one whose chunks the workload
  signed itself is refused (400): its chunk signatures would need the real key.
- a presigned URL (``X-Amz-Signature`` in the query) carries its own
  signature: it goes as it is.

An answer that says the credential expired (``ExpiredToken``,
``ExpiredTokenException``, ``RequestExpired``: AWS answers 400 or 403, not 401)
is told to the pipeline, which treats it as the 401 rule treats a 401.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import AsyncIterable, AsyncIterator
from functools import lru_cache

from authproxy.credentials.awsendpoint import infer
from authproxy.credentials.sigv4 import (
    EMPTY_SHA256,
    STREAMING_PAYLOAD,
    UNSIGNED_PAYLOAD,
    ChunkSigner,
    Keys,
    Scope,
    authorization,
    chunked_length,
    seed_signature,
    signing_key,
)
from authproxy.errors import BadRequest, BodyTooLargeToSign, CredentialUnavailable

CHUNK = 64 * 1024
_S3 = frozenset({"s3", "s3-object-lambda", "s3-outposts"})
# The workload's signature, replaced by ours.
_REPLACED = frozenset({b"authorization", b"x-amz-date", b"x-amz-security-token", b"x-amz-content-sha256"})
_SIGNED = frozenset({b"host", b"content-type", b"content-md5", b"content-encoding"})
_KEPT_STREAMING = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
_EXPIRED_CODES = r"ExpiredToken|ExpiredTokenException|RequestExpired"
_EXPIRED_XML = re.compile(rb"<Code>\s*(?:" + _EXPIRED_CODES.encode() + rb")\s*</Code>")
_EXPIRED_JSON = re.compile(
    rb'"(?:__type|code|Code)"\s*:\s*"(?:[^"#]*#)?(?:' + _EXPIRED_CODES.encode() + rb')"'
)
_EXPIRED_HEADER = re.compile(r"^(?:" + _EXPIRED_CODES + r")(?::|$)")
_PEEK_STATUSES = frozenset({400, 403})

# As ``grants.base.SignBody``: bytes when buffered, a stream when not, None when there is none.
SignBody = bytes | AsyncIterable[bytes] | None


class AwsSigner:
    """One route's signer for one set of keys; made by the grant each time it reads the credential chain."""

    __slots__ = ("_fallback", "_keys", "_region", "_service", "_signing_keys", "rejected")

    def __init__(self, keys: Keys, service: str | None, region: str | None, fallback: str | None) -> None:
        self._keys = keys
        self._service = service  # the route's, else the host's
        self._region = region  # the route's, else the host's, else ``fallback`` (the profile's)
        self._fallback = fallback
        self._signing_keys: dict[tuple[str, str, str], bytes] = {}
        # An upstream said these keys expired: the grant reads the chain anew rather than reuse them.
        self.rejected = False

    @property
    def keys(self) -> Keys:
        return self._keys

    def sign(
        self,
        method: str,
        authority: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: SignBody,
        length: int | None,
    ) -> tuple[list[tuple[bytes, bytes]], SignBody, int | None]:
        path, _, query = target.partition("?")
        if "x-amz-signature=" in query.lower():
            return headers, body, length
        service, region = self._where(authority)
        s3 = service in _S3
        out: list[tuple[bytes, bytes]] = []
        client_hash = b""
        for name, value in headers:
            low = name.lower()
            if low in _REPLACED:
                if low == b"x-amz-content-sha256":
                    client_hash = value.strip()
                continue
            out.append((name, value))
        scope = Scope(_amz_date(int(time.time())), region, service)
        payload, streaming = self._payload(s3, client_hash, body, length)
        if streaming:
            assert length is not None
            out = _streaming_headers(out, length)
        out.append((b"X-Amz-Date", scope.amz_date.encode()))
        if self._keys.token:
            out.append((b"X-Amz-Security-Token", self._keys.token.encode()))
        if s3 or client_hash:
            # S3 requires it; another service gets it when the workload sent one (Glacier requires it too).
            out.append((b"X-Amz-Content-SHA256", payload.encode()))
        signed = [
            # Values as their bytes: UTF-8 where they are, any other byte kept as is (sigv4.py hashes the bytes back).
            (n.decode("latin-1").lower(), v.decode("utf-8", "surrogateescape"))
            for n, v in out
            if n.lower() in _SIGNED or n[:6].lower() == b"x-amz-"
        ]
        key = self._signing_key(scope)
        sig, names = seed_signature(key, scope, method, path, query, signed, payload, s3)
        out.append((b"Authorization", authorization(self._keys.access_key, scope, names, sig).encode()))
        if streaming:
            assert length is not None and body is not None and not isinstance(body, bytes)
            return out, _aws_chunked(body, ChunkSigner(key, scope, sig)), chunked_length(length, CHUNK)
        return out, body, length

    def _payload(self, s3: bool, client_hash: bytes, body: SignBody, length: int | None) -> tuple[str, bool]:
        """The payload hash to sign, and whether the body must be re-framed as signed chunks."""
        if s3 and client_hash.startswith(b"STREAMING-"):
            if client_hash == _KEPT_STREAMING.encode():
                return _KEPT_STREAMING, False
            raise BadRequest(
                "the client signed the body's chunks itself (x-amz-content-sha256 "
                f"{client_hash[:48].decode('latin-1')}); let it send the body unsigned, and the proxy signs it."
            )
        if body is None:
            return (UNSIGNED_PAYLOAD if s3 else EMPTY_SHA256), False
        if isinstance(body, bytes):
            return hashlib.sha256(body).hexdigest(), False
        if s3 and length is not None:
            return STREAMING_PAYLOAD, True
        if s3:
            raise BodyTooLargeToSign(
                "an S3 upload over limits.replay_body needs a Content-Length to be signed as it streams."
            )
        raise BodyTooLargeToSign(
            "the request body is larger than limits.replay_body, and its signature must cover the body's hash."
        )

    def _where(self, authority: str) -> tuple[str, str]:
        host = _host_of(authority)
        found = infer(host)
        service = self._service or (found[0] if found else None)
        region = self._region or (found[1] if found else None) or self._fallback
        if service is None or region is None:
            raise CredentialUnavailable(
                f"the AWS service and region of {host[:100]} cannot be told from its name; "
                "set `service` and `aws_region` on the route."
            )
        return service, region

    def _signing_key(self, scope: Scope) -> bytes:
        k = (scope.date, scope.region, scope.service)
        key = self._signing_keys.get(k)
        if key is None:
            if len(self._signing_keys) > 16:
                self._signing_keys.clear()
            key = self._signing_keys[k] = signing_key(self._keys.secret_key, *k)
        return key

    def wants_peek(self, status: int) -> bool:
        return status in _PEEK_STATUSES

    def refused(self, headers: list[tuple[bytes, bytes]], head: bytes) -> bool:
        expired = any(
            n.lower() == b"x-amzn-errortype" and _EXPIRED_HEADER.match(v.decode("latin-1").strip())
            for n, v in headers
        ) or bool(_EXPIRED_XML.search(head) or _EXPIRED_JSON.search(head))
        if expired:
            self.rejected = True
        return expired

    def lines(self, show: bool) -> list[str]:
        out = [f"Authorization: AWS4-HMAC-SHA256 Credential={self._keys.access_key}/... (signed per request)"]
        if self._keys.token:
            out.append(f"X-Amz-Security-Token: {self._keys.token if show else '****'}")
        return out


@lru_cache(maxsize=2)
def _amz_date(second: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))


def _host_of(authority: str) -> str:
    if authority.startswith("["):
        return authority[1 : authority.find("]")]
    return authority.rpartition(":")[0] if ":" in authority else authority


def _streaming_headers(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    """``Content-Encoding: aws-chunked`` first (S3 strips it, keeping the rest) and the decoded length."""
    out: list[tuple[bytes, bytes]] = []
    encodings = [b"aws-chunked"]
    for name, value in headers:
        low = name.lower()
        if low == b"content-encoding":
            encodings += [e.strip() for e in value.split(b",") if e.strip() and e.strip() != b"aws-chunked"]
        elif low != b"x-amz-decoded-content-length":
            out.append((name, value))
    out.append((b"Content-Encoding", b",".join(encodings)))
    out.append((b"X-Amz-Decoded-Content-Length", b"%d" % length))
    return out


async def _aws_chunked(body: AsyncIterable[bytes], signer: ChunkSigner) -> AsyncIterator[bytes]:
    """The body in signed ``CHUNK``-byte chunks, as it arrives: one chunk in memory at a time."""
    buf = bytearray()
    async for piece in body:
        buf += piece
        while len(buf) >= CHUNK:
            yield signer.frame(bytes(buf[:CHUNK]))
            del buf[:CHUNK]
    if buf:
        yield signer.frame(bytes(buf))
    yield signer.frame(b"")
