"""What the request pipeline remembers between requests decides exactly what deciding anew would.

``targets.resolve`` keeps each request target's decision for the snapshot it
was made under, and ``upstreams.forward_into`` reads the client's upgrade in
the pass that filters its head. These tests hold each against the
undecorated answer: a remembered target and access record equal a fresh
snapshot's, a refusal is refused every time, an intercepted request's Host
header is judged on every request, and the one-pass upgrade reading equals
``upgrade.is_upgrade`` on every head.

Routes are built as the proxy builds them: YAML through ``config.load``, then
``Snapshot.of``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from authproxy import targets
from authproxy.config import load
from authproxy.errors import BadRequest, Denied, MisdirectedRequest, ProxyError
from authproxy.messages import Origin, ProxyRequest, RequestBody
from authproxy.ops.accesslog import AccessRecord
from authproxy.runtime import Snapshot
from authproxy.targets import Target, resolve
from authproxy.upstream.upgrade import is_upgrade
from authproxy.upstream.upstreams import HOP_BY_HOP, forward_into, without_hop_by_hop

ROUTES = """
routes:
  - name: api
    match: api.example
    upstream: https://backend.example:8443
    auth: {type: api_key, value: "${AP_MEMO_KEY}"}
  - name: lax
    match: lax.example
    upstream: https://lax-up.example
    verify: false
    auth: {type: api_key, value: "${AP_MEMO_KEY}"}
  - name: byname
    match: "*.paths.example/v1/"
    upstream: https://paths-up.example
    auth: {type: api_key, value: "${AP_MEMO_KEY}"}
  - name: gw
    gateway: /gw/
    upstream: https://gw.example/base
    auth: {type: api_key, value: "${AP_MEMO_KEY}"}
  - name: clear
    match: clear.example:80
    auth: {type: api_key, value: "${AP_MEMO_KEY}"}
  - name: local
    match: 127.0.0.1:8080
    auth: {type: api_key, value: "${AP_MEMO_KEY}"}
  - name: named
    match: localhost:8080
    auth: {type: api_key, value: "${AP_MEMO_KEY}"}
