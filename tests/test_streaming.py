"""Bodies stream both ways with bounded memory, measured on a real proxy process."""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
from pathlib import Path

import httpx

from tests.support.proc import ProxyProcess, start_proxy

from .conftest import Upstream, assert_no_secrets

KEY = "stream-key-0a9b8c7d6e"


def _proxy(tmp_path: Path, upstream: Upstream) -> ProxyProcess:
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            routes:
              - name: files
                match: {upstream.authority}
                auth: {{type: api_key, header: X-API-Key, value: "${{STREAM_KEY}}"}}
            """
        )
    )
    return start_proxy(cfg, env={"STREAM_KEY": KEY})


async def _sample_peak(p: ProxyProcess, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        peak = max(peak, p.rss_kib())
        await asyncio.sleep(0.05)
    return peak


async def test_200mb_download_streams_with_bounded_rss(tmp_path: Path, upstream: Upstream) -> None:
    p = _proxy(tmp_path, upstream)
    try:
        size = 200 * 1024 * 1024
        async with httpx.AsyncClient(proxy=p.url, timeout=120) as client:
            assert (await client.get(f"{upstream.url}/big?size=1024")).status_code == 200  # warm up
            base = p.rss_kib()
            stop = asyncio.Event()
            sampler = asyncio.create_task(_sample_peak(p, stop))
            got = 0
            async with client.stream("GET", f"{upstream.url}/big?size={size}") as r:
                assert r.status_code == 200
                assert r.headers["content-length"] == str(size)
                async for chunk in r.aiter_raw():
                    got += len(chunk)
            stop.set()
            peak = await sampler
        assert got == size
        assert peak - base < 32 * 1024, f"RSS grew by {(peak - base) // 1024} MiB"
    finally:
        assert p.stop() == 0
    assert "status=200" in p.stderr_text()
    assert_no_secrets([p.stderr_text()], [KEY])


async def test_chunked_download_without_length(tmp_path: Path, upstream: Upstream) -> None:
    p = _proxy(tmp_path, upstream)
    try:
        async with httpx.AsyncClient(proxy=p.url, timeout=60) as client:
            r = await client.get(f"{upstream.url}/big?size=3000000&chunked=1")
        assert r.status_code == 200 and len(r.content) == 3000000
        assert "content-length" not in r.headers
    finally:
        p.stop()


async def test_20mb_post_streamed_with_and_without_length(tmp_path: Path, upstream: Upstream) -> None:
    p = _proxy(tmp_path, upstream)
    size = 20 * 1024 * 1024
    block = bytes(range(256)) * 4096  # 1 MiB
    expected = hashlib.sha256(block * 20).hexdigest()

    async def gen():
        for _ in range(20):
            yield block

    try:
        async with httpx.AsyncClient(proxy=p.url, timeout=120) as client:
            base = p.rss_kib()
            r = await client.post(f"{upstream.url}/upload", content=block * 20)
            assert r.status_code == 200
            info = r.json()
            assert info["body_size"] == size and info["body_sha256"] == expected
            assert not info["chunked"]
            r = await client.post(f"{upstream.url}/upload-chunked", content=gen())
            info = r.json()
            assert info["body_size"] == size and info["body_sha256"] == expected
            assert info["chunked"]
            assert p.rss_kib() - base < 32 * 1024
    finally:
        p.stop()
    assert_no_secrets([p.stderr_text()], [KEY])


async def _download(p: ProxyProcess, url: str, size: int, verify: object) -> tuple[int, int]:
    async with httpx.AsyncClient(proxy=p.url, timeout=120, verify=verify) as client:  # type: ignore[arg-type]
        assert (await client.get(url.replace(f"size={size}", "size=1024"))).status_code == 200
        base = p.rss_kib()
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_peak(p, stop))
        got = 0
        async with client.stream("GET", url) as r:
            assert r.status_code == 200
            async for chunk in r.aiter_raw():
                got += len(chunk)
        stop.set()
        return got, await sampler - base


async def test_200mb_through_intercept_and_blind_tunnel(tmp_path: Path, tls_upstream) -> None:
    import ssl

    up, ca_path = tls_upstream
    size = 200 * 1024 * 1024
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""
            state_dir: {tmp_path / "state"}
            timeouts: {{drain: 2}}  # a half-closed tunnel waits for its upstream: bound the wait
            routes:
              - name: files
                match: {up.authority}/big
                ca_file: {ca_path}
                auth: {{type: api_key, header: X-API-Key, value: "${{STREAM_KEY}}"}}
              - name: elsewhere
                match: tunnel-only.example
                auth: {{type: api_key, value: "${{STREAM_KEY}}"}}
            """
        )
    )
    p = start_proxy(cfg, env={"STREAM_KEY": KEY})
    try:
        proxy_ca = ssl.create_default_context(cafile=str(tmp_path / "state" / "ca.pem"))
        got, growth = await _download(p, f"{up.url}/big?size={size}", size, proxy_ca)
        assert got == size
        assert growth < 32 * 1024, f"intercepted: RSS grew by {growth // 1024} MiB"
    finally:
        p.stop()
    # Now as a blind tunnel: a config where no route matches the upstream.
    cfg.write_text(cfg.read_text().replace(f"match: {up.authority}/big", "match: not-this-one.example"))
    p = start_proxy(cfg, env={"STREAM_KEY": KEY})
    try:
        upstream_ca = ssl.create_default_context(cafile=str(ca_path))
        got, growth = await _download(p, f"{up.url}/big?size={size}", size, upstream_ca)
        assert got == size
        assert growth < 32 * 1024, f"tunnel: RSS grew by {growth // 1024} MiB"
    finally:
        assert p.stop() == 0
    assert "CONNECT tunnel" in p.stderr_text()
    assert_no_secrets([p.stderr_text()], [KEY])


