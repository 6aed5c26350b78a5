"""SigV4 signing, checked with botocore's signing code: the signer alone, and through a running proxy.

The upstream here is a small aiohttp app that checks every signature with
botocore (``tests/support/sigv4_verify.py``) and answers ``ExpiredToken`` for
one key on demand: the failure no real AWS endpoint produces when asked. The
tests against moto in server mode are ``test_aws_moto.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authproxy.credentials.awsendpoint import infer
from authproxy.credentials.awssigner import CHUNK, AwsSigner
from authproxy.credentials.sigv4 import Keys, chunked_length
from authproxy.errors import BodyTooLargeToSign
from tests.support.sigv4_verify import ChunkChecker, check_request

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN//////////wEaDA=="
KEYS = Keys("AKIDEXAMPLE0000000001", SECRET, TOKEN)


def _sign(
    signer: AwsSigner, method: str, authority: str, target: str, headers: list[tuple[str, str]], body: Any, length: Any
) -> tuple[dict[str, str], Any, Any]:
    raw = [(b"Host", authority.encode())] + [(n.encode(), v.encode()) for n, v in headers]
    out, body2, length2 = signer.sign(method, authority, target, raw, body, length)
    names = [n.decode() for n, _ in out]
    assert len({n.lower() for n in names}) == len(names), names
    return {n.decode(): v.decode() for n, v in out}, body2, length2


@pytest.mark.parametrize(
    ("method", "authority", "target", "body"),
    [
        ("POST", "sqs.us-east-1.amazonaws.com", "/", b"Action=ListQueues&Version=2012-11-05"),
        ("GET", "sts.amazonaws.com", "/?Version=2011-06-15&Action=GetCallerIdentity", None),
        ("GET", "execute-api.eu-west-1.amazonaws.com", "/prod/a%20b/./c//d/?z=1&a=%24~&b=x%2Fy&empty=", None),
        ("PUT", "bucket.s3.eu-west-1.amazonaws.com", "/dir/key%20with%20space%2Bplus.txt", b"hello"),
        ("GET", "s3.amazonaws.com", "/bucket/a//b/../c?list-type=2&prefix=x%2Fy", None),
    ],
)
def test_signatures_are_botocores(method: str, authority: str, target: str, body: bytes | None) -> None:
    signer = AwsSigner(KEYS, None, None, None)
    headers = [
        ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
        ("X-Amz-Meta-Note", "  two   spaces  "),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=PLACEHOLDER/20200101/x/y/aws4_request, SignedHeaders=host, Signature=00"),
        ("X-Amz-Date", "20200101T000000Z"),
        ("X-Amz-Security-Token", "placeholder-token"),
        ("User-Agent", "test"),
    ]
    out, body2, _ = _sign(signer, method, authority, target, headers, body, None)
    assert body2 is body
    assert "placeholder" not in json.dumps(out).lower()
    assert out["X-Amz-Security-Token"] == TOKEN
    p = check_request(method, f"https://{authority}{target}", out, body, SECRET, TOKEN)
    assert "x-amz-meta-note" in p.signed and "content-type" in p.signed and "user-agent" not in p.signed
    assert (p.service, p.region) == infer(authority)


def test_header_values_are_signed_as_their_bytes() -> None:
    signer = AwsSigner(KEYS, None, None, None)
    raw = [(b"Host", b"s3.amazonaws.com"), (b"X-Amz-Meta-Name", "caf\u00e9 \u00fc".encode())]
    out, _, _ = signer.sign("PUT", "s3.amazonaws.com", "/b/k", raw, b"x", None)
    headers = {n.decode(): v.decode("utf-8") for n, v in out}
    check_request("PUT", "https://s3.amazonaws.com/b/k", headers, b"x", SECRET, TOKEN)


def test_a_route_names_service_and_region_where_the_host_does_not() -> None:
    signer = AwsSigner(KEYS, "sqs", "eu-central-1", None)
    out, _, _ = _sign(signer, "POST", "127.0.0.1:4566", "/", [], b"Action=ListQueues", None)
    p = check_request("POST", "http://127.0.0.1:4566/", out, b"Action=ListQueues", SECRET, TOKEN)
    assert (p.service, p.region) == ("sqs", "eu-central-1")
    # The profile's region is the last resort; with none, the request cannot be signed.
    assert "eu-north-1" in _sign(AwsSigner(KEYS, "sqs", None, "eu-north-1"), "GET", "h:1", "/", [], None, None)[0][
        "Authorization"
    ]
    with pytest.raises(Exception, match="set `service` and `aws_region`"):
        _sign(AwsSigner(KEYS, None, None, None), "GET", "localhost:1", "/", [], None, None)


@pytest.mark.parametrize(
    ("host", "want"),
    [
        ("sqs.us-east-1.amazonaws.com", ("sqs", "us-east-1")),
        ("s3.eu-west-1.amazonaws.com", ("s3", "eu-west-1")),
        ("bucket.s3.amazonaws.com", ("s3", "us-east-1")),
        ("my.dotted.bucket.s3.eu-west-2.amazonaws.com", ("s3", "eu-west-2")),
        ("bucket.s3-us-west-2.amazonaws.com", ("s3", "us-west-2")),
        ("bucket.s3.dualstack.ap-south-1.amazonaws.com", ("s3", "ap-south-1")),
        ("s3.amazonaws.com", ("s3", "us-east-1")),
        ("sts.amazonaws.com", ("sts", "us-east-1")),
        ("iam.amazonaws.com", ("iam", "us-east-1")),
        ("sts.eu-west-1.amazonaws.com", ("sts", "eu-west-1")),
        ("abc123.execute-api.us-east-2.amazonaws.com", ("execute-api", "us-east-2")),
        ("email.us-east-1.amazonaws.com", ("ses", "us-east-1")),
        ("bedrock-runtime.us-west-2.amazonaws.com", ("bedrock", "us-west-2")),
        ("dynamodb.cn-north-1.amazonaws.com.cn", ("dynamodb", "cn-north-1")),
        ("sqs-fips.us-gov-west-1.amazonaws.com", ("sqs", "us-gov-west-1")),
        ("example.com", None),
        ("amazonaws.com.evil.example", None),
    ],
)
def test_service_and_region_from_the_host(host: str, want: tuple[str, str] | None) -> None:
    assert infer(host) == want


async def _stream(data: bytes, piece: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), piece):
        yield data[i : i + piece]


@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, 3 * CHUNK + 17])
async def test_s3_upload_streams_in_signed_chunks(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    signer = AwsSigner(KEYS, None, None, None)
    url = "https://bucket.s3.us-west-2.amazonaws.com/big.bin"
    out, body, length = _sign(
        signer, "PUT", "bucket.s3.us-west-2.amazonaws.com", "/big.bin", [("Content-Encoding", "gzip")],
        _stream(data, 10_007), size,
    )
    assert out["X-Amz-Content-SHA256"] == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    assert out["Content-Encoding"] == "aws-chunked,gzip"
    assert out["X-Amz-Decoded-Content-Length"] == str(size)
    check_request("PUT", url, out, None, SECRET, TOKEN)
    checker = ChunkChecker("PUT", url, out, SECRET, TOKEN)
    sent = 0
    async for piece in body:
        assert len(piece) <= CHUNK + 100  # one chunk at a time, never the whole body
        checker.feed(piece)
        sent += len(piece)
    assert checker.done and checker.decoded == size
    assert sent == length == chunked_length(size, CHUNK)


def test_s3_get_is_unsigned_payload_and_a_buffered_body_is_hashed() -> None:
    signer = AwsSigner(KEYS, None, None, None)
    out, _, _ = _sign(signer, "GET", "s3.amazonaws.com", "/b/k", [("X-Amz-Content-SHA256", "abc")], None, None)
    assert out["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    check_request("GET", "https://s3.amazonaws.com/b/k", out, None, SECRET, TOKEN)
    out, _, _ = _sign(signer, "PUT", "s3.amazonaws.com", "/b/k", [], b"small", None)
    assert out["X-Amz-Content-SHA256"] == hashlib.sha256(b"small").hexdigest()
    check_request("PUT", "https://s3.amazonaws.com/b/k", out, b"small", SECRET, TOKEN)


def test_a_content_hash_the_workload_sent_to_another_service_is_replaced_by_the_real_one() -> None:
    signer = AwsSigner(KEYS, None, None, None)
    body = b'{"vaultName": "v"}'
    out, _, _ = _sign(signer, "POST", "glacier.us-east-1.amazonaws.com", "/-/vaults/v", [("X-Amz-Content-SHA256", "0" * 64)], body, None)
    assert out["X-Amz-Content-SHA256"] == hashlib.sha256(body).hexdigest()
    check_request("POST", "https://glacier.us-east-1.amazonaws.com/-/vaults/v", out, body, SECRET, TOKEN)
    out, _, _ = _sign(signer, "POST", "sqs.us-east-1.amazonaws.com", "/", [], body, None)
    assert "X-Amz-Content-SHA256" not in out


def test_bodies_that_cannot_be_hashed_are_refused() -> None:
    signer = AwsSigner(KEYS, None, None, None)
    with pytest.raises(BodyTooLargeToSign, match=r"limits\.replay_body"):
        _sign(signer, "POST", "sqs.us-east-1.amazonaws.com", "/", [], _stream(b"x", 1), 10)
    with pytest.raises(BodyTooLargeToSign, match="Content-Length"):
        _sign(signer, "PUT", "s3.amazonaws.com", "/b/k", [], _stream(b"x", 1), None)


def test_expired_answers_are_recognised() -> None:
    s = AwsSigner(KEYS, None, None, None)
    assert s.wants_peek(400) and s.wants_peek(403) and not s.wants_peek(500)
    assert s.refused([], b"<Error><Code>ExpiredToken</Code><Message>x</Message></Error>")
    assert s.refused([], b'{"__type":"com.amazon.coral.service#ExpiredTokenException","message":"x"}')
    assert s.refused([(b"x-amzn-ErrorType", b"ExpiredTokenException:http://internal.amazon.com/")], b"")
    assert s.refused([], b"<Response><Errors><Error><Code>RequestExpired</Code></Error></Errors></Response>")
    fresh = AwsSigner(KEYS, None, None, None)
    assert not fresh.refused([], b"<Error><Code>SignatureDoesNotMatch</Code></Error>")
    assert not fresh.refused([], b"<Error><Code>InvalidClientTokenId</Code></Error>") and not fresh.rejected


# -- through a running proxy ----------------------------------------------------------------------

OLD = ("AKIDOLDOLDOLDOLD0001", "oldSecretKeyOldSecretKeyOldSecretKey0001", "oldSessionTokenOldSessionToken0001")
NEW = ("AKIDNEWNEWNEWNEW0002", "newSecretKeyNewSecretKeyNewSecretKey0002", "newSessionTokenNewSessionToken0002")

_PROCESS = """
import json, pathlib, sys
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) if count.exists() else 0
count.write_text(str(n + 1))
keys = json.loads(sys.argv[2])[min(n, 1)]
print(json.dumps({"Version": 1, "AccessKeyId": keys[0], "SecretAccessKey": keys[1], "SessionToken": keys[2]}))
"""


@pytest.fixture
def aws_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A profile whose credential_process prints the OLD keys the first time, NEW ones after; returns its counter."""
    script = tmp_path / "creds.py"
    script.write_text(_PROCESS)
    counter = tmp_path / "runs"
    keys = json.dumps([OLD, NEW]).replace('"', '\\"')
    cfg = tmp_path / "aws_config"
    cfg.write_text(f'[profile test]\ncredential_process = {sys.executable} {script} {counter} "{keys}"\n')
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return counter


