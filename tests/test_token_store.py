"""The token store interface on its two stores, in process, against a real redis-server.

What is looked at: the keys and values Redis holds (read with a plain client,
opened with the test's copy of the key), the fencing check refusing a late
writer, ``ensure`` shared between two stores, and ``check``'s words on a bad
``token_store:`` block.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from authproxy.config import load
from authproxy.disk.store import StateStore
from authproxy.disk.tokenstore import TokenStore
from authproxy.errors import TokenStoreUnavailable
from authproxy.ops.metrics import Metrics
from authproxy.secrecy.sealing import Sealer, SealError
from authproxy.tokens.lease import Lease, Scripts
from authproxy.tokens.redisstore import RedisStore
from tests.support.redisd import RedisServer, free_port, redis_server

__all__ = ["redis_server"]

KEY = base64.b64encode(b"k" * 16 + os.urandom(16)).decode()


def _config(tmp_path: Path, url: str, *, key: str = KEY, extra: str = "") -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            state_dir: {tmp_path / "state"}
            token_store: {{url: "{url}", key: "${{STORE_KEY}}"{extra}}}
            routes: []
            """
        )
    )
    return path


def _redis_store(tmp_path: Path, server: RedisServer, token_fetch: float = 8.0) -> RedisStore:
    cfg = load(_config(tmp_path, server.url))
    assert cfg.token_store is not None
    return RedisStore(cfg.token_store, token_fetch, Metrics())


