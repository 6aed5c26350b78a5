"""The one small interface every grant implements, and the registry by ``type``.

A grant knows how to read its ``auth:`` block and how to produce a
``Credential``. Caching, single flight, backoff and the 401 rule live in
``tokens/manager.py``, never here, so a new grant is one new file with one class.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import aiohttp

    from authproxy.disk.store import StateStore
    from authproxy.schema.yamlreader import Section
    from authproxy.secrecy.secrets import Secret


@dataclass(frozen=True, slots=True, repr=False)
class Credential:
    """What gets injected: headers and/or query parameters, and until when.

    ``generation`` lets a burst of 401s for one token cause one refresh: only
    a 401 for the current generation forces a fetch.
    """

    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    expires_at: float | None = None
    # When to start refreshing: `refresh_skew` ahead of expiry, or halfway
    # through the token's life when the skew is longer than the whole life
    # (which would otherwise refresh on every request).
    refresh_at: float | None = None
    generation: int = 0
    # Grant-specific marker of where the value came from (a token file's stat).
    origin: object = field(default=None, compare=False)
    # Taken from the state store (fetched earlier, or by another process), not
    # from the token endpoint just now: counted apart, so the metrics show real fetches.
    stored: bool = field(default=False, compare=False)
    # The headers as sent, encoded once per token rather than once per request
    # (UTF-8 values: a secret is whatever the route says), and their lowercased
    # names, which replace any the client sent.
    wire: tuple[tuple[bytes, bytes], ...] = field(default=(), init=False, compare=False)
    wire_names: frozenset[bytes] = field(default=frozenset(), init=False, compare=False)

    def __post_init__(self) -> None:
        wire = tuple((n.encode("latin-1"), v.encode()) for n, v in self.headers)
        object.__setattr__(self, "wire", wire)
        object.__setattr__(self, "wire_names", frozenset(n.lower() for n, _ in wire))

    def __repr__(self) -> str:
        names = [h for h, _ in self.headers] + [f"?{q}" for q, _ in self.query]
        return f"Credential({', '.join(names)}, expires_at={self.expires_at})"

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def masked_lines(self) -> list[str]:
        """``Header: Scheme ****`` lines for the ``token`` command."""
        out = []
        for name, value in self.headers:
            scheme, sep, _ = value.partition(" ")
            shown = f"{scheme} ****" if sep and scheme.isalpha() and len(scheme) < 16 else "****"
            out.append(f"{name}: {shown}")
        out += [f"?{name}=****" for name, _ in self.query]
        return out

    def shown_lines(self) -> list[str]:
        return [f"{n}: {v}" for n, v in self.headers] + [f"?{n}={v}" for n, v in self.query]


def refresh_point(expires_at: float | None, skew: float, now: float) -> float | None:
    """When to start refreshing a credential obtained at ``now``: ``skew`` ahead of
    expiry, or halfway through its life when the skew is longer than the whole life."""
    if expires_at is None:
        return None
    at = expires_at - skew
    return at if at > now else now + (expires_at - now) / 2


@dataclass(frozen=True, slots=True)
class GrantContext:
    """What a grant may use while fetching."""

    route: str
    # The token endpoints' session, made on the first call: a grant that never
    # fetches never loads aiohttp.
    get_session: Callable[[], aiohttp.ClientSession]
    # Seconds this attempt may wait for an endpoint; the token layer passes what
    # is left of ``timeouts.token_fetch`` when it tries again.
    deadline: float
    store: StateStore
    # The headers of a credential the upstream just refused: a stored token
    # equal to it must not be handed out again.
    rejected: tuple[tuple[str, str], ...] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.get_session()


class Grant(ABC):
    """A credential source for one route."""

    type_name: ClassVar[str]
    # Fetches from somewhere that can hand out a new value: cached until expiry,
    # refreshed ahead of it, and refreshed once more after a 401.
    fetches: ClassVar[bool] = False
    # Keeps its own record in the state store under the route's lock (refresh
    # tokens): tokens/manager.py must not wrap its fetch in that lock again, since a
    # second flock on the route's lock file in one process would wait on itself.
    uses_store: ClassVar[bool] = False
    # Injects a long-lived value the route's owner chose (a key, a password, a
    # token, a helper's output): what an echoing upstream must not hand back.
    injects_standing_secret: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def parse(cls, sec: Section) -> Grant:
        """Read the ``auth:`` block; report problems on ``sec``."""

    @abstractmethod
    async def fetch(self, ctx: GrantContext) -> Credential:
        """Obtain a credential now (``tokens/manager.py`` decides when)."""

    def secrets(self) -> list[Secret]:
        """Every secret this grant holds."""
        return []

    def sources(self) -> list[tuple[str, str]]:
        """(key, how it is shown) pairs for ``check``: references, never values."""
        return [(name, s.shown_source()) for name, s in self._named_secrets()]

    def _named_secrets(self) -> list[tuple[str, Secret]]:
        return []

    def refresh_skew(self) -> float:
        return 60.0

    def scrubs_by_default(self) -> bool:
        """Whether the route's responses are scrubbed of its credential when it does not say (`scrub:`)."""
        return self.injects_standing_secret

    def is_current(self, cred: Credential) -> bool:
        """False when the source changed under a cached credential (a token file)."""
        return True

    def may_retry(self) -> bool:
        """Could any 401 be retried? If not, request bodies need not be buffered."""
        return self.fetches

    def can_retry(self, cred: Credential) -> bool:
        """May a 401 for ``cred`` be answered by a new credential and a retry?"""
        return self.fetches


REGISTRY: dict[str, type[Grant]] = {}


def register(cls: type[Grant]) -> type[Grant]:
    REGISTRY[cls.type_name] = cls
    return cls
