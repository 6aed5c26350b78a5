"""A command's usage error (exit 2), and the lookup every route-taking command shares: a route by name."""

from __future__ import annotations

from authproxy.config import Config, Route


class UsageError(Exception):
    pass


def route_named(cfg: Config, name: str, path: str) -> Route:
    route = next((r for r in cfg.routes if r.name == name), None)
    if route is None:
        known = ", ".join(r.name for r in cfg.routes) or "none"
        raise UsageError(f"no route named `{name}` in {path} (routes: {known}).")
    return route