@pytest.fixture(autouse=True)
def _clean(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    redis_server.flush()
    monkeypatch.setenv("STORE_KEY", KEY)


async def test_records_are_sealed_and_named_by_hmac(tmp_path: Path, redis_server: RedisServer) -> None:
    store = _redis_store(tmp_path, redis_server)
    secret = "rt-9f8e7d6c5b4a-never-in-redis"

    async def fetch(rec: dict[str, Any]) -> str:
        rec["refresh_token"] = secret
        return "fetched"

    try:
        assert await store.adopt_or_fetch("crm-route", lambda rec: None, fetch) == "fetched"
        # The next caller adopts what the first wrote.
        got = await store.adopt_or_fetch("crm-route", lambda rec: rec.get("refresh_token"), fetch)
        assert got == secret
    finally:
        await store.close()
    items = redis_server.everything()
    assert items, "nothing was written"
    blob = b"\n".join(k + b"\n" + v for k, v in items)
    for form in (secret.encode(), b"crm-route", b"refresh_token", base64.b64encode(secret.encode())[:16]):
        assert form not in blob
    sealer = Sealer(base64.b64decode(KEY))
    record_key = "authproxy:" + sealer.name("record", "crm-route")
    value = redis_server.client().get(record_key)
    assert value is not None
    assert sealer.open(value, record_key)["refresh_token"] == secret
    # Moved under another name, the value does not open: the name is its associated data.
    with pytest.raises(SealError):
        sealer.open(value, "authproxy:" + sealer.name("record", "other-route"))
    with pytest.raises(SealError):
        Sealer(os.urandom(32)).open(value, record_key)


async def test_a_late_writer_is_refused_by_the_fence(tmp_path: Path, redis_server: RedisServer) -> None:
    """Holder A's lease runs out, B takes the next fence and writes; A's write is refused."""
    client = redis_server.client()
    import redis.asyncio as aioredis

    aclient = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    scripts = Scripts(aclient)
    a = Lease(scripts, "t:lock", "t:fence", 0.3, 1.0)
    b = Lease(scripts, "t:lock", "t:fence", 5.0, 1.0)
    try:
        assert await a.acquire()
        assert not await b.acquire()  # held
        client.delete("t:lock")  # what the lease's expiry does
        assert await b.acquire() and b.fence > a.fence
        assert await b.write("t:record", b"newer")
        assert not await a.held()  # a's last look before sending would stop it
        assert not await a.write("t:record", b"older")
        assert client.get("t:record") == b"newer"
        await a.release()  # not a's to release any more
        assert client.get("t:lock") is not None
        await b.release()
        assert client.get("t:lock") is None
        # A lease that merely ran out, with no one taking it since, still writes: nothing is newer.
        c = Lease(scripts, "t:lock", "t:fence", 5.0, 1.0)
        assert await c.acquire()
        client.delete("t:lock")
        assert await c.write("t:record", b"latest")
        assert client.get("t:record") == b"latest"
    finally:
        await aclient.aclose()


async def test_waiters_adopt_what_the_holder_wrote(tmp_path: Path, redis_server: RedisServer) -> None:
    """Five stores (five replicas) ask at once: one fetch, four adoptions, four lock waits."""
    stores = [_redis_store(tmp_path, redis_server) for _ in range(5)]
    fetches = 0
    gate = asyncio.Event()

    async def fetch(rec: dict[str, Any]) -> str:
        nonlocal fetches
        fetches += 1
        await gate.wait()
        rec["access"] = "tok-1"
        return "tok-1"

    def adopt(rec: dict[str, Any]) -> str | None:
        return rec.get("access")

    try:
        tasks = [asyncio.create_task(s.adopt_or_fetch("r", adopt, fetch)) for s in stores]
        while fetches == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the others are polling now, not fetching
        gate.set()
        assert await asyncio.gather(*tasks) == ["tok-1"] * 5
    finally:
        for s in stores:
            await s.close()
    assert fetches == 1


async def test_ensure_is_create_if_absent_on_both_stores(tmp_path: Path, redis_server: RedisServer) -> None:
    made: list[int] = []

    def make(n: int) -> Any:
        def inner() -> dict[str, Any]:
            made.append(n)
            return {"placeholder": f"ph-{n}-{os.urandom(4).hex()}"}

        return inner

    redis_stores = [_redis_store(tmp_path, redis_server) for _ in range(3)]
    file_stores = [StateStore(tmp_path / "state-f") for _ in range(3)]
    try:
        for stores in (redis_stores, file_stores):
            made.clear()
            typed: list[TokenStore] = list(stores)
            got = await asyncio.gather(*(s.ensure("placeholder:crm", make(i)) for i, s in enumerate(typed)))
            assert got[0] == got[1] == got[2], got
            assert await typed[0].ensure("placeholder:crm", make(9)) == got[0]  # never overwritten
            assert 9 not in made
            other = await typed[1].ensure("dpop:crm", make(7))
            assert other != got[0]
        with pytest.raises(ValueError):
            await file_stores[0].ensure("../escape", make(1))
    finally:
        for s in redis_stores:
            await s.close()
    sealed = [v for _, v in redis_server.everything()]
    assert all(b"ph-" not in v for v in sealed)


async def test_an_unreachable_store_raises_token_store_unavailable(tmp_path: Path) -> None:
    dead = RedisServer(free_port(), tmp_path)  # never started
    store = _redis_store(tmp_path, dead)

    async def fetch(rec: dict[str, Any]) -> str:
        return "local"

    try:
        with pytest.raises(TokenStoreUnavailable):
            await store.adopt_or_fetch("r", lambda rec: None, fetch)
        # A grant that rotates nothing may fetch without the lease.
        assert await store.adopt_or_fetch("r", lambda rec: None, fetch, unlocked_ok=True) == "local"
        await store.probe()
        health = store.health()
        assert health["state"] == "unreachable" and health["kind"] == "redis"
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("url", "key", "said"),
    [
        ("redis://127.0.0.1:6379/0", base64.b64encode(os.urandom(16)).decode(), "needs at least 32 random bytes"),
        ("redis://127.0.0.1:6379/0", "not base64!!", "is not Base64"),
        ("http://127.0.0.1:6379/0", KEY, "must be redis://HOST:PORT/DB or rediss://"),
    ],
)
def test_check_refuses_a_bad_token_store(tmp_path: Path, url: str, key: str, said: str) -> None:
    path = _config(tmp_path, url, key=key)
    out = subprocess.run(
        [sys.executable, "-m", "authproxy", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "STORE_KEY": key},
        timeout=60,
    )
    assert out.returncode == 2, out
    assert "token_store." in out.stderr and said in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_check_accepts_rediss_and_a_password_from_the_environment(tmp_path: Path) -> None:
    password = "redis-pw-3c1e9a77b2"
    path = _config(tmp_path, "rediss://:${REDIS_PW}@cache.internal:6380/2", extra=", prefix: 'gw1:'")
    os.environ["REDIS_PW"] = password
    try:
        cfg = load(path)
    finally:
        del os.environ["REDIS_PW"]
    assert cfg.token_store is not None
    assert cfg.token_store.where == "rediss://cache.internal:6380/2"
    assert cfg.token_store.prefix == "gw1:"
    from authproxy.secrecy.redact import redact

    assert password not in redact(f"url {cfg.token_store.url.reveal()}")
    assert dataclasses.replace(cfg.token_store).url.reveal().endswith("@cache.internal:6380/2")


