"""What a running proxy holds: the config snapshot, route table, sessions and tokens.

A request takes the ``Snapshot`` in force when it starts and keeps it to the
end, so a later reload can swap the table without touching requests in flight.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from authproxy.access import Authenticator
from authproxy.config import Config
from authproxy.config.parents import Parents
from authproxy.disk.ca import LocalCA, ensure_ca
from authproxy.net.egress import Egress, Via
from authproxy.ops.metrics import Metrics
from authproxy.placeholders.index import Placeholders
from authproxy.placeholders.index import resolve as resolve_placeholders
from authproxy.placeholders.shared import shared_generated
from authproxy.routes import RouteTable
from authproxy.tokens.manager import TokenManager
from authproxy.tokens.stores import open_store
from authproxy.upstream.upstreams import TokenSession, Upstreams


@dataclass(frozen=True, slots=True)
class ReloadEvent:
    at: float  # time.time()
    ok: bool
    detail: str  # "3 routes from routes.yaml", or the first problem (file:line: path: message)


@dataclass(frozen=True, slots=True)
class Snapshot:
    config: Config
    table: RouteTable
    auth: Authenticator | None = None
    placeholders: Placeholders | None = None  # None when no route has one: the guard costs nothing
    parents: Parents = dataclasses.field(default_factory=lambda: Parents(None, routes_own=False))  # a parent proxy?

    @classmethod
    def of(cls, config: Config, shared: Mapping[str, str] | None = None) -> Snapshot:
        """``shared``: generated placeholders from the shared token store (``Runtime.shared_placeholders``);
        with a shared store and none given, generated ones are left out until they are had from it."""
        auth = Authenticator(config.proxy_auth) if config.proxy_auth is not None else None
        if shared is None and config.token_store is not None:
            shared = {}
        placeholders = resolve_placeholders(config, make=shared is None, shared=shared)
        return cls(config, RouteTable(config.routes), auth, placeholders, Parents.of(config))


class Runtime:
    def __init__(self, config: Config, worker: bool = False, pseudonym: str | None = None) -> None:
        """``worker``: one of several processes (``run --workers``): tokens are
        shared through the state store, metrics through the multiprocess files.
        ``pseudonym``: this proxy's name in ``Via`` (a worker's is its supervisor's), else a new one."""
        self.snapshot = Snapshot.of(config)
        self.egress = Egress(config.destinations)
        self.via = Via(pseudonym)
        self.upstreams = Upstreams(config.limits, config.timeouts, config.extra_ca_file, self.egress)
        self._token_session = TokenSession(config.timeouts)
        self._token_session.prepare(config.routes)
        self.metrics = Metrics(multiprocess=worker)
        self.metrics.routes.set(len(config.routes))
        self.store = open_store(config, self.metrics)
        # Shared between workers (state dir) or replicas (token_store): one fetch per route among them.
        shared = worker or config.token_store is not None
        self.tokens = TokenManager(
            self._token_session.get,
            config.timeouts.token_fetch,
            self.store,
            self.metrics,
            shared=shared,
            via=lambda route, url: self.snapshot.parents.for_url(route, url),
            tls=self.upstreams.tls,
        )
        self.tokens.retain(config.routes)
        self._bound: tuple[str, int] | None = None
        self.ca: LocalCA | None = None  # set by enable_interception()
        self.started_at = time.time()
        self.reloads: deque[ReloadEvent] = deque(maxlen=20)
        self.ready = False  # listening, CA loaded: what /readyz reports

    @property
    def bound(self) -> tuple[str, int] | None:
        """The address actually listened on (its first socket's)."""
        return self._bound

    @bound.setter
    def bound(self, value: tuple[str, int] | None) -> None:
        # Whoever starts listening says so here; the loop check learns it at once.
        self._bound = value
        if value is not None:
            self.egress.listening(*value)

    def enable_interception(self) -> LocalCA:
        """Load (or make, on first use) the CA that signs intercepted hosts' leaves."""
        if self.ca is None:
            cfg = self.snapshot.config
            ca = self.ca = LocalCA(ensure_ca(cfg.state_dir, cfg.ca_cert, cfg.ca_key))
            self.metrics.watch_certificates(lambda: ca.cached)
        return self.ca

    async def shared_placeholders(self, config: Config) -> dict[str, str] | None:
        """``config``'s generated placeholders as the shared token store holds them (made there if new)."""
        return await shared_generated(config, self.store)

    async def share_placeholders(self) -> None:
        """Put the shared store's generated placeholders into service: before listening, in every replica."""
        config = self.snapshot.config
        shared = await self.shared_placeholders(config)
        if shared is not None:
            self.snapshot = dataclasses.replace(
                self.snapshot, placeholders=resolve_placeholders(config, make=False, shared=shared)
            )

    def apply(self, config: Config, shared: Mapping[str, str] | None = None) -> list[str]:
        """Swap in a new config: requests in flight keep the snapshot they took.

        Tokens of routes whose name and grant are unchanged stay cached; a
        route whose grant changed (or that is gone) forgets its token. Returns
        the keys that changed but need a restart to take effect.
        """
        old = self.snapshot.config
        before = {r.name: r.auth for r in old.routes}
        # An unchanged grant keeps its object, and so its cached token (tokens/manager.py keys on it).
        routes = tuple(
            dataclasses.replace(r, auth=before[r.name]) if before.get(r.name) == r.auth else r for r in config.routes
        )
        config = dataclasses.replace(config, routes=routes)
        self.tokens.retain(routes)
        self._token_session.prepare(routes)
        self.snapshot = Snapshot.of(config, shared)
        self.egress.configure(config.destinations)
        self.metrics.routes.set(len(config.routes))
        restart = [
            key
            for key in (
                *("listen_host", "listen_port", "state_dir", "ca_cert", "ca_key", "extra_ca_file"),
                *("admin", "admin_token", "admin_hosts", "token_store", "audit"),
            )
            if getattr(old, key) != getattr(config, key)
        ]
        pool = ("connect", "idle", "tls_handshake")
        if any(getattr(old.timeouts, k) != getattr(config.timeouts, k) for k in pool):
            restart.append("timeouts.connect/idle/tls_handshake (upstream pool)")
        return restart

    async def close(self) -> None:
        if self.ca is not None:
            self.ca.close()
        await self.upstreams.close()
        await self._token_session.close()
        await self.store.close()
