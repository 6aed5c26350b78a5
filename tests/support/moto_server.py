"""moto in server mode as a real process, with authentication enforced, and the recording hop in front of it.

moto checks signatures only for access keys in its own IAM, and only after
``INITIAL_NO_AUTH_ACTION_COUNT`` actions: the set-up here makes exactly
that many (create the user, its access key, its policy), so every request
after them must carry a valid signature of that user's key.

``RecordingHop`` is a byte relay between the proxy and moto that parses the
requests going through (httptools) and checks each S3 request's signature,
and every chunk signature of a streamed upload, with botocore's signing code
(``sigv4_verify.py``): moto trusts ``X-Amz-Content-SHA256`` and does not
check chunk signatures. It keeps one chunk at a time, never a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import httptools

from tests.support.sigv4_verify import ChunkChecker, check_request

SETUP_ACTIONS = 3  # iam:CreateUser, iam:CreateAccessKey, iam:PutUserPolicy
USER = "proxy-user"
_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Moto:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    access_key: str = ""
    secret_key: str = ""


@contextlib.contextmanager
def moto_server() -> Iterator[Moto]:
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_ACTIONS)}
    for name in list(env):
        if name.lower().endswith("_proxy"):
            del env[name]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    moto = Moto(f"http://127.0.0.1:{port}", port, proc)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto did not start")
            time.sleep(0.1)
        iam = boto3.client(
            "iam", endpoint_url=moto.url, region_name="us-east-1",
            aws_access_key_id="AKIASETUPSETUPSETUP0", aws_secret_access_key="setup-only",
        )
        iam.create_user(UserName=USER)
        key = iam.create_access_key(UserName=USER)["AccessKey"]
        iam.put_user_policy(UserName=USER, PolicyName="all", PolicyDocument=json.dumps(_POLICY))
        moto.access_key, moto.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        yield moto
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Checked:
    method: str
    path: str
    payload: str
    chunks: int = 0
    decoded: int = 0
    error: str | None = None


class _Parse:
    """httptools callbacks for one connection's requests."""

    def __init__(self, hop: RecordingHop) -> None:
        self.hop = hop
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.checker: ChunkChecker | None = None
        self.body_size = 0
        self.current: Checked | None = None
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.url, self.headers, self.checker, self.body_size = b"", [], None, 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        method = self.parser.get_method().decode()
        headers = dict(self.headers)
        low = {k.lower(): v for k, v in headers.items()}
        url = f"http://{low['host']}{self.url.decode('latin-1')}"
        payload = low.get("x-amz-content-sha256", "")
        self.current = Checked(method, self.url.decode("latin-1").partition("?")[0], payload)
        self.hop.checked.append(self.current)
        try:
            check_request(method, url, headers, None, self.hop.secret)
            if payload == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD":
                self.checker = ChunkChecker(method, url, headers, self.hop.secret)
        except AssertionError as exc:
            self.current.error = f"signature: {exc}"

    def on_body(self, body: bytes) -> None:
        if self.checker is not None and self.current is not None and self.current.error is None:
            try:
                self.checker.feed(body)
            except AssertionError as exc:
                self.current.error = f"chunks: {exc}"

    def on_message_complete(self) -> None:
        if self.checker is not None and self.current is not None:
            self.current.chunks, self.current.decoded = self.checker.chunks, self.checker.decoded
            if not self.checker.done and self.current.error is None:
                self.current.error = "the chunked body did not end with its final chunk"


@dataclass
class RecordingHop:
    """``127.0.0.1:port`` → moto, checking every request on the way."""

    target_port: int
    secret: str
    checked: list[Checked] = field(default_factory=list)
    port: int = 0
    _server: Any = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        parse = _Parse(self)

        async def requests() -> None:
            while data := await reader.read(256 * 1024):
                parse.parser.feed_data(data)
                up_writer.write(data)
                await up_writer.drain()
            with contextlib.suppress(OSError):
                up_writer.write_eof()

        async def responses() -> None:
            while data := await up_reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.write_eof()

        with contextlib.suppress(Exception):
            await asyncio.gather(requests(), responses())
        writer.close()
        up_writer.close()