def test_redis_is_imported_only_with_a_token_store(tmp_path: Path, redis_server: RedisServer) -> None:
    """A proxy without `token_store:` never loads redis-py (nor the AES-GCM cipher); one with it does."""
    probe = (
        "import sys; from authproxy.config import load; from authproxy.runtime import Runtime; "
        "Runtime(load(sys.argv[1])); "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] == 'redis' or m.endswith('.aead')}))"
    )
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"state_dir: {tmp_path / 'state'}\nroutes: []\n")
    shared = _config(tmp_path, redis_server.url)
    seen = []
    for path in (plain, shared):
        out = subprocess.run(
            [sys.executable, "-c", probe, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "STORE_KEY": KEY},
        )
        assert out.returncode == 0, out.stderr
        seen.append(out.stdout.strip())
    assert seen == ["[]", "['cryptography', 'redis']"]


async def test_the_write_after_a_fetch_waits_out_a_redis_restart(tmp_path: Path, redis_server: RedisServer) -> None:
    """The server may have rotated the refresh token: the holder's write is tried again until Redis is back."""
    store = _redis_store(tmp_path, redis_server)
    restarted: list[asyncio.Task[None]] = []

    async def fetch(rec: dict[str, Any]) -> str:
        await asyncio.to_thread(redis_server.stop)
        rec["refresh_token"] = "rotated-while-redis-was-away"
        restarted.append(asyncio.create_task(asyncio.to_thread(redis_server.start)))
        return "fetched"

    try:
        assert await store.adopt_or_fetch("r", lambda rec: None, fetch) == "fetched"
        await restarted[0]
        got = await store.adopt_or_fetch("r", lambda rec: rec.get("refresh_token"), fetch)
    finally:
        await store.close()
    assert got == "rotated-while-redis-was-away"


def test_check_names_the_store_without_its_password(tmp_path: Path) -> None:
    path = _config(tmp_path, "redis://:${REDIS_PW}@cache.internal:6379/3")
    out = subprocess.run(
        [sys.executable, "-m", "authproxy", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "STORE_KEY": KEY, "REDIS_PW": "check-redis-pw-6d2a"},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "token store: redis://cache.internal:6379/3, keys prefixed authproxy:" in out.stderr
    assert "check-redis-pw-6d2a" not in out.stdout + out.stderr and KEY not in out.stdout + out.stderr


async def test_a_made_dpop_key_is_shared_through_the_store(tmp_path: Path, redis_server: RedisServer) -> None:
    """Replicas sign with one DPoP key (the tokens they adopt are bound to it); sealed in Redis."""
    from authproxy.credentials.grants.dpop import DPoP

    stores = [_redis_store(tmp_path, redis_server) for _ in range(2)]
    try:
        keys = [await DPoP(None, None).load_key(s, "api") for s in stores]
        other = await DPoP(None, None).load_key(stores[0], "other-route")
    finally:
        for s in stores:
            await s.close()
    assert keys[0].jkt == keys[1].jkt != other.jkt
    assert all(b"PRIVATE KEY" not in v for _, v in redis_server.everything())
    # The file store keeps it in the state directory, as for one host.
    file_keys = [await DPoP(None, None).load_key(StateStore(tmp_path / "st"), "api") for _ in range(2)]
    assert file_keys[0].jkt == file_keys[1].jkt
    assert (tmp_path / "st" / "dpop" / "api.pem").exists()
