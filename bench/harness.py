"""Bench: everything one run drives, put together from its parts (each a module of its own)."""

from __future__ import annotations

from extras import Extras
from refresh import Refresh


class Bench(Refresh, Extras):
    """The workdir, ports and targets (state.py), the upstream (upstream.py), the proxies (proxies.py),
    the clients and checks (clients.py), the load runs (load.py), and authproxy's extras (extras.py,
    refresh.py)."""
