"""A command's usage error (exit 2), how every error of a command is said, and the route lookup commands share."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from authproxy.config import Config, Route
from authproxy.disk.ca import CAError
from authproxy.schema.problems import ConfigError
from authproxy.secrecy.redact import redact


class UsageError(Exception):
    pass


def route_named(cfg: Config, name: str, path: str) -> Route:
    route = next((r for r in cfg.routes if r.name == name), None)
    if route is None:
        known = ", ".join(r.name for r in cfg.routes) or "none"
        raise UsageError(f"no route named `{name}` in {path} (routes: {known}).")
    return route


def reported(command: Callable[[], int]) -> int:
    """Run ``command``; its exit code, or the one its error calls for, said on stderr in one line.

    Shared by ``main`` and a worker forked by ``run --workers`` (run/forking.py), which
    is the command's second half and must report as a spawned worker's ``main`` does.
    """
    try:
        return command()
    except ConfigError as exc:
        for problem in exc.problems:
            print(redact(str(problem)), file=sys.stderr)
        return 2
    except (UsageError, CAError) as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 1
    except Exception as exc:  # a bug of ours: one line, no traceback (it could hold request data)
        print(f"error: authproxy failed unexpectedly ({type(exc).__name__}).", file=sys.stderr)
        if os.environ.get("AUTHPROXY_DEBUG") == "1":
            import traceback

            traceback.print_exc()
        return 1
