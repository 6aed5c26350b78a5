"""Routes that use other routes' credentials (a token exchange's ``subject_route``): every one named
must exist and hold a token, and no chain may come back to where it started, since the token layer
would wait on itself (each fetch waiting for the next in the ring).
"""

from __future__ import annotations

from collections.abc import Sequence

from authproxy.config.model import Route
from authproxy.schema.problems import Problems


def check_route_refs(routes: Sequence[Route], problems: Problems) -> None:
    by_name = {r.name: r for r in routes}
    edges: dict[str, list[str]] = {}
    for route in routes:
        for name, path, line in route.auth.route_refs():
            target = by_name.get(name)
            if target is None:
                problems.error(path, line, f"route `{name}` does not exist")
            elif target.auth.type_name == "basic":
                problems.error(path, line, f"route `{name}` holds a user name and password (basic), not a token")
            else:
                edges.setdefault(route.name, []).append(name)
    for route in routes:
        ring = _ring_through(route.name, edges)
        if ring is not None:
            for name, path, line in route.auth.route_refs():
                if name == ring[1]:
                    problems.error(path, line, f"a cycle of subject routes: {' → '.join(ring)}")


def _ring_through(start: str, edges: dict[str, list[str]]) -> list[str] | None:
    """A path from ``start`` back to ``start`` (``[a, b, a]``), or None: depth first, each route once."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        name, path = stack.pop()
        for nxt in edges.get(name, []):
            if nxt == start:
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None