@pytest.fixture
async def aws_upstream() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """Checks each signature with botocore; the OLD key gets ExpiredToken, as AWS answers it."""
    seen: list[dict[str, Any]] = []
    port_box: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        key = headers.get("Authorization", "").partition("Credential=")[2].partition("/")[0]
        seen.append({"key": key, "headers": headers, "body": body})
        if key == OLD[0]:
            xml = "<ErrorResponse><Error><Type>Sender</Type><Code>ExpiredToken</Code>"
            xml += "<Message>The security token included in the request is expired</Message></Error></ErrorResponse>"
            return web.Response(status=403, text=xml, content_type="text/xml")
        url = f"http://127.0.0.1:{port_box[0]}{request.raw_path}"
        try:
            check_request(request.method, url, headers, body, NEW[1], NEW[2])
        except AssertionError:
            return web.Response(status=403, text="<Error><Code>SignatureDoesNotMatch</Code></Error>")
        return web.Response(text="<ok/>", content_type="text/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port_box.append(runner.addresses[0][1])
    yield f"http://127.0.0.1:{port_box[0]}", seen
    await runner.cleanup()


async def test_expired_token_answer_refreshes_the_chain_once_and_retries(
    make_proxy: Any, aws_profile: Path, aws_upstream: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = aws_upstream
    p = await make_proxy(
        f"""
        routes:
          - name: aws
            gateway: /aws
            upstream: {url}
            auth: {{type: aws_sigv4, service: sqs, aws_region: us-east-1, profile: test}}
        """
    )
    p.secrets |= {OLD[1], OLD[2], NEW[1], NEW[2]}
    placeholder = {
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAPLACEHOLDER/20200101/us-east-1/sqs/aws4_request, "
        "SignedHeaders=host, Signature=" + "0" * 64,
        "X-Amz-Date": "20200101T000000Z",
        "X-Amz-Security-Token": "placeholder",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{p.url}/aws/?x=1", content=b"Action=SendMessage&MessageBody=hi", headers=placeholder)
        assert r.status_code == 200, r.text
        assert [s["key"] for s in seen] == [OLD[0], NEW[0]]  # one refresh of the chain, one retry
        assert aws_profile.read_text() == "2"
        assert all("placeholder" not in json.dumps(s["headers"]).lower() for s in seen)
        assert seen[1]["headers"]["X-Amz-Security-Token"] == NEW[2]
        assert any("token=retried" in line for line in p.access_lines())
        # The next requests keep the new keys: no more runs of the process.
        for _ in range(3):
            r = await c.get(f"{p.url}/aws/?Action=GetQueueUrl&QueueName=a%20b")
            assert r.status_code == 200, r.text
        assert aws_profile.read_text() == "2"


async def test_a_body_too_large_to_hash_gets_413(
    make_proxy: Any, aws_profile: Path, aws_upstream: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = aws_upstream
    p = await make_proxy(
        f"""
        limits: {{replay_body: 1024}}
        routes:
          - name: aws
            gateway: /aws
            upstream: {url}
            auth: {{type: aws_sigv4, service: sqs, aws_region: us-east-1, profile: test}}
        """
    )
    p.secrets |= {OLD[1], OLD[2], NEW[1], NEW[2]}
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{p.url}/aws/", content=b"x" * 5000)
        assert r.status_code == 413
        assert r.headers["x-authproxy-error"] == "body_too_large_to_sign"
        assert r.json()["route"] == "aws"
        p.bodies.append(r.text)
        # A chunked body over the limit, too.

        async def gen() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"y" * 1000
                await asyncio.sleep(0)

        r = await c.post(f"{p.url}/aws/", content=gen())
        assert r.status_code == 413
    assert seen == []


# -- the command line ---------------------------------------------------------------------------

_ROUTE = """
routes:
  - name: aws
    match: sqs.us-east-1.amazonaws.com
    auth:
      type: aws_sigv4
      {extra}
"""


def _cli(tmp_path: Path, script: str, *args: str, env: dict[str, str] | None = None) -> Any:
    import os
    import subprocess

    full = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60, env=full, cwd=Path.cwd()
    )


_MAIN = "import sys\nfrom authproxy.cli.main import main\nsys.exit(main(sys.argv[1:]))"


def test_check_says_to_install_the_aws_extra_when_botocore_is_missing(tmp_path: Path) -> None:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/state\n" + _ROUTE.format(extra="profile: dev"))
    hidden = "import sys\nsys.modules['botocore'] = None\n" + _MAIN
    r = _cli(tmp_path, hidden, "check", "-c", str(cfg))
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {cfg}:7: routes[0].auth.type: `aws_sigv4` needs botocore, which is not installed: "
                      "install `authproxy[aws]`"], r.stderr
    ok = _cli(tmp_path, _MAIN, "check", "-c", str(cfg))
    assert ok.returncode == 0, ok.stderr
    assert "aws_sigv4" in ok.stdout


def test_check_refuses_a_bad_region_and_unknown_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/state\n" + _ROUTE.format(extra="aws_region: Frankfurt\n      region: x"))
    r = _cli(tmp_path, _MAIN, "check", "-c", str(cfg))
    assert r.returncode == 2
    assert "routes[0].auth.aws_region: `Frankfurt` is not an AWS region" in r.stderr
    assert "routes[0].auth.region" in r.stderr


def test_loading_an_aws_route_does_not_import_botocore_and_token_shows_no_secret(tmp_path: Path) -> None:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/state\n" + _ROUTE.format(extra="service: sqs"))
    probe = f"import sys\nfrom authproxy.config import load\nload({str(cfg)!r})\nprint('botocore' in sys.modules)"
    assert _cli(tmp_path, probe).stdout.strip() == "False"
    env = {
        "AWS_ACCESS_KEY_ID": "AKIDTOKENCMD00000001",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": TOKEN,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    r = _cli(tmp_path, _MAIN, "token", "aws", "-c", str(cfg), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIDTOKENCMD00000001/... (signed per request)",
        "X-Amz-Security-Token: ****",
    ]
    from tests.conftest import assert_no_secrets

    assert_no_secrets([r.stdout, r.stderr], [SECRET, TOKEN])
    shown = _cli(tmp_path, _MAIN, "token", "aws", "--show", "-c", str(cfg), env=env)
    assert f"X-Amz-Security-Token: {TOKEN}" in shown.stdout
    missing = _cli(tmp_path, _MAIN, "token", "aws", "-c", str(cfg), env={**env, "AWS_ACCESS_KEY_ID": ""})
    assert missing.returncode == 1 and "found no keys" in missing.stderr


# -- generated requests ------------------------------------------------------------------------


_SEGMENT = st.one_of(st.text(min_size=0, max_size=12), st.sampled_from([".", "..", ""]))
_PAIR = st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8))
_VALUE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    service=st.sampled_from(["s3", "sqs", "execute-api"]),
    segments=st.lists(_SEGMENT, max_size=5),
    pairs=st.lists(_PAIR, max_size=4),
    metas=st.dictionaries(st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True), _VALUE, max_size=3),
    body=st.one_of(st.none(), st.binary(max_size=64)),
)
def test_generated_requests_are_signed_as_botocore_signs_them(
    service: str, segments: list[str], pairs: list[tuple[str, str]], metas: dict[str, str], body: bytes | None
) -> None:
    """Paths with any characters and dot or empty segments, queries with any names and values,
    metadata with any printable text: botocore computes the same signature."""
    from urllib.parse import quote

    path = "/" + "/".join(s if s in (".", "..") else quote(s, safe="") for s in segments)
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in pairs)
    target = path + ("?" + query if query else "")
    authority = {"s3": "s3.us-west-2.amazonaws.com", "sqs": "sqs.eu-west-1.amazonaws.com"}.get(
        service, "abc.execute-api.ap-south-1.amazonaws.com"
    )
    headers = [(f"X-Amz-Meta-{k}", v) for k, v in metas.items()]
    out, _, _ = _sign(AwsSigner(KEYS, None, None, None), "POST", authority, target, headers, body, None)
    check_request("POST", f"https://{authority}{target}", out, body, SECRET, TOKEN)


