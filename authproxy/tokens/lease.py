"""A route's lease in Redis: one holder at a time, with a fencing version that only grows.

A lease is a key set with ``NX`` and a time to live, holding a random owner
id; taking it also increments the route's fence counter, and the new value
is the holder's *fence*. Each step is one Lua script, so Redis runs it
atomically (a check and the write it guards cannot be split by another client):

- ``ACQUIRE``: set the lease if nobody holds it, and take the next fence;
- ``RENEW``: extend the lease only if it is still ours and no one has taken
  a fence since (the holder calls it every third of the lease while its
  fetch is in flight, and once more right before it sends a refresh token);
- ``WRITE``: store the record only if the fence counter is still ours. A
  holder that was paused or partitioned past its lease, while another took
  the next fence and wrote, is refused: a rotated refresh token is never
  overwritten by an older one. A holder whose lease merely ran out, with
  nobody taking it meanwhile, may still write: nothing newer exists;
- ``RELEASE``: delete the lease only if it is still ours.

The renewal is bounded: it stops after ``timeouts.token_fetch`` plus one
lease, so a holder stuck beyond its fetch deadline lets the lease lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

WRITE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_seconds(token_fetch: float) -> float:
    """How long a lease lasts unrenewed: a quarter of ``timeouts.token_fetch``, within 1 to 10 seconds.

    Short enough that a holder killed mid-fetch is replaced quickly, long
    enough that three renewals fit in it on a loaded host.
    """
    return max(1.0, min(10.0, token_fetch / 4))


class Scripts:
    """The four scripts, registered once per client (EVALSHA, loaded again after a Redis restart)."""

    def __init__(self, client: Any) -> None:
        self.acquire = client.register_script(ACQUIRE)
        self.renew = client.register_script(RENEW)
        self.write = client.register_script(WRITE)
        self.release = client.register_script(RELEASE)


class Lease:
    """One attempt at a route's lease: ``acquire``, then ``held``/``write`` under it, then ``release``."""

    def __init__(self, scripts: Scripts, lock_key: str, fence_key: str, seconds: float, bound: float) -> None:
        self._s = scripts
        self._lock, self._fence_key = lock_key, fence_key
        self._ms = int(seconds * 1000)
        self._bound = bound  # the longest a holder keeps renewing
        self.owner = os.urandom(16).hex()
        self.fence = 0
        self.lost = False

    async def acquire(self) -> bool:
        self.fence = int(await self._s.acquire(keys=[self._lock, self._fence_key], args=[self.owner, self._ms]))
        return self.fence > 0

    async def held(self) -> bool:
        """Still ours, with no fence taken since: renewed for one more lease."""
        ok = await self._s.renew(keys=[self._lock, self._fence_key], args=[self.owner, self.fence, self._ms])
        if not ok:
            self.lost = True
        return bool(ok)

    async def write(self, record_key: str, value: bytes) -> bool:
        """Store ``value`` if no one took a fence since ours (the fencing check)."""
        return bool(await self._s.write(keys=[self._fence_key, record_key], args=[self.fence, value]))

    async def release(self) -> None:
        await self._s.release(keys=[self._lock], args=[self.owner])

    @contextlib.asynccontextmanager
    async def renewing(self) -> AsyncIterator[None]:
        """Keep the lease while the body runs, within the bound; a failed renewal marks it lost."""
        task = asyncio.create_task(self._renew_loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _renew_loop(self) -> None:
        until = time.monotonic() + self._bound
        while time.monotonic() < until:
            await asyncio.sleep(self._ms / 3000)
            try:
                if not await self.held():
                    return
            except Exception:
                return
