"""Trying a token endpoint again: bounded, with backoff, honouring ``Retry-After``.

The token layer owns retries (grants make one attempt each): a grant's
``TokenEndpointError`` marked ``retryable`` (a 429, a 5xx, no connection) is
tried again after a jittered exponential wait, or the endpoint's
``Retry-After`` (RFC 9110 §10.2.3), as long as the next attempt can start
within the fetch's deadline (``timeouts.token_fetch``). Each attempt gets
what is left of the deadline. An endpoint that never answers is a
``TokenEndpointTimeout``; one that answered with failures until the deadline
is a ``TokenEndpointError`` that says so, with the last failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from authproxy.credentials.grants import GrantContext
from authproxy.errors import TokenEndpointError, TokenEndpointTimeout

T = TypeVar("T")

_WAIT_FIRST = 0.25  # the first wait is drawn from [0, 0.25 s], each next range doubles
_WAIT_MAX = 8.0


def _backoff(failures: int) -> float:
    """Full jitter: a uniform draw below a doubling cap, so many proxies do not retry in step."""
    return random.uniform(0.0, min(_WAIT_MAX, _WAIT_FIRST * 2 ** (failures - 1)))


async def with_retries(attempt: Callable[[GrantContext], Awaitable[T]], ctx: GrantContext) -> T:
    """``attempt(ctx)``, tried again on a retryable failure while ``ctx.deadline`` allows."""
    start = time.monotonic()
    failures: list[TokenEndpointError] = []
    while True:
        left = ctx.deadline - (time.monotonic() - start)
        try:
            return await attempt(dataclasses.replace(ctx, deadline=left) if failures else ctx)
        except TokenEndpointTimeout:
            if not failures:
                raise  # it never answered at all
            break  # it answered, with failures, until the deadline: an error, not a timeout
        except TokenEndpointError as exc:
            if not exc.retryable:
                raise
            failures.append(exc)
        last = failures[-1]
        wait = last.retry_after if last.retry_after is not None else _backoff(len(failures))
        if time.monotonic() - start + wait >= ctx.deadline:
            break
        await asyncio.sleep(wait)
    waited = time.monotonic() - start
    detail = failures[-1].detail.rstrip(".")
    raise TokenEndpointError(f"{detail}, and kept failing for {waited:.1f} s.", ctx.route) from None
