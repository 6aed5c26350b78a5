"""The one small interface every grant implements, and the registry by ``type``.

A grant knows how to read its ``auth:`` block and how to produce a
``Credential``. Caching, single flight, backoff and the 401 rule live in
``tokens/manager.py``, never here, so a new grant is one new file with one class.
"""

from __future__ import annotations

import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    import aiohttp

    from authproxy.credentials.tlsclient import ClientCert, Contexts
    from authproxy.disk.tokenstore import TokenStore
    from authproxy.net.parent import Parent
    from authproxy.schema.yamlreader import Section
    from authproxy.secrecy.secrets import Secret


# A request body as the signer sees it: bytes when buffered, a stream when not, None when there is none.
SignBody = bytes | AsyncIterable[bytes] | None


class Signer(Protocol):
    """A credential that signs each request itself (AWS SigV4) instead of adding a fixed header.

    Called by the pipeline once the outbound headers are built, and again
    for a retry: it returns the headers to send and the body (a signed
    upload may be re-framed) with its new length.
    """

    def sign(
        self,
        method: str,
        authority: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: SignBody,
        length: int | None,
    ) -> tuple[list[tuple[bytes, bytes]], SignBody, int | None]: ...

    def wants_peek(self, status: int) -> bool:
        """Might an answer with this status say that the credential expired (its body must be read to tell)?"""
        ...

    def refused(self, headers: list[tuple[bytes, bytes]], head: bytes) -> bool:
        """Does this answer (its headers, the start of its body) say the credential expired, as a 401 would?"""
        ...

    def lines(self, show: bool) -> list[str]:
        """What ``authproxy token`` prints: the headers each request gets, secrets masked unless ``show``."""
        ...


class ProofSource(Protocol):
    """Headers made per request from the method and URL sent (a DPoP proof, RFC 9449 §7.1)."""

    def proof(self, method: str, url: str) -> tuple[bytes, bytes]:
        """The header for ``method`` on ``url``, the URL as sent upstream."""

    def answered(self, url: str, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """Note what the response says; True when one retry with a new proof should follow."""


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
    # Signs every request (``aws_sigv4``): headers and query stay empty.
    signer: Signer | None = field(default=None, compare=False)
    # Headers made anew for every request sent (``Grant.bind``); None for most grants.
    proof: ProofSource | None = field(default=None, compare=False)
    # The raw value a route's placeholder stands for (the key, the token, the
    # password), set by the grant; a credential rebuilt from the store says it
    # in its header instead (``raw_secret``).
    secret: str | None = field(default=None, compare=False)
    # The headers as sent, encoded once per token rather than once per request
    # (UTF-8 values: a secret is whatever the route says), and their lowercased
    # names, which replace any the client sent.
    wire: tuple[tuple[bytes, bytes], ...] = field(default=(), init=False, compare=False)
    wire_names: frozenset[bytes] = field(default=frozenset(), init=False, compare=False)

    def __post_init__(self) -> None:
        wire = tuple((n.encode("latin-1"), v.encode()) for n, v in self.headers)
        object.__setattr__(self, "wire", wire)
        names = frozenset(n.lower() for n, _ in wire)
        object.__setattr__(self, "wire_names", names if self.proof is None else names | {b"dpop"})

    def __repr__(self) -> str:
        names = [h for h, _ in self.headers] + [f"?{q}" for q, _ in self.query]
        return f"Credential({', '.join(names)}, expires_at={self.expires_at})"

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def raw_secret(self) -> str:
        """What a placeholder is swapped for: the grant's raw value, else the query value,
        else the first header's value less its scheme (``Bearer X`` → ``X``)."""
        if self.secret is not None:
            return self.secret
        if self.query:
            return self.query[0][1]
        if not self.headers:
            return ""
        value = self.headers[0][1]
        scheme, sep, rest = value.partition(" ")
        return rest if sep and scheme.isalpha() else value

    def masked_lines(self) -> list[str]:
        """``Header: Scheme ****`` lines for the ``token`` command."""
        out = []
        for name, value in self.headers:
            scheme, sep, _ = value.partition(" ")
            shown = f"{scheme} ****" if sep and scheme.isalpha() and len(scheme) < 16 else "****"
            out.append(f"{name}: {shown}")
        out += [f"?{name}=****" for name, _ in self.query]
        return out + (self.signer.lines(False) if self.signer is not None else [])

    def shown_lines(self) -> list[str]:
        out = [f"{n}: {v}" for n, v in self.headers] + [f"?{n}={v}" for n, v in self.query]
        return out + (self.signer.lines(True) if self.signer is not None else [])


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
    store: TokenStore
    # The headers of a credential the upstream just refused: a stored token
    # equal to it must not be handed out again.
    rejected: tuple[tuple[str, str], ...] | None = None
    # The client TLS contexts (tlsclient.py): system roots plus `extra_ca_file`, and a client certificate.
    tls: Contexts | None = None
    # Another route's credential by its name, through the token layer (its cache, single
    # flight and refresh): what a token exchange's `subject_route` trades in.
    credential_of: Callable[[str], Awaitable[Credential]] | None = None
    # The parent proxy (``upstream_proxy``) a request to a URL goes through; None: every one goes direct.
    via: Callable[[str], Parent | None] | None = None

    def parent_for(self, url: str) -> Parent | None:
        return self.via(url) if self.via is not None else None

    @property
    def session(self) -> aiohttp.ClientSession:
        return self.get_session()

    def ssl(self, cert: ClientCert | None = None) -> ssl.SSLContext:
        """The context a token endpoint is dialled with, presenting ``cert`` (RFC 8705 §2) when given."""
        from authproxy.credentials.tlsclient import SYSTEM, ClientCertError
        from authproxy.errors import CredentialUnavailable

        tls = self.tls if self.tls is not None else SYSTEM
        try:
            return tls.get(tls.trust(), cert, f"route {self.route}")
        except ClientCertError as exc:
            raise CredentialUnavailable(f"the token endpoint's client certificate cannot be used: {exc}.") from None


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

    def client_cert(self) -> ClientCert | None:
        """The certificate presented to the token endpoint, if any (RFC 8705)."""
        return None

    async def bind(self, cred: Credential, store: TokenStore, route: str) -> Credential:
        """``cred`` as the route sends it: with its per-request ``proof`` when it has one."""
        return cred

    def route_refs(self) -> tuple[tuple[str, str, int], ...]:
        """Routes whose credential this grant uses: (name, YAML path, line), for ``check``'s cycle test."""
        return ()

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
