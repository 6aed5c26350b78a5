"""Credential cache, single flight, retries, refresh ahead of expiry, one forced refresh per 401 burst.

Fast path: a dict read that checks the token's expiry on the way out (one
entry per route), so a known-expired token can never be handed out. Slow
path: one ``asyncio.Task`` per route that every caller awaits through
``asyncio.shield`` (a client that goes away cannot cancel the fetch others
wait for). After a failure the route backs off; callers in the backoff
window get the cached token while it is valid, else the last error, so a
dead token endpoint is not hammered by a storm of retries.

Each fetch tries a failing token endpoint again within ``timeouts.token_fetch``
(``tokens/retry.py``); grants make one attempt each.

With several worker processes, or a shared ``token_store`` (``shared``), a
fetch goes through the token store (``tokens/shared.py``), so that the
workers and replicas share one token per route.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from authproxy.config import Route
from authproxy.credentials.grants import Credential, GrantContext
from authproxy.credentials.grants.base import refresh_point
from authproxy.disk.tokenstore import TokenStore
from authproxy.errors import CredentialUnavailable, ProxyError, TokenEndpointError, TokenStoreUnavailable
from authproxy.net.parent import Parent
from authproxy.ops.metrics import Metrics
from authproxy.secrecy.redact import learn_header_values
from authproxy.tokens.retry import with_retries
from authproxy.tokens.shared import SharedTokens

if TYPE_CHECKING:
    import aiohttp

    from authproxy.credentials.tlsclient import Contexts

log = logging.getLogger("authproxy.tokens")

_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 60.0


class TokenState(StrEnum):
    """How the credential of a request was had, for the log line."""

    NONE = "none"
    CACHED = "cached"
    FETCHED = "fetched"
    REFRESHED = "refreshed"
    RETRIED = "retried"


_Key = tuple[str, int]


def _key(route: Route) -> _Key:
    return (route.name, id(route.auth))


class _Fresh:
    """One credential per route, dropped on read once it has expired.

    Every request reads it: a plain dict and one clock read cost a fraction
    of a general TTL cache's layers.
    """

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[_Key, Credential] = {}

    def get(self, key: _Key) -> Credential | None:
        cred = self._items.get(key)
        if cred is not None and cred.expires_at is not None and time.time() >= cred.expires_at:
            del self._items[key]
            return None
        return cred

    def __setitem__(self, key: _Key, cred: Credential) -> None:
        self._items[key] = cred

    def pop(self, key: _Key, default: None = None) -> Credential | None:
        return self._items.pop(key, default)


@dataclass(slots=True)
class _RouteState:
    generation: int = 0
    task: asyncio.Task[Credential] | None = None
    retry_at: float = 0.0
    backoff: float = 0.0
    last_error: ProxyError | None = None
    fetches: int = 0
    last_fetch_at: float | None = None
    last_error_at: float | None = None
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # Headers an upstream refused when no retry could follow: the next fetch must
    # not take them back from the store.
    stale: tuple[tuple[str, str], ...] | None = None


class TokenManager:
    """Credentials for every route.

    Keyed by the route's name and its grant object: a reload keeps the grant
    object of a route whose grant did not change (so its token stays cached),
    while requests still in flight on an old snapshot keep using the old
    grant's entry and cannot leak its token into the new one.
    """

    def __init__(
        self,
        get_session: Callable[[], aiohttp.ClientSession],
        fetch_deadline: float,
        store: TokenStore,
        metrics: Metrics,
        shared: bool = False,
        tls: Contexts | None = None,
        via: Callable[[Route, str], Parent | None] | None = None,
    ) -> None:
        # Called by a grant that fetches, when it fetches: the session is made on first use.
        self._get_session = get_session
        self._tls = tls  # the client TLS contexts token endpoints are dialled with
        self._via = via  # the parent proxy for a URL a route's grant fetches (`upstream_proxy`)
        self._deadline = fetch_deadline
        self._store = store
        self._metrics = metrics
        self._shared = SharedTokens(store) if shared else None
        self._cache = _Fresh()
        self._states: dict[_Key, _RouteState] = {}
        self._routes: dict[str, Route] = {}  # by name: what a grant's `credential_of` looks up

    def _state(self, route: Route) -> _RouteState:
        st = self._states.get(_key(route))
        if st is None:
            st = self._states[_key(route)] = _RouteState()
        return st

    def retain(self, routes: Iterable[Route]) -> None:
        """The route table in force; after a reload, forget the tokens of grants no longer in it."""
        routes = tuple(routes)
        self._routes = {r.name: r for r in routes}
        keep = {_key(r) for r in routes}
        for key in [k for k in self._states if k not in keep]:
            del self._states[key]
            self._cache.pop(key, None)

    def status(self, route: Route) -> dict[str, object]:
        """What the status page shows of a route's credential: times and states, never the value."""
        st = self._states.get(_key(route))
        cred = self._cache.get(_key(route))
        now = time.time()
        if route.missing:
            state = "unavailable"
        elif st is not None and st.last_error is not None:
            state = "failing"
        elif st is not None and st.task is not None:
            state = "refreshing"
        elif cred is None:
            # Fetched once and then expired out of the cache: the next request fetches anew.
            state = "expired" if st is not None and st.generation > 0 else "none yet"
        elif cred.refresh_at is not None and now >= cred.refresh_at:
            state = "due"  # the next request starts a refresh
        else:
            state = "fresh"
        return {
            "state": state,
            "expires_in": None if cred is None or cred.expires_at is None else round(cred.expires_at - now, 1),
            "fetches": st.fetches if st else 0,
            "last_fetch_at": st.last_fetch_at if st else None,
            "last_error": (
                st.last_error.detail if st and st.last_error else (route.missing[0] if route.missing else None)
            ),
            "last_error_at": st.last_error_at if st else None,
        }

    def ready(self, route: Route) -> Credential | None:
        """The cached credential when it can be injected now, else None (then ``get`` it).

        The common case of every request, without a coroutine: a dict read and
        the expiry check (its state is ``TokenState.CACHED``).
        """
        if route.missing:
            return None
        cred = self._cache.get((route.name, id(route.auth)))
        if cred is None or not route.auth.is_current(cred):
            return None
        if cred.refresh_at is not None and time.time() >= cred.refresh_at:
            # Due for refresh but still valid: refresh in the background
            # and keep serving, rather than make this request wait.
            self._refresh_in_background(route)
        return cred

    async def get(self, route: Route) -> tuple[Credential, TokenState]:
        """The credential to inject now; raises a ``ProxyError`` when there is none."""
        if route.missing:
            raise CredentialUnavailable(f"{route.missing[0]}, so this route has no credential.", route.name)
        cred = self.ready(route)
        if cred is not None:
            return cred, TokenState.CACHED
        first = self._state(route).generation == 0
        fresh = await self._single_flight(route)
        return fresh, TokenState.FETCHED if first else TokenState.REFRESHED

    async def after_unauthorized(self, route: Route, used: Credential) -> Credential | None:
        """A 401 came back for ``used``: a new credential to retry with, or None.

        Only the first 401 for a generation forces a fetch; the rest of a
        burst join that fetch or take its result.
        """
        if not route.auth.can_retry(used):
            self.mark_stale(route, used)
            return None
        st = self._state(route)
        current = self._cache.get(_key(route))
        if current is not None and current.generation != used.generation:
            return current
        if st.task is None:
            self._cache.pop(_key(route), None)  # the upstream said it is no good
            st.retry_at = 0.0  # a 401 is news: don't wait out an old backoff
        return await self._single_flight(route, rejected=used.headers)

    def mark_stale(self, route: Route, used: Credential) -> None:
        """Drop ``used`` so the next request refreshes it (a 401 we could not retry)."""
        if not route.auth.fetches:
            return
        current = self._cache.get(_key(route))
        if current is not None and current.generation == used.generation:
            self._cache.pop(_key(route), None)
            self._state(route).stale = used.headers

    async def _credential_of(self, name: str) -> Credential:
        """Route ``name``'s credential, as a request of that route would get it (``check`` refuses cycles)."""
        route = self._routes.get(name)
        if route is None:
            raise CredentialUnavailable(f"route {name} is not in the route table.")
        cred, _ = await self.get(route)
        return cred

    def _refresh_in_background(self, route: Route) -> None:
        st = self._state(route)
        if st.task is not None or time.monotonic() < st.retry_at:
            return

        async def run() -> None:
            try:
                await self._single_flight(route)
            except ProxyError as exc:
                log.warning("route %s: refresh ahead of expiry failed: %s", route.name, exc.detail)

        t = asyncio.create_task(run())
        st.background.add(t)
        t.add_done_callback(st.background.discard)

    async def _single_flight(self, route: Route, rejected: tuple[tuple[str, str], ...] | None = None) -> Credential:
        st = self._state(route)
        if st.task is None:
            if time.monotonic() < st.retry_at and st.last_error is not None:
                raise st.last_error
            st.task = asyncio.create_task(self._fetch(route, st, rejected or st.stale))
        return await asyncio.shield(st.task)

    async def _fetch(self, route: Route, st: _RouteState, rejected: tuple[tuple[str, str], ...] | None) -> Credential:
        via = self._via
        ctx = GrantContext(
            route.name,
            self._get_session,
            self._deadline,
            self._store,
            rejected,
            self._tls,
            self._credential_of,
            via=None if via is None else lambda url: via(route, url),
        )
        try:
            if self._shared is not None and route.auth.fetches and not route.auth.uses_store:
                cred = await self._shared.fetch(route, ctx)
            else:
                cred = await with_retries(route.auth.fetch, ctx)
            # Inside the flight: a DPoP key read from the store for the first time must not
            # leave a gap where another caller starts a second fetch.
            cred = await route.auth.bind(cred, self._store, route.name)
        except ProxyError as exc:
            exc.with_route(route.name)
            st.fetches += 1
            self._metrics.token_fetches.labels(route.name, exc.code).inc()
            st.last_error = exc
            st.last_error_at = time.time()
            if isinstance(exc, TokenEndpointError) and exc.permanent:
                st.backoff = _BACKOFF_MAX  # e.g. a refused refresh token: only a new login helps
            elif isinstance(exc, TokenStoreUnavailable):
                st.backoff = _BACKOFF_FIRST  # one call to the store says it is back: recover at once
            else:
                st.backoff = min(_BACKOFF_MAX, st.backoff * 2 or _BACKOFF_FIRST)
            st.retry_at = time.monotonic() + st.backoff * random.uniform(0.5, 1.0)
            raise
        finally:
            st.task = None
        # Whatever goes out as the credential (a token, a key, a helper's output, one
        # another worker stored) is known to the redactor before anything can print it.
        learn_header_values(f"route:{route.name}", [v for _, v in (*cred.headers, *cred.query)])
        st.generation += 1
        st.backoff, st.retry_at, st.last_error, st.stale = 0.0, 0.0, None, None
        st.last_fetch_at = time.time()
        # "stored": no fetch happened here; the token came from the store.
        st.fetches += 0 if cred.stored else 1
        self._metrics.token_fetches.labels(route.name, "stored" if cred.stored else "ok").inc()
        refresh_at = cred.refresh_at  # the store's record says when it is due, for every worker alike
        if refresh_at is None:
            refresh_at = refresh_point(cred.expires_at, route.auth.refresh_skew(), time.time())
        cred = replace(cred, generation=st.generation, refresh_at=refresh_at)
        if not cred.expired() and self._states.get(_key(route)) is st:  # not forgotten by a reload meanwhile
            self._cache[_key(route)] = cred
        return cred
