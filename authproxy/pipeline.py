"""The request pipeline, top to bottom, for every mode (plain, gateway, intercept).

resolve the target → route (or pass through / deny)
→ credential (never send without the one the route promises)
→ headers filtered, credential injected
→ send upstream
→ on 401 with a replayable body: one forced refresh, one retry
→ the reply streams back through the server.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote

from authproxy.access import check_allowed, check_user_route
from authproxy.credentials.grants import Credential
from authproxy.errors import ProxyError
from authproxy.http1.h1message import Body
from authproxy.messages import ProxyRequest, Replayed, Reply
from authproxy.net.egress import Via
from authproxy.net.parent import Parent, clear_text_refusal
from authproxy.ops.accesslog import AccessRecord
from authproxy.placeholders import guard
from authproxy.placeholders.index import Placeholders
from authproxy.placeholders.stub import stub_reply
from authproxy.placeholders.swap import swap_headers, swap_target
from authproxy.runtime import Runtime, Snapshot
from authproxy.targets import Target, resolve, url_of
from authproxy.tokens.manager import TokenState
from authproxy.upstream.scrubbed import ASK_IDENTITY, NOT_ASKED, scrub_reply
from authproxy.upstream.upgrade import is_upgrade, open_upgrade
from authproxy.upstream.upstreams import HOP_BY_HOP, filter_response_headers, forward_into

# Framing is ours to set (RFC 9112 §6.3: never forward the client's CL/TE as
# is), Host is rebuilt for the destination, Expect was answered by us. Via is
# kept, but looked at on the way (``without_hop_by_hop``): ours in it is a loop.
_REBUILT = frozenset({b"host", b"content-length", b"expect"})
_DROPPED = HOP_BY_HOP | _REBUILT | {b"via"}
_NO_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
_CACHED = TokenState.CACHED.value  # what almost every request's credential was: read once
_PEEK = 16 * 1024  # of an answer that may say a signing credential expired: AWS's error bodies are smaller


async def handle(req: ProxyRequest, rt: Runtime, snap: Snapshot, rec: AccessRecord) -> Reply:
    audit = rec.audit = {} if snap.config.audit is not None else None
    ph = snap.placeholders
    if ph is not None and ph.stubs:
        stub = stub_reply(ph, req, rec)  # the route's token_url, answered here: never forwarded
        if stub is not None:
            return stub
    target = resolve(req, snap, rec)
    route = target.route
    # What _admit looks at, when there is any (else it would only find nothing to refuse).
    if ph is not None or (
        route is not None and (audit is not None or req.user is not None or route.allow is not None)
    ):
        target = _admit(req, rt, snap, target, rec)
    if route is None:
        # Unmatched and allowed through: forwarded untouched, no credential.
        return await exchange(rt, snap, target, req, None)

    cred = rt.tokens.ready(route)
    if cred is not None:
        rec.token = _CACHED
    else:
        cred, state = await rt.tokens.get(route)
        rec.token = state.value
    if rec.audit is not None:
        rec.audit["injected"] = [f"header:{n}" for n, _ in cred.headers] + [f"query:{n}" for n, _ in cred.query]
    replayable = route.auth.may_retry() and await req.body.buffer(snap.config.limits.replay_body)
    reply = await exchange(rt, snap, target, req, cred)
    unanswered = False
    if cred.proof is not None:
        reply, unanswered = await _nonce_retry(_Resend(rt, snap, target, req, replayable, rec), cred, reply)
    # A 401, or a signing credential's "expired" (AWS answers 400/403 ExpiredToken, not 401).
    refused = reply.status == 401 or (cred.signer is not None and await _expired(reply, cred))
    if refused and route.auth.may_retry() and not unanswered:
        reply, cred = await _after_unauthorized(_Resend(rt, snap, target, req, replayable, rec), cred, reply)
    if not route.scrub:
        return reply
    # Without the credential (upstream/scrubbed.py), a match of the placeholder's length
    # replaced by the placeholder; a reply it cannot read is let go and refused.
    sub = ph.raw.get(route.name) if ph is not None else None
    return scrub_reply(reply, cred, rec, req.method == "HEAD", sub)


def _admit(req: ProxyRequest, rt: Runtime, snap: Snapshot, target: Target, rec: AccessRecord) -> Target:
    """What is refused before anything is fetched for the route: a placeholder sent elsewhere
    or missing, a user the route is not for, a method or path outside its allow list."""
    audit, route, ph = rec.audit, target.route, snap.placeholders
    if audit is not None and route is not None:
        audit["credential"], audit["sources"] = route.auth.type_name, [s for _, s in route.auth.sources()]
    if ph is not None:
        placeholder = guard.check(ph, req, route, rec, rt.metrics)
        if placeholder == guard.SWAPPED:
            target = dataclasses.replace(target, swap=True)
        if audit is not None:
            audit["placeholder"] = placeholder
    if route is not None:
        check_user_route(req.user, route.name)
        if route.allow is not None:
            # Rules speak of the upstream's paths: what is sent, without the query; and of
            # the method the upstream acts on, which an override header may name.
            if audit is not None:
                audit["allow"] = "denied"
            check_allowed(route.allow, route.name, req.method, target.path.partition("?")[0], req.headers)
            if audit is not None:
                audit["allow"] = "allowed"
    return target


@dataclass(frozen=True, slots=True)
class _Resend:
    """What sending the request once more needs (a nonce challenge, the 401 rule): made only then."""

    rt: Runtime
    snap: Snapshot
    target: Target
    req: ProxyRequest
    replayable: bool  # the body was kept, so it can be sent again
    rec: AccessRecord

    async def send(self, cred: Credential) -> Reply:
        return await exchange(self.rt, self.snap, self.target, self.req, cred)


async def _after_unauthorized(again: _Resend, cred: Credential, reply: Reply) -> tuple[Reply, Credential]:
    """The 401 rule: one forced refresh for a burst of 401s, and one retry when the body can be sent again."""
    route, tokens, rec = again.target.route, again.rt.tokens, again.rec
    assert route is not None
    try:
        retry = await tokens.after_unauthorized(route, cred) if again.replayable else None
    except BaseException:
        reply.release()  # its pooled connection goes back (or closes), not left to the upstream's timeout
        raise
    if retry is None:
        tokens.mark_stale(route, cred)
        rec.retry = "skipped"
        return reply, cred
    reply.release()
    reply = await again.send(retry)
    if retry.proof is not None:
        reply, _ = await _nonce_retry(again, retry, reply)
    rec.token, rec.retry = TokenState.RETRIED.value, "done"
    return reply, retry


async def _nonce_retry(again: _Resend, cred: Credential, reply: Reply) -> tuple[Reply, bool]:
    """The reply to a request sent with a per-request proof, a nonce challenge answered once;
    and whether it is a challenge left unanswered (a body too large to replay).

    RFC 9449 §9: the resource server's 401 ``use_dpop_nonce`` names the nonce to
    put in the proof; the token stays, and the one forced refresh of the 401
    rule is still there for what the retry gets. An unanswered challenge goes
    back to the client as it came, and is no reason to drop the token.
    """
    assert cred.proof is not None
    rec = again.rec
    if not cred.proof.answered(url_of(again.target), reply.status, reply.headers):
        return reply, False
    if not again.replayable:
        rec.retry = "skipped"
        return reply, True
    reply.release()
    reply = await again.send(cred)
    rec.retry = rec.retry or "nonce"
    return reply, False


async def exchange(rt: Runtime, snap: Snapshot, target: Target, req: ProxyRequest, cred: Credential | None) -> Reply:
    """One round trip upstream: a pooled HTTP/1.1 request, or an upgrade on its own connection.

    Its timeouts are those of ``snap``, the snapshot the request started with:
    a reload while it waits for a token or its body does not change them.
    """
    raw = req.headers
    route = target.route
    if target.swap and cred is not None and snap.placeholders is not None:
        raw, target = _swapped(snap.placeholders, target, raw, cred)
    headers, upgrade = outbound_headers(raw, target.host_header, cred, rt.via, route is not None and route.scrub)
    if raw is not req.headers:
        upgrade = is_upgrade(req.headers)  # the client's, as it asked (a swap changes values)
    # A bodiless GET (the common request) has nothing to send; else _payload says what.
    data, length = (None, None) if req.body.length == 0 and req.method in _NO_BODY else _payload(req)
    path = target.path if cred is None or not cred.query else _with_query(target.path, cred)
    if cred is not None:
        if cred.signer is not None:
            # Signed over the request as sent (SigV4): after the headers are built, again for a retry.
            headers, data, length = cred.signer.sign(req.method, target.host_header, path, headers, data, length)
        if cred.proof is not None:
            headers.append(cred.proof.proof(req.method, url_of(target)))
    dest = target.dest
    sslctx = rt.upstreams.ssl_context(route) if dest.scheme == "https" else None
    parent = None if snap.parents.off else _parent(snap, target)
    timeouts = snap.config.timeouts
    if upgrade is not None:
        return await open_upgrade(
            rt.upstreams.pool,
            target.guard,
            dest,
            req.method,
            path,
            headers,
            upgrade,
            sslctx,
            timeouts.connect,
            timeouts.upstream_headers,
            parent,
        )
    try:
        # The pool maps every failure to the ProxyError a client sees (502, 504), naming the upstream.
        resp = await rt.upstreams.pool.request(
            dest, sslctx, req.method, path, headers, data, length, timeouts.upstream_headers, target.guard, parent
        )
    except ProxyError:
        if req.body.error is not None:
            raise req.body.error from None  # the client's body broke, not the upstream
        raise
    return Reply(resp.status, resp.reason, filter_response_headers(resp.headers), resp, resp.release)


async def _expired(reply: Reply, cred: Credential) -> bool:
    """Does the answer say that ``cred`` expired? Its body's start is read to tell, then put back."""
    assert cred.signer is not None
    if not cred.signer.wants_peek(reply.status) or reply.body is None:
        return False
    head: list[bytes] = []
    size = 0
    rest = reply.body
    async for chunk in rest:
        head.append(chunk)
        size += len(chunk)
        if size >= _PEEK:
            break
    reply.body = Replayed(head, rest if size >= _PEEK else None)
    return cred.signer.refused(reply.headers, b"".join(head))