async def test_upload_to_an_upstream_that_stops_reading_holds_the_client_back(tmp_path: Path) -> None:
    """Backpressure end to end: the proxy reads no faster than the upstream takes, so its memory stays flat.

    The upstream reads the request head, then nothing for 2 s while the client
    pushes a 64 MiB body as fast as it can: the client must get stuck after a
    few MiB of socket buffers (not after all of it, held in the proxy), and once
    the upstream reads again every byte arrives.
    """
    size = 64 * 1024 * 1024
    block = bytes(range(256)) * 4096  # 1 MiB
    reading = asyncio.Event()
    got: dict[str, object] = {}

    async def stalling_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        got["key"] = KEY.encode() in head
        await reading.wait()
        digest = hashlib.sha256()
        left = size
        while left:
            chunk = await reader.read(min(left, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
        got["size"], got["sha"] = size - left, digest.hexdigest()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(stalling_upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(
        f'routes:\n  - {{name: sink, match: "127.0.0.1:{port}", auth: {{type: api_key, value: "${{STREAM_KEY}}"}}}}\n'
    )
    p = start_proxy(cfg, env={"STREAM_KEY": KEY})
    try:
        pr, pw = await asyncio.open_connection("127.0.0.1", p.port)
        base = p.rss_kib()
        pw.write(f"POST http://127.0.0.1:{port}/upload HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n".encode())
        pw.write(f"content-length: {size}\r\n\r\n".encode())
        sent = 0

        async def push() -> None:
            nonlocal sent
            while sent < size:
                pw.write(block)
                await pw.drain()
                sent += len(block)

        pusher = asyncio.create_task(push())
        await asyncio.sleep(2.0)
        held_at, growth = sent, p.rss_kib() - base
        reading.set()
        await asyncio.wait_for(pusher, 60)
        answer = await asyncio.wait_for(pr.readuntil(b"\r\n\r\nok"), 30)  # the connection stays open
        pw.close()
    finally:
        server.close()
        assert p.stop() == 0
    assert held_at < 32 * 1024 * 1024, f"the client got {held_at // (1 << 20)} MiB in while the upstream read nothing"
    assert growth < 16 * 1024, f"RSS grew by {growth // 1024} MiB while the upstream read nothing"
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok")
    assert got == {"key": True, "size": size, "sha": hashlib.sha256(block * 64).hexdigest()}
    assert_no_secrets([p.stderr_text()], [KEY])
