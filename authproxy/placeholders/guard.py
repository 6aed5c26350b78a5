"""What a request's placeholders mean for it: swapped on their route, refused anywhere else.

A placeholder stands for a secret only on its own route. Seen in a request
that does not match that route (another host, or a path of its host the
route does not cover), it is refused (403 ``placeholder_misdirected``),
logged by route name and counted: a workload that sends one elsewhere is
trying to carry it off, or was told to. A route with ``require:
placeholder`` refuses (403 ``placeholder_required``) a request without its
own, so a key the workload found cannot be used through it.
"""

from __future__ import annotations

import logging

from authproxy.config import Route
from authproxy.errors import PlaceholderMisdirected, PlaceholderRequired
from authproxy.messages import ProxyRequest
from authproxy.ops.accesslog import AccessRecord
from authproxy.ops.metrics import Metrics
from authproxy.placeholders.index import Placeholders

log = logging.getLogger("authproxy.placeholders")

SWAPPED, ABSENT = "swapped", "absent"


def check_connect(ph: Placeholders, target: str, rec: AccessRecord, metrics: Metrics) -> None:
    """A CONNECT to a host named with a placeholder (``PH.attacker.example``): its DNS lookup would carry it off."""
    name = ph.first_in(target.encode("latin-1"))
    if name is not None:
        _refuse(name, rec, metrics)


def _refuse(name: str, rec: AccessRecord, metrics: Metrics) -> None:
    metrics.placeholder_misdirected.labels(name, rec.mode).inc()
    log.warning("refused the placeholder of route %s in a %s request to %s", name, rec.mode, rec.host)
    raise PlaceholderMisdirected(f"the request carries the placeholder of route {name}, which does not go there.")


def check(ph: Placeholders, req: ProxyRequest, route: Route | None, rec: AccessRecord, metrics: Metrics) -> str | None:
    """Refuse a misdirected or missing placeholder; else say what the route's request carries (or None)."""
    hits = ph.found(req.target, req.headers)
    own = route.name if route is not None and route.name in ph.values else None
    if hits:
        stray = hits - {own} if own is not None else hits
        if stray:
            _refuse(min(stray), rec, metrics)
    if own is None:
        return None
    assert route is not None and route.placeholder is not None
    if own in hits:
        return SWAPPED
    if route.placeholder.required:
        raise PlaceholderRequired(f"route {own} takes only its placeholder, and the request does not carry it.")
    return ABSENT