def _swapped(
    ph: Placeholders, target: Target, raw: list[tuple[bytes, bytes]], cred: Credential
) -> tuple[list[tuple[bytes, bytes]], Target]:
    """The client's head with the route's placeholder swapped for the secret (placeholders/swap.py).

    On a ``require: placeholder`` route the client's own ``Authorization`` and
    the headers the route injects into never go upstream: only the placeholder
    opens the route.
    """
    assert target.route is not None and target.route.placeholder is not None
    name, spec = target.route.name, target.route.placeholder
    secret = cred.raw_secret()
    drop = _required_drop(cred.wire_names) if spec.required else frozenset()
    headers = swap_headers(raw, ph.raw[name], secret.encode(), drop)
    path = swap_target(target.path, ph.values[name], secret, spec)
    return headers, (target if path == target.path else dataclasses.replace(target, path=path))


@lru_cache(maxsize=256)
def _required_drop(names: frozenset[bytes]) -> frozenset[bytes]:
    return names | {b"authorization"}


def outbound_headers(
    raw: list[tuple[bytes, bytes]], host: str, cred: Credential | None, via: Via, scrub: bool = False
) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """Client headers minus hop-by-hop ones, our Via after the client's (RFC 9110 §7.6.3), and the
    credential injected (never twice); and the upgrade the client asks for, read on the same pass
    (``upgrade.is_upgrade``). A Via that already names us is a loop (ProxyLoop).
    ``scrub``: ask for a response the scrubber can read whole (upstream/scrubbed.py)."""
    names = _NO_NAMES if cred is None else cred.wire_names
    drop = (_SCRUB_DROPS if scrub else _DROPS).get(names)
    if drop is None:
        drop = _drop_set(names, scrub)
    out = [(b"Host", host.encode("ascii"))]
    upgrade = forward_into(out, raw, drop, via.check)
    out.append(via.header)
    if cred is not None:
        out += cred.wire
    if scrub:
        out.append(ASK_IDENTITY)
    return out, upgrade


