"""The admin listener of ``run --workers N``: one endpoint for the whole proxy, served by the supervisor.

- ``/healthz``: the supervisor runs.
- ``/readyz``: every worker accepts connections, and the proxy is not draining.
- ``/metrics``: every worker's counters and histograms added up from the
  multiprocess files (a worker that died still counts; it served those
  requests), gauges as each says (``livesum``: open connections of the
  workers alive now), plus ``authproxy_workers`` and ``authproxy_worker_restarts_total``.
- ``/status.json`` and the page: traffic and rates from those same sums;
  routes, token states and reloads asked of every worker and merged
  (``merge_tokens``, ``merge_reloads``), and a line per worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from authproxy.admin.statusview import route_fields
from authproxy.admin.web import AdminBase, listen_admin

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from authproxy.config import Config


class WorkerView(Protocol):
    """What the fleet admin shows of one worker slot (run/supervisor.py's Worker)."""

    @property
    def index(self) -> int: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def state(self) -> str: ...
    @property
    def restarts(self) -> int: ...


class FleetView(Protocol):
    """What the fleet admin needs of the supervisor it serves (run/supervisor.py's Supervisor)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def registry(self) -> CollectorRegistry: ...
    @property
    def started_at(self) -> float: ...
    @property
    def listen(self) -> str: ...
    def is_ready(self) -> bool: ...
    async def ask_all(self) -> Sequence[tuple[WorkerView, dict[str, Any] | None]]: ...

_SAME_RELOAD = 5.0  # seconds within which the workers' reloads of one SIGHUP or edit are one event
_MAX_RELOADS = 20
# When no worker is failing or refreshing, the best state any worker holds is the route's:
# a worker that has not needed the token yet does not make a fresh token "none yet".
_RANK = {"fresh": 4, "due": 3, "expired": 2, "none yet": 1}


def merge_tokens(tokens: list[dict[str, Any]]) -> dict[str, Any]:
    """One route's token state from every worker's."""
    if not tokens:
        return {"state": "unknown", "expires_in": None, "fetches": 0}
    unavailable = [t for t in tokens if t.get("state") == "unavailable"]
    if unavailable:
        return unavailable[0]
    fetches = sum(int(t.get("fetches") or 0) for t in tokens)
    fetched = [float(t["last_fetch_at"]) for t in tokens if t.get("last_fetch_at") is not None]
    last_fetch = max(fetched, default=None)
    errors = [t for t in tokens if t.get("last_error") and t.get("last_error_at") is not None]
    newest_error = max(errors, key=lambda t: float(t["last_error_at"]), default=None)
    best = max(tokens, key=lambda t: (_RANK.get(str(t.get("state")), 0), t.get("expires_in") or 0))
    state = str(best.get("state"))
    if newest_error is not None and (last_fetch is None or float(newest_error["last_error_at"]) > last_fetch):
        state = "failing"  # the latest word on this route is a failure
    elif any(t.get("state") == "refreshing" for t in tokens):
        state = "refreshing"
    return {
        "state": state,
        "expires_in": best.get("expires_in"),
        "fetches": fetches,
        "last_fetch_at": last_fetch,
        "last_error": newest_error["last_error"] if state == "failing" and newest_error else None,
        "last_error_at": newest_error["last_error_at"] if state == "failing" and newest_error else None,
    }


def merge_reloads(per_worker: list[tuple[int, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """The workers' reloads, the same outcome within a few seconds counted once, naming the workers; newest first."""
    events = sorted(
        (float(ev["at"]), bool(ev.get("ok")), str(ev.get("detail", "")), index)
        for index, evs in per_worker
        for ev in evs
    )
    groups: list[tuple[float, bool, str, list[int]]] = []
    for at, ok, detail, index in events:
        last = groups[-1] if groups else None
        same = last is not None and (last[1], last[2]) == (ok, detail) and at - last[0] <= _SAME_RELOAD
        if last is not None and same and index not in last[3]:
            last[3].append(index)
        else:
            groups.append((at, ok, detail, [index]))
    out = []
    for at, ok, detail, indexes in reversed(groups[-_MAX_RELOADS:]):
        who = f"worker {indexes[0]}" if len(indexes) == 1 else "workers " + ", ".join(map(str, sorted(indexes)))
        out.append({"at": at, "ok": ok, "detail": f"{detail} ({who})"})
    return out


def merge_routes(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The route table as the first worker that answered has it, each token merged over every worker."""
    if not views:
        return []
    tokens: dict[str, list[dict[str, Any]]] = {}
    for view in views:
        for r in view.get("routes") or []:
            tokens.setdefault(str(r.get("name")), []).append(r.get("token") or {})
    return [{**r, "token": merge_tokens(tokens.get(str(r.get("name")), []))} for r in views[0].get("routes") or []]


class FleetAdmin(AdminBase):
    def __init__(self, sup: FleetView) -> None:
        super().__init__(sup.registry)
        self.sup = sup

    async def listen(self, host: str, port: int) -> None:
        """The same Host check and token as one process's admin listener, from the config at start."""
        await listen_admin(self, host, port, self.sup.cfg.admin_token, self.sup.cfg.admin_hosts)

    def is_ready(self) -> bool:
        return self.sup.is_ready()

    async def current_status(self) -> dict[str, Any]:
        sup = self.sup
        answers = await sup.ask_all()
        views = [a for _, a in answers if a is not None]
        reloads = merge_reloads([(w.index, list(a.get("reloads") or [])) for w, a in answers if a is not None])
        routes = merge_routes(views)
        if not views:  # no worker answered (all starting again): the table the proxy started with
            routes = [{**route_fields(r), "token": merge_tokens([])} for r in sup.cfg.routes]
        status = self.build_status(
            routes=routes,
            reloads=reloads,
            started_at=sup.started_at,
            listen=sup.listen,
            config_file=str(sup.cfg.file),
        )
        stores = [a["token_store"] for a in views if isinstance(a.get("token_store"), dict)]
        # The store as the worst-off worker sees it: one that cannot reach it is the news.
        failing = [s for s in stores if s.get("state") == "unreachable"]
        status["token_store"] = (failing or stores or [None])[0]
        status["workers"] = [
            {"index": w.index, "pid": w.pid, "state": w.state, "restarts": w.restarts, "answered": a is not None}
            for w, a in answers
        ]
        return status
