"""Which token store a config uses: Redis with ``token_store:``, else the files in ``state_dir``."""

from __future__ import annotations

from authproxy.config import Config
from authproxy.disk.store import StateStore
from authproxy.disk.tokenstore import TokenStore
from authproxy.ops.metrics import Metrics


def open_store(config: Config, metrics: Metrics) -> TokenStore:
    if config.token_store is None:
        return StateStore(config.state_dir)
    from authproxy.tokens.redisstore import RedisStore  # only with `token_store:` configured

    return RedisStore(config.token_store, config.timeouts.token_fetch, metrics)


def store_unreachable(config: Config) -> str | None:
    """Why ``run`` cannot start on this config's shared store (one sentence), or None."""
    if config.token_store is None:
        return None
    import asyncio

    from authproxy.tokens.redisstore import check_reachable

    return asyncio.run(check_reachable(config.token_store, min(5.0, config.timeouts.token_fetch)))