async def test_expiring_keys_are_read_again_before_botocore_would_renew_them(
    make_proxy: Any, aws_profile: Path, tmp_path: Path
) -> None:
    """A credential_process that prints an Expiration gives refreshable keys: cached here at most 540 s,
    whatever `default_ttl` says; static keys for `default_ttl`."""
    import time as _time
    from datetime import UTC, datetime, timedelta

    script = tmp_path / "expiring.py"
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    script.write_text(
        "import json, pathlib, sys\n"
        f"c = pathlib.Path({str(aws_profile)!r}); c.write_text(str(int(c.read_text() or 0) + 1) if c.exists() else '1')\n"
        f"print(json.dumps({{'Version': 1, 'AccessKeyId': {NEW[0]!r}, 'SecretAccessKey': {NEW[1]!r},"
        f" 'SessionToken': {NEW[2]!r}, 'Expiration': {later!r}}}))\n"
    )
    cfg = Path(os.environ["AWS_CONFIG_FILE"])
    cfg.write_text(f"[profile test]\ncredential_process = {sys.executable} {script}\n[profile static]\n"
                   f"aws_access_key_id = {OLD[0]}\naws_secret_access_key = {OLD[1]}\n")
    p = await make_proxy(
        """
        routes:
          - name: expiring
            match: sqs.us-east-1.amazonaws.com
            auth: {type: aws_sigv4, profile: test, default_ttl: 3600}
          - {name: static, match: sts.amazonaws.com, auth: {type: aws_sigv4, profile: static, default_ttl: 900}}
        """
    )
    p.secrets |= {NEW[1], NEW[2], OLD[1]}
    routes = {r.name: r for r in p.runtime.snapshot.config.routes}
    cred, _ = await p.runtime.tokens.get(routes["expiring"])
    assert cred.expires_at is not None and 500 < cred.expires_at - _time.time() <= 540
    again, state = await p.runtime.tokens.get(routes["expiring"])
    assert again is cred and state.value == "cached" and aws_profile.read_text() == "1"
    static, _ = await p.runtime.tokens.get(routes["static"])
    assert static.expires_at is not None and 850 < static.expires_at - _time.time() <= 900


async def test_an_expired_answer_to_a_streamed_upload_goes_back_and_the_next_request_reads_the_chain_anew(
    make_proxy: Any, aws_profile: Path, aws_upstream: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = aws_upstream
    p = await make_proxy(
        f"""
        limits: {{replay_body: 1024}}
        routes:
          - name: s3
            gateway: /s3
            upstream: {url}
            auth: {{type: aws_sigv4, service: s3, aws_region: us-east-1, profile: test}}
        """
    )
    p.secrets |= {OLD[1], OLD[2], NEW[1], NEW[2]}
    async with httpx.AsyncClient() as c:
        r = await c.put(f"{p.url}/s3/bucket/big", content=b"z" * 200_000)
        assert r.status_code == 403 and b"ExpiredToken" in r.content  # streamed: it cannot be sent again
        assert any("retry=skipped" in line for line in p.access_lines())
        r = await c.put(f"{p.url}/s3/bucket/big", content=b"z" * 200_000)
        assert r.status_code == 200, r.text
    assert [s["key"] for s in seen] == [OLD[0], NEW[0]]
    assert seen[1]["headers"]["X-Amz-Content-SHA256"] == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    assert aws_profile.read_text() == "2"