# The headers dropped from a client's head, by the credential's header names (and with the
# scrubber's asks): a few sets in all, made once each.
_NO_NAMES: frozenset[bytes] = frozenset()
_DROPS: dict[frozenset[bytes], frozenset[bytes]] = {}
_SCRUB_DROPS: dict[frozenset[bytes], frozenset[bytes]] = {}


def _drop_set(names: frozenset[bytes], scrub: bool) -> frozenset[bytes]:
    drops = _SCRUB_DROPS if scrub else _DROPS
    if len(drops) >= 256:
        drops.clear()
    drop = _DROPPED | names | (NOT_ASKED if scrub else _NO_NAMES)
    drops[names] = drop
    return drop


def _with_query(path: str, cred: Credential | None) -> str:
    if cred is None or not cred.query:
        return path
    base, _, query = path.partition("?")
    names = {n for n, _ in cred.query}
    kept = [p for p in query.split("&") if p and unquote(p.partition("=")[0]) not in names]
    kept += [f"{quote(n, safe='')}={quote(v, safe='')}" for n, v in cred.query]
    return base + "?" + "&".join(kept)


def _payload(req: ProxyRequest) -> tuple[Body, int | None]:
    """The body to send and, for a streamed one, its Content-Length when the client gave one."""
    body = req.body
    if body.buffered is not None:
        if (not body.buffered and body.length is None) or (body.empty and req.method in _NO_BODY):
            return None, None
        return body.buffered, None
    return body, body.length


def _parent(snap: Snapshot, target: Target) -> Parent | None:
    """The parent proxy to go through (config/parents.py), None for direct.

    A credential allowed in clear text only because its destination is this
    host (a route with no `upstream` to a loopback host) is refused through a
    parent off this host: it would leave the host in clear text.
    """
    parents = snap.parents
    if parents.off:
        return None
    route, dest = target.route, target.dest
    parent = parents.choose(route, dest.host, dest.port, dest.default_port)
    clear = route is not None and route.upstream is None and dest.scheme == "http"
    if clear and parent is not None and not parent.on_loopback:
        assert route is not None
        raise clear_text_refusal(parent, f"route {route.name}'s credential").with_route(route.name)
    return parent
