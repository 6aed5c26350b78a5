"""AWS SigV4 through the proxy against moto in server mode, authentication enforced.

boto3 holds placeholder keys; the proxy holds the key of a user in moto's
IAM (from the environment, through botocore's chain) and re-signs every
request. moto checks SQS and STS signatures itself, payload hash included;
S3's, and the chunk signatures of a streamed upload, are checked by the
recording hop in front of moto with botocore's signing code.
"""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import assert_no_secrets
from tests.support.moto_server import USER, Moto, RecordingHop, moto_server
from tests.support.proc import start_proxy

PLACEHOLDER = {"aws_access_key_id": "AKIAPLACEHOLDER00000", "aws_secret_access_key": "placeholder-secret-key-0000"}


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    with moto_server() as m:
        yield m


@pytest.fixture
def proxy_keys(moto: Moto, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The proxy's credential chain: moto's user's key in the environment, nothing else to find."""
    env = {
        "AWS_ACCESS_KEY_ID": moto.access_key,
        "AWS_SECRET_ACCESS_KEY": moto.secret_key,
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def _routes(moto_port: int, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        {extra}
        routes:
          - name: sqs
            match: sqs.us-east-1.amazonaws.com
            upstream: http://127.0.0.1:{moto_port}
            auth: {{type: aws_sigv4, service: sqs, aws_region: us-east-1}}
          - name: sts
            match: sts.us-east-1.amazonaws.com
            upstream: http://127.0.0.1:{moto_port}
            auth: {{type: aws_sigv4, service: sts, aws_region: us-east-1}}
        """
    )


def _client(service: str, p: Any) -> Any:
    """A boto3 client with placeholder keys, through the proxy (HTTPS_PROXY), trusting the proxy's CA."""
    ca = p.runtime.ca
    assert ca is not None
    cfg = Config(proxies={"https": p.url}, retries={"max_attempts": 1, "mode": "standard"})
    return boto3.client(service, region_name="us-east-1", config=cfg, verify=str(ca.files.cert), **PLACEHOLDER)


async def test_sqs_and_sts_are_re_signed_and_moto_accepts_them(
    make_proxy: Any, moto: Moto, proxy_keys: dict[str, str]
) -> None:
    p = await make_proxy(_routes(moto.port))
    p.secrets.add(moto.secret_key)
    sts = _client("sts", p)
    who = await asyncio.to_thread(sts.get_caller_identity)
    assert who["Arn"].endswith(f":user/{USER}")  # moto checked our signature for its user's key
    sqs = _client("sqs", p)
    url = (await asyncio.to_thread(sqs.create_queue, QueueName="signed"))["QueueUrl"]
    text = "a body moto hashes " * 200
    await asyncio.to_thread(sqs.send_message, QueueUrl=url, MessageBody=text)
    got = await asyncio.to_thread(sqs.receive_message, QueueUrl=url, WaitTimeSeconds=0)
    assert got["Messages"][0]["Body"] == text
    lines = p.access_lines()
    assert sum(" route=sqs " in line or "route=sqs" in line for line in lines) >= 3


async def test_a_wrong_secret_gets_motos_403(
    make_proxy: Any, moto: Moto, proxy_keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrongSecretWrongSecretWrongSecret0000000"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    p = await make_proxy(_routes(moto.port))
    p.secrets |= {wrong, moto.secret_key}
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(_client("sts", p).get_caller_identity)
    meta = info.value.response
    assert meta["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert meta["Error"]["Code"] == "SignatureDoesNotMatch"
    assert "x-authproxy-error" not in meta["ResponseMetadata"]["HTTPHeaders"]  # moto's answer, not ours


async def test_an_sqs_body_over_replay_body_gets_413(make_proxy: Any, moto: Moto, proxy_keys: dict[str, str]) -> None:
    p = await make_proxy(_routes(moto.port, "limits: {replay_body: 2048}"))
    p.secrets.add(moto.secret_key)
    sqs = _client("sqs", p)
    url = (await asyncio.to_thread(sqs.create_queue, QueueName="small"))["QueueUrl"]
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(sqs.send_message, QueueUrl=url, MessageBody="x" * 5000)
    meta = info.value.response["ResponseMetadata"]
    assert meta["HTTPStatusCode"] == 413
    assert meta["HTTPHeaders"]["x-authproxy-error"] == "body_too_large_to_sign"
    await asyncio.to_thread(sqs.send_message, QueueUrl=url, MessageBody="fits")


async def test_s3_over_https_keeps_the_sdks_own_aws_chunked_body_and_re_signs_its_head(
    make_proxy: Any, moto: Moto, proxy_keys: dict[str, str]
) -> None:
    """boto3's default over HTTPS frames an upload itself (STREAMING-UNSIGNED-PAYLOAD-TRAILER, a CRC in a trailer)."""
    p = await make_proxy(
        _routes(moto.port)
        + f"  - name: s3\n    match: s3.amazonaws.com\n    upstream: http://127.0.0.1:{moto.port}\n"
        + "    auth: {type: aws_sigv4, service: s3, aws_region: us-east-1}\n"
    )
    p.secrets.add(moto.secret_key)
    ca = p.runtime.ca
    assert ca is not None
    cfg = Config(
        proxies={"https": p.url}, retries={"max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"}
    )
    s3 = boto3.client("s3", region_name="us-east-1", config=cfg, verify=str(ca.files.cert), **PLACEHOLDER)
    sent: list[dict[str, Any]] = []
    s3.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers)))
    await asyncio.to_thread(s3.create_bucket, Bucket="sdk-framed")
    data = b"0123456789abcdef" * 5000
    put = await asyncio.to_thread(s3.put_object, Bucket="sdk-framed", Key="k", Body=data)
    assert "ChecksumCRC32" in put  # the SDK sent its checksum in a trailer, and moto read it
    framed = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in sent[0].items()}
    assert framed["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert "aws-chunked" in framed["content-encoding"]
    got = await asyncio.to_thread(s3.get_object, Bucket="sdk-framed", Key="k")
    assert got["Body"].read() == data


class _Pattern:
    """A file-like body of ``size`` bytes, made as it is read: the test holds no 200 MB buffer."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pos = 0
        self._block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.pos
        n = left if n is None or n < 0 else min(n, left)
        start = self.pos % len(self._block)
        out = (self._block[start:] + self._block * (n // len(self._block) + 1))[:n]
        self.pos += n
        return out

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else self.size + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def digest(self) -> str:
        self.seek(0)
        h = hashlib.sha256()
        while chunk := self.read(1 << 20):
            h.update(chunk)
        self.seek(0)
        return h.hexdigest()


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


@pytest.mark.timeout(900)
async def test_s3_put_and_get_of_200_mb_stream_with_flat_rss_and_valid_chunk_signatures(
    moto: Moto, proxy_keys: dict[str, str], tmp_path: Path
) -> None:
    hop = RecordingHop(moto.port, moto.secret_key)
    await hop.start()
    config = tmp_path / "routes.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            state_dir: {tmp_path / "state"}
            routes:
              - name: s3
                match: 127.0.0.1:{hop.port}
                auth: {{type: aws_sigv4, service: s3, aws_region: us-east-1}}
            """
        )
    )
    proxy = start_proxy(config, env=proxy_keys)
    try:
        cfg = Config(
            proxies={"http": proxy.url}, retries={"max_attempts": 1, "mode": "standard"}, s3={"addressing_style": "path"}
        )
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{hop.port}", region_name="us-east-1", config=cfg,
                          **PLACEHOLDER)
        await asyncio.to_thread(s3.create_bucket, Bucket="big")
        await asyncio.to_thread(s3.put_object, Bucket="big", Key="small", Body=b"warm-up")
        assert (await asyncio.to_thread(s3.get_object, Bucket="big", Key="small"))["Body"].read() == b"warm-up"
        before = _status_kib(proxy.proc.pid)

        size = 200 * 1024 * 1024
        body = _Pattern(size)
        want = body.digest()
        await asyncio.to_thread(s3.put_object, Bucket="big", Key="large", Body=body, ContentLength=size)

        def download() -> tuple[int, str]:
            resp = s3.get_object(Bucket="big", Key="large")
            h = hashlib.sha256()
            n = 0
            for chunk in resp["Body"].iter_chunks(1 << 20):
                h.update(chunk)
                n += len(chunk)
            return n, h.hexdigest()

        assert await asyncio.to_thread(download) == (size, want)
        after = _status_kib(proxy.proc.pid)
    finally:
        rc = proxy.stop()
        await hop.close()
    assert rc == 0
    print("proxy memory KiB", before, after)
    # Memory: the peak while 400 MB went through stays within a few chunk buffers of where it started.
    assert after["VmHWM"] - before["VmRSS"] < 64 * 1024, (before, after)
    assert [c.error for c in hop.checked if c.error] == []
    put = [c for c in hop.checked if c.method == "PUT" and c.path == "/big/large"]
    assert len(put) == 1
    assert put[0].payload == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    assert put[0].decoded == size and put[0].chunks == size // (64 * 1024) + 1
    gets = [c for c in hop.checked if c.method == "GET" and c.path == "/big/large"]
    assert [g.payload for g in gets] == ["UNSIGNED-PAYLOAD"]
    small = [c for c in hop.checked if c.method == "PUT" and c.path == "/big/small"]
    assert len(small[0].payload) == 64  # a buffered body is hashed
    assert_no_secrets([proxy.stderr_text()], [moto.secret_key])
