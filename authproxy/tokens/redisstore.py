"""The shared token store on Redis: one fetch per route across every replica, rotation-safe.

Implements ``disk/tokenstore.py``'s ``TokenStore`` for ``token_store:``
(docs/scale-out.md). A route's record, lease and fence counter are three
keys whose names are HMACs (``secrecy/sealing.py``); the record is sealed
with AES-GCM under its own key name, so it opens nowhere else.

``adopt_or_fetch``: whoever takes the route's lease (``tokens/lease.py``)
reads the record, adopts what is still good, or else checks its lease once
more and fetches while renewing it, then writes the record under the fencing
check before anyone uses the result. Everyone else polls the record (first
after 25 ms, backing off to every 200 ms) and adopts what the holder wrote,
or takes the lease when it is free (its holder finished, failed, or died and
the lease ran out). Polling, not pub/sub: the waiters are one per route per
process, a poll is one GET, and no subscriber connection has to be kept
alive and re-established after a Redis restart.

When Redis cannot be reached, the call raises ``TokenStoreUnavailable``
(503) unless the caller said a fetch without the lease is harmless
(``unlocked_ok``: nothing rotates); the next call tries Redis again, so the
proxy recovers without a restart. Nothing here is called for a token still
in the in-process cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from authproxy.config.model import TokenStoreSettings
from authproxy.disk.store import shared_name
from authproxy.errors import TokenEndpointTimeout, TokenStoreUnavailable
from authproxy.ops.metrics import Metrics
from authproxy.secrecy.sealing import Sealer, SealError, decode_key
from authproxy.tokens.lease import Lease, Scripts, lease_seconds

log = logging.getLogger("authproxy.store")

T = TypeVar("T")
R = TypeVar("R")
Record = dict[str, Any]

_POLL_FIRST = 0.025
_POLL_MAX = 0.2


class _LeaseLost(Exception):
    """The lease was gone when its holder checked right before fetching: wait and try again."""


def _client(settings: TokenStoreSettings, timeout: float) -> Any:
    import redis.asyncio as aioredis  # only with `token_store:` configured

    return aioredis.Redis.from_url(
        settings.url.reveal(), socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
    )


def _errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    return (redis.exceptions.RedisError, OSError)


async def check_reachable(settings: TokenStoreSettings, wait: float = 5.0) -> str | None:
    """Why the store cannot be used now (one sentence), or None: ``run`` refuses to start without it."""
    client = _client(settings, wait)
    try:
        await client.ping()
    except _errors() as exc:
        return f"the token store at {settings.where} cannot be reached ({_reason(exc)}); refusing to start."
    finally:
        await client.aclose()
    return None


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:160] or type(exc).__name__
    return text.rstrip(".")


class RedisStore:
    kind = "redis"

    def __init__(self, settings: TokenStoreSettings, token_fetch: float, metrics: Metrics) -> None:
        self._client = _client(settings, min(5.0, token_fetch))
        self._errors = _errors()
        self._sealer = Sealer(decode_key(settings.key.reveal()))
        self._prefix = settings.prefix
        self.where = settings.where
        self._lease = lease_seconds(token_fetch)
        self._renew_bound = token_fetch + self._lease
        self._wait_bound = token_fetch + 2 * self._lease  # a holder's whole fetch, then one that died
        self._scripts = Scripts(self._client)
        self._metrics = metrics
        self._state = "not used yet"
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._last_ms: float | None = None

    def key(self, kind: str, name: str) -> str:
        return self._prefix + self._sealer.name(kind, name)

    # --------------------------------------------------------------- calls

    async def _call(self, op: str, coro: Coroutine[Any, Any, R]) -> R:
        """One call to Redis, timed and counted; a failure becomes ``TokenStoreUnavailable``."""
        start = time.perf_counter()
        try:
            out = await coro
        except self._errors as exc:
            self._metrics.store_errors.labels(op).inc()
            if self._state != "unreachable":
                log.warning("the token store at %s failed (%s)", self.where, _reason(exc))
            self._state, self._last_error, self._last_error_at = "unreachable", _reason(exc), time.time()
            raise TokenStoreUnavailable(
                f"the shared token store at {self.where} cannot be reached, and this request needs a new token."
            ) from None
        seconds = time.perf_counter() - start
        self._metrics.store_latency.labels(op).observe(seconds)
        if self._state == "unreachable":
            log.warning("the token store at %s is reachable again", self.where)
        self._state, self._last_ms = "ok", round(seconds * 1000, 2)
        return out

    async def _load(self, key: str) -> Record | None:
        blob = await self._call("get", self._client.get(key))
        if blob is None:
            return None
        try:
            return self._sealer.open(blob, key)
        except SealError:
            log.warning(
                "a record in the token store at %s does not open under the configured key "
                "(another key, or altered); treated as empty",
                self.where,
            )
            return None

    def _lease_for(self, name: str) -> Lease:
        return Lease(self._scripts, self.key("lease", name), self.key("fence", name), self._lease, self._renew_bound)

    # --------------------------------------------------------------- TokenStore

    async def adopt_or_fetch(
        self,
        name: str,
        adopt: Callable[[Record], T | None],
        fetch: Callable[[Record], Awaitable[T]],
        *,
        unlocked_ok: bool = False,
    ) -> T:
        fetched = False

        async def tracked(rec: Record) -> T:
            nonlocal fetched
            fetched = True
            return await fetch(rec)

        try:
            return await self._adopt_or_fetch(name, adopt, tracked, unlocked_ok)
        except TokenStoreUnavailable:
            if not unlocked_ok or fetched:
                raise
            log.warning("route %s: the token store is unreachable; fetching without its lease (nothing rotates)", name)
            return await fetch({})

    async def _adopt_or_fetch(
        self,
        name: str,
        adopt: Callable[[Record], T | None],
        fetch: Callable[[Record], Awaitable[T]],
        unlocked_ok: bool,
    ) -> T:
        record_key = self.key("record", name)
        deadline = time.monotonic() + self._wait_bound
        delay, waited = _POLL_FIRST, False
        while True:
            lease = self._lease_for(name)
            if await self._call("acquire", lease.acquire()):
                try:
                    return await self._as_holder(name, record_key, lease, adopt, fetch, unlocked_ok)
                except _LeaseLost:
                    pass
                finally:
                    with contextlib.suppress(TokenStoreUnavailable):
                        await self._call("release", lease.release())
            if not waited:
                waited = True
                self._metrics.store_lock_waits.labels(name).inc()
            rec = await self._load(record_key)
            found = adopt(rec) if rec is not None else None
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise TokenEndpointTimeout(
                    f"waited {self._wait_bound:g} s for another replica's token fetch; the next request tries again.",
                    name,
                )
            await asyncio.sleep(delay)
            delay = min(_POLL_MAX, delay * 2)

    async def _as_holder(
        self,
        name: str,
        record_key: str,
        lease: Lease,
        adopt: Callable[[Record], T | None],
        fetch: Callable[[Record], Awaitable[T]],
        unlocked_ok: bool,
    ) -> T:
        rec = await self._load(record_key) or {}
        found = adopt(rec)
        if found is not None:
            return found
        read = copy.deepcopy(rec)
        async with lease.renewing():
            # The last look before a refresh token is sent: a holder paused past its lease stops here.
            if not await self._call("renew", lease.held()):
                self._metrics.store_lease_losses.labels(name).inc()
                raise _LeaseLost
            try:
                result = await fetch(rec)
            except BaseException:
                if rec != read:  # e.g. a refused refresh token, remembered as refused
                    with contextlib.suppress(TokenStoreUnavailable):
                        await self._write(name, record_key, lease, rec)
                raise
        if rec == read or await self._write_persistently(name, record_key, lease, rec):
            return result
        # Refused: another holder took the next fence and wrote; its record is the newer one.
        newer = await self._load(record_key)
        found = adopt(newer) if newer is not None else None
        if found is not None:
            return found
        if unlocked_ok:
            return result  # a token that rotates nothing is good, only not shared
        raise TokenStoreUnavailable(
            "this replica lost its lease to another while fetching; the next request uses the newer token.", name
        )

    async def _write_persistently(self, name: str, record_key: str, lease: Lease, rec: Record) -> bool:
        """The write after a fetch, tried again while Redis is briefly away (a restart, a failover).

        The server may have rotated the refresh token already: losing this write
        would lose the only copy. Tried for up to one lease, every 200 ms; the
        fence keeps a retry from overwriting anything newer.
        """
        until = time.monotonic() + self._lease
        while True:
            try:
                return await self._write(name, record_key, lease, rec)
            except TokenStoreUnavailable:
                if time.monotonic() >= until:
                    log.error("route %s: the fetched record could not be stored; the store was unreachable", name)
                    raise
            await asyncio.sleep(_POLL_MAX)

    async def _write(self, name: str, record_key: str, lease: Lease, rec: Record) -> bool:
        ok = await self._call("write", lease.write(record_key, self._sealer.seal(rec, record_key)))
        if not ok:
            self._metrics.store_lease_losses.labels(name).inc()
            log.warning(
                "route %s: this replica's lease was taken over while it fetched; "
                "its write was refused (the store keeps the newer record)",
                name,
            )
        return ok

    async def replace(self, name: str, record: Record) -> str:
        record_key = self.key("record", name)
        deadline = time.monotonic() + self._wait_bound
        delay = _POLL_FIRST
        while True:
            lease = self._lease_for(name)
            if await self._call("acquire", lease.acquire()):
                try:
                    if await self._write(name, record_key, lease, record):
                        return f"the shared token store at {self.where}"
                finally:
                    with contextlib.suppress(TokenStoreUnavailable):
                        await self._call("release", lease.release())
            if time.monotonic() >= deadline:
                raise TokenStoreUnavailable(f"route {name}'s lease in the token store stayed taken.", name)
            await asyncio.sleep(delay)
            delay = min(_POLL_MAX, delay * 2)

    async def ensure(self, name: str, make: Callable[[], Record]) -> Record:
        key = self.key("shared", shared_name(name))
        found = await self._load(key)
        if found is not None:
            return found
        made = make()
        if await self._call("ensure", self._client.set(key, self._sealer.seal(made, key), nx=True)):
            return made
        found = await self._load(key)  # another made it first: everyone takes that one
        if found is None:
            raise TokenStoreUnavailable(f"the shared record {name} in the token store does not open.")
        return found

    def health(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "where": self.where,
            "state": self._state,
            "latency_ms": self._last_ms,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
        }

    async def probe(self) -> None:
        with contextlib.suppress(TokenStoreUnavailable):  # recorded in the health it updates
            await self._call("ping", self._client.ping())

    async def close(self) -> None:
        await self._client.aclose()
