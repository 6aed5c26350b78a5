"""Generated placeholders kept in the shared token store, so that every replica swaps the same one.

Without a shared store a generated placeholder lives in the state directory
(``disk/placeholders.py``). With one, each replica would make its own there,
and a workload given one replica's placeholder would be refused by another
(or swapped by one and stray on the next). So the store holds them: the first
replica to ask makes the value (``TokenStore.ensure``, create-if-absent,
sealed like every record), the others adopt it.

This is read before a route table goes into service (start and reload), never
per request: a table whose generated placeholder cannot be had from the store
does not go into service, since a route with ``require: placeholder`` and no
placeholder would refuse nothing.
"""

from __future__ import annotations

import functools

from authproxy.config import Config
from authproxy.disk.placeholders import is_generated, new_value
from authproxy.disk.tokenstore import TokenStore


def _record(route: str) -> dict[str, object]:
    return {"value": new_value(route)}


def generated_routes(config: Config) -> list[str]:
    return [r.name for r in config.routes if r.placeholder is not None and r.placeholder.value is None]


async def shared_generated(config: Config, store: TokenStore) -> dict[str, str] | None:
    """Route name → generated placeholder, from the shared store; None when the config has no shared store.

    Raises the store's ``TokenStoreUnavailable`` when it cannot be read or
    written, or ``ValueError`` for a record that is not a placeholder of the
    route (a store written by something else).
    """
    if config.token_store is None:
        return None
    out: dict[str, str] = {}
    for name in generated_routes(config):
        rec = await store.ensure(f"placeholder:{name}", functools.partial(_record, name))
        value = rec.get("value")
        if not is_generated(value, name):
            raise ValueError(f"the shared store's placeholder record of route {name} is not one")
        out[name] = str(value)
    return out