"""


class _NoBody:
    """A client connection with no body to give (the requests here are bodiless GETs)."""

    async def receive_body(self) -> bytes | None:
        return None

    def body_at_hand(self) -> bytes | None:
        return None


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AP_MEMO_KEY", "k")


def snapshot(tmp_path: Path, text: str = ROUTES, name: str = "routes.yaml") -> Snapshot:
    path = tmp_path / name
    path.write_text(text)
    return Snapshot.of(load(path))


def request(target: str, tunnel: Origin | None = None, host: bytes | None = None) -> ProxyRequest:
    headers = [(b"Host", host)] if host is not None else []
    return ProxyRequest("GET", target, headers, RequestBody(_NoBody(), 0), tunnel=tunnel)


def decide(snap: Snapshot, req: ProxyRequest) -> tuple[Target | str, tuple[object, ...]]:
    """The target (or the refusal's class and detail) and what the access record says."""
    rec = AccessRecord(method="GET", mode="plain", host="-", path="")
    try:
        out: Target | str = resolve(req, snap, rec)
    except ProxyError as exc:
        out = f"{type(exc).__name__}: {exc.detail}"
    return out, (rec.mode, rec.host, rec.path, rec.route, rec.note)


TLS = Origin("https", "api.example", 443)
CASES = [
    request("http://api.example/v1/x?q=1"),
    request("http://API.example:80/v1/x#frag"),
    request("http://lax.example/a"),
    request("http://other.example/a"),
    request("http://a.paths.example/v1/models"),
    request("http://a.paths.example/v2/models"),
    request("/gw/chat?x=1"),
    request("http://127.0.0.1:8080/local"),
    request("http://localhost:8080/local"),
    request("/x", TLS, b"api.example"),
    request("https://api.example/x", TLS),
    request("/y", Origin("http", "lax.example", 80)),
    request("/z", Origin("https", "unrouted.example", 443)),
]


@pytest.mark.parametrize("req", CASES, ids=lambda r: f"{r.target}@{r.tunnel.authority if r.tunnel else '-'}")
def test_a_remembered_decision_is_the_one_a_fresh_snapshot_makes(tmp_path: Path, req: ProxyRequest) -> None:
    snap = snapshot(tmp_path)
    first = decide(snap, req)
    again = decide(snap, req)
    fresh = decide(snapshot(tmp_path, name="again.yaml"), req)
    assert isinstance(first[0], Target)
    assert first == again
    assert again[1] == fresh[1] and again[0] == fresh[0]


@pytest.mark.parametrize(
    ("text", "req", "refusal"),
    [
        (ROUTES + "unmatched: deny\n", request("http://other.example/a"), Denied),
        (ROUTES, request("http://clear.example/a"), Denied),  # a credential in clear text
        (ROUTES, request("http://a.paths.example/v1/%2e%2e%2fx"), BadRequest),
        (ROUTES + "unmatched: deny\n", request("/z", Origin("https", "unrouted.example", 443)), Denied),
        (ROUTES, request("https://elsewhere.example/x", TLS), MisdirectedRequest),
    ],
)
def test_a_refusal_is_decided_on_every_request(
    tmp_path: Path, text: str, req: ProxyRequest, refusal: type[ProxyError]
) -> None:
    snap = snapshot(tmp_path, text)
    for _ in range(3):
        with pytest.raises(refusal):
            resolve(req, snap, AccessRecord(method="GET", mode="plain", host="-", path=""))


def test_the_host_header_of_an_intercepted_request_is_judged_every_time(tmp_path: Path) -> None:
    snap = snapshot(tmp_path)
    ok = decide(snap, request("/x", TLS, b"api.example"))
    assert isinstance(ok[0], Target) and ok[1][3] == "api"
    # The same target in the same tunnel, decided already: its Host header still has to agree.
    with pytest.raises(MisdirectedRequest):
        resolve(request("/x", TLS, b"evil.example"), snap, AccessRecord(method="GET", mode="p", host="-", path=""))
    with pytest.raises(BadRequest):
        resolve(request("/x", TLS, b"bad host"), snap, AccessRecord(method="GET", mode="p", host="-", path=""))
    assert decide(snap, request("/x", TLS, b"API.example:443")) == ok


def test_a_new_snapshot_decides_anew_and_an_old_one_still_decides_its_way(tmp_path: Path) -> None:
    old = snapshot(tmp_path)
    new = snapshot(tmp_path, ROUTES.replace("match: api.example", "match: moved.example"), "new.yaml")
    req = request("http://api.example/v1/x")
    assert decide(old, req)[1][3] == "api"
    assert decide(new, req)[1][3] is None  # unmatched there: passed through
    assert decide(old, req)[1][3] == "api"  # a request still on the old snapshot


def test_the_memo_stays_bounded(tmp_path: Path) -> None:
    snap = snapshot(tmp_path)
    for i in range(targets._MEMO_MAX * 2 + 10):
        decide(snap, request(f"http://api.example/v1/{i}"))
    assert 0 < len(targets._MEMO.plain) <= targets._MEMO_MAX
    long = request("http://api.example/" + "a" * targets._MEMO_TARGET)
    assert decide(snap, long) == decide(snap, long)
    assert long.target not in targets._MEMO.plain


HEADS = [
    [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")],
    [(b"upgrade", b" websocket "), (b"connection", b"keep-alive, UPGRADE")],
    [(b"Upgrade", b"websocket")],  # not asked for in Connection: no upgrade
    [(b"Connection", b"upgrade")],
    [(b"Upgrade", b""), (b"Connection", b"upgrade")],
    [(b"Upgrade", b"h2c"), (b"Upgrade", b"websocket"), (b"Connection", b"x-a"), (b"Connection", b"upgrade")],
    [(b"Connection", b"close"), (b"X-A", b"1"), (b"Via", b"1.1 other")],
    [(b"Connection", b"x-secret, , keep-alive"), (b"X-Secret", b"s"), (b"x-kept", b"k")],
    [(b"Accept", b"*/*")],
    [],
]


@pytest.mark.parametrize("head", HEADS)
def test_one_pass_reads_the_upgrade_and_filters_as_the_separate_passes_do(head: list[tuple[bytes, bytes]]) -> None:
    seen: list[bytes] = []
    drop = HOP_BY_HOP | {b"host", b"via"}
    out: list[tuple[bytes, bytes]] = [(b"Host", b"kept.example")]
    upgrade = forward_into(out, head, drop, seen.append)
    assert upgrade == is_upgrade(head)
    assert out == [(b"Host", b"kept.example"), *without_hop_by_hop(head, drop, lambda v: None)]
    assert seen == [v for n, v in head if n.lower() == b"via"]


def test_what_the_connection_header_lists_never_touches_what_came_before() -> None:
    # A client naming Host among its Connection options must not take ours away.
    out: list[tuple[bytes, bytes]] = [(b"Host", b"ours.example")]
    forward_into(out, [(b"Connection", b"host, x-a"), (b"X-A", b"1"), (b"X-B", b"2")], HOP_BY_HOP)
    assert out == [(b"Host", b"ours.example"), (b"X-B", b"2")]
