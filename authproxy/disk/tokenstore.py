"""The token store's one small interface: the file store (``disk/store.py``) and Redis (``tokens/redisstore.py``).

Every grant that keeps a record (refresh tokens, the Bitwarden JWT), the
token layer's shared access tokens, ``authproxy login`` and ``authproxy
token`` go through it, so one host (files and ``flock``) and many replicas
(Redis and a fenced lease) behave alike:

- ``adopt_or_fetch``: the route's record, and one fetch per route among
  everyone on the store; a fetch's changes are stored before its result is
  used (a rotated refresh token is durable before its access token goes out);
- ``replace``: a whole new record under the route's lock (a login);
- ``ensure``: create-if-absent of a small named record that every process
  and replica shares (generated values such as placeholders or private keys):
  the first ``make()`` wins and everyone gets that value;
- ``health``: what the status page shows of the store, never a secret.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

Record = dict[str, Any]


class TokenStore(Protocol):
    kind: str  # "file" or "redis"

    async def adopt_or_fetch(
        self,
        name: str,
        adopt: Callable[[Record], T | None],
        fetch: Callable[[Record], Awaitable[T]],
        *,
        unlocked_ok: bool = False,
    ) -> T:
        """Under route ``name``'s lock: what ``adopt`` finds in the record, else what ``fetch`` gets.

        ``fetch`` updates the record in place, and the record is stored (when
        it changed, also when ``fetch`` raises) before the result is returned.
        ``unlocked_ok``: when the store cannot be reached, ``fetch`` may run
        without the lock on an empty record (nothing rotates, so nothing is
        lost); otherwise that raises ``TokenStoreUnavailable``.
        """
        ...

    async def replace(self, name: str, record: Record) -> str:
        """Store ``record`` as route ``name``'s whole record, under its lock; returns where, for a person."""
        ...

    async def ensure(self, name: str, make: Callable[[], Record]) -> Record:
        """The shared record ``name``, made by ``make()`` if nobody made it yet.

        ``name`` is letters, digits and ``-_.:`` (e.g. ``placeholder:ROUTE``);
        the record is small JSON. Every process and replica on the store gets
        the same record, whoever called first; it is never overwritten.
        """
        ...

    def health(self) -> dict[str, object]:
        """The store's kind, where it is (no password), and how its last calls went."""
        ...

    async def probe(self) -> None:
        """One round trip to the store, so that ``health`` is current (the status page asks)."""
        ...

    async def close(self) -> None: ...
