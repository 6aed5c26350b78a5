"""A credential printed by a helper program (``gcloud auth print-access-token``, ``vault read``, ``op read``).

The helper runs without a shell (``argv`` as written, ``${VAR}`` resolved at
load time), with stdin from ``/dev/null``, the proxy's environment (less
what is the proxy's own business: the metrics folder of ``run --workers``), in a
process group of its own so that a timeout kills it and everything it
started. Its stdout (at most 64 KiB) is the credential, stripped, or a field
of the JSON it prints; its stderr is read and thrown away. A failure names
the command (``argv[0]``'s base name) and its exit status, never anything it
printed: helpers like these print secrets for a living.

Expiry: ``expiry_field`` when given, else a JWT's ``exp``, else ``ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any

from authproxy.credentials.grants.base import Credential, Grant, GrantContext, register
from authproxy.credentials.grants.checks import placement
from authproxy.credentials.grants.oauth import expiry_of
from authproxy.errors import CredentialUnavailable, TokenEndpointTimeout
from authproxy.schema.yamlreader import Section
from authproxy.secrecy.secrets import Secret, Value

log = logging.getLogger("authproxy.grants.command")

MAX_STDOUT = 64 * 1024
_READ = 16 * 1024
# An epoch this large is in milliseconds (as seconds it would be after the year 5000).
_EPOCH_MS = 100_000_000_000


class _TooMuchOutput(Exception):
    pass


def read_argv(sec: Section, key: str = "argv") -> tuple[Value, ...]:
    """``argv``: a non-empty list of strings; an item with a ``${...}`` is a ``Secret``.

    A program named by a relative path with a ``/`` (``./bin/get-token``) is
    relative to the config file, like ``token_file`` and ``${file:}``.

    Read here rather than with ``Section.str_list`` so that each item keeps its
    source (``check`` shows it) and an unset variable marks the route as
    missing a credential (502 naming the variable) instead of passing an
    empty argument.
    """
    shape = "must be a list of strings, run without a shell: [gcloud, auth, print-access-token]"
    items = sec.value_items(key, required=key == "argv", not_a_list=shape)
    if items is None:
        return ()
    if not items:
        sec.error(key, "must name at least the program to run")
        return ()
    out = [v if v.is_literal else Secret(v.text, v.source, v.missing) for v in items if v is not None]
    if out and not out[0].missing and not out[0].text:
        sec.problems.error(f"{sec.sub(key)}[0]", sec.line_at(key), "the program name is empty")
    if out and "/" in out[0].text and not PurePath(out[0].text).is_absolute() and not out[0].missing:
        first = out[0]
        out[0] = type(first)(str(sec.base_dir / first.text), first.source, first.missing)
    return tuple(out)


def program_name(argv: tuple[Value, ...]) -> str:
    """How errors name a helper: ``argv[0]``'s base name (its reference if it is one)."""
    first = argv[0] if argv else Value("", "")
    if isinstance(first, Secret):
        return first.shown_source()
    return PurePath(first.text).name or first.text


def _field_path(sec: Section, key: str) -> tuple[str, ...] | None:
    text = sec.text(key)
    if text is None:
        return None
    parts = tuple(text.split("."))
    if not all(parts):
        sec.error(key, f"`{text}` is not a field name or a dotted path like `credential.token`")
        return None
    return parts


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    """Follow a dotted path through objects (and lists, by index); None when it is not there."""
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def _is_relative(path: tuple[str, ...]) -> bool:
    """``expires_in``, ``expiresIn``, ``token_expires_in``: seconds from now, not a point in time."""
    name = path[-1].lower().replace("_", "").replace("-", "")
    return name.endswith("expiresin")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        num = float(value)
    elif isinstance(value, str):
        try:
            num = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return num if math.isfinite(num) else None


def parse_expiry(value: Any, relative: bool, now: float) -> float | None:
    """An expiry as epoch seconds (or milliseconds), an RFC 3339 string, or seconds from now."""
    num = _number(value)
    if relative:
        return now + num if num is not None and num >= 0 else None
    if num is not None:
        if num < 0:
            return None
        return num / 1000.0 if num >= _EPOCH_MS else num
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        # RFC 3339 (``2025-01-02T03:04:05Z``, with or without fractions); no zone means UTC.
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _usable(text: str) -> bool:
    """No line break or other control character: it goes into a header or a URL as is."""
    return all(c == "\t" or (ord(c) >= 32 and ord(c) != 127) for c in text)


async def _read_bounded(stream: asyncio.StreamReader, limit: int) -> bytes:
    buf = bytearray()
    while chunk := await stream.read(_READ):
        buf += chunk
        if len(buf) > limit:
            raise _TooMuchOutput
    return bytes(buf)


async def _discard(stream: asyncio.StreamReader) -> int:
    """Read stderr so the helper never blocks on a full pipe; keep none of it."""
    size = 0
    while chunk := await stream.read(_READ):
        size += len(chunk)
    return size


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the helper and whatever it started (they share its process group)."""
    if os.name == "posix":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


async def _stop(proc: asyncio.subprocess.Process, tasks: list[asyncio.Task[Any]]) -> None:
    _kill_group(proc)
    for t in tasks:
        t.cancel()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(proc.wait(), 5.0)
    for t in tasks:
        with contextlib.suppress(BaseException):
            await t


@register
@dataclass(frozen=True, slots=True)
class Command(Grant):
    type_name = "command"
    injects_standing_secret = True
    fetches = True

    argv: tuple[Value, ...]
    ttl: float
    json_field: tuple[str, ...] | None
    expiry_field: tuple[str, ...] | None
    timeout: float
    header: str | None
    prefix: str
    query: str | None
    skew: float

    @classmethod
    def parse(cls, sec: Section) -> Command:
        argv = read_argv(sec)

        default_ttl = sec.number("default_ttl", 300.0, minimum=1.0)
        ttl = sec.number("ttl", default_ttl, minimum=1.0)
        json_field = _field_path(sec, "json_field")
        expiry_field = _field_path(sec, "expiry_field")
        if sec.has("expiry_field") and not sec.has("json_field"):
            sec.error("expiry_field", "`expiry_field` needs `json_field` (the output must be JSON)")
            expiry_field = None
        timeout = sec.number("timeout", 30.0, minimum=0.1)

        header, prefix, query = placement(sec, bearer_for_authorization=True)

        # Refresh ahead of expiry, but not so early that a short ttl means a run per request.
        skew = sec.number("refresh_skew", min(60.0, ttl / 2))
        return cls(argv, ttl, json_field, expiry_field, timeout, header, prefix, query, skew)

    # -- what the route shows -------------------------------------------------

    @property
    def program(self) -> str:
        """How errors name the helper: ``argv[0]``'s base name (its reference if it is one)."""
        return program_name(self.argv)

    def secrets(self) -> list[Secret]:
        return [a for a in self.argv if isinstance(a, Secret)]

    def sources(self) -> list[tuple[str, str]]:
        return [("argv", self.argv[0].source)] if self.argv else []

    def refresh_skew(self) -> float:
        return self.skew

    # -- running it -------------------------------------------------------------

    async def fetch(self, ctx: GrantContext) -> Credential:
        raw = await run_helper(self.argv, self.timeout, ctx.route)
        token, expires_at = self._interpret(raw)
        if self.query is not None:
            return Credential(query=((self.query, token),), expires_at=expires_at, secret=token)
        assert self.header is not None
        return Credential(headers=((self.header, self.prefix + token),), expires_at=expires_at, secret=token)

    def _interpret(self, raw: bytes) -> tuple[str, float]:
        """The credential and its expiry from the helper's stdout; errors never quote the output."""
        name = self.program
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CredentialUnavailable(f"the command `{name}` printed something that is not UTF-8 text.") from None
        expires_at: float | None = None
        if self.json_field is None:
            token = text.strip()
        else:
            try:
                data = json.loads(text)
            except ValueError:
                raise CredentialUnavailable(
                    f"the output of `{name}` is not JSON, so `json_field` cannot be read from it."
                ) from None
            field = ".".join(self.json_field)
            value = _lookup(data, self.json_field)
            if not isinstance(value, str):
                raise CredentialUnavailable(f"the JSON output of `{name}` has no string field `{field}`.")
            token = value.strip()
            if self.expiry_field is not None:
                efield = ".".join(self.expiry_field)
                evalue = _lookup(data, self.expiry_field)
                if evalue is None:
                    raise CredentialUnavailable(f"the JSON output of `{name}` has no `{efield}` (the expiry_field).")
                expires_at = parse_expiry(evalue, _is_relative(self.expiry_field), time.time())
                if expires_at is None:
                    raise CredentialUnavailable(
                        f"`{efield}` in the output of `{name}` is not an expiry "
                        "(epoch seconds, an RFC 3339 time, or seconds for an *expires_in* field)."
                    )
        if not token:
            raise CredentialUnavailable(f"the command `{name}` printed no credential.")
        if "\r" in token or "\n" in token:
            raise CredentialUnavailable(
                f"the command `{name}` printed more than one line; give `json_field` if it prints JSON."
            )
        if not _usable(token):
            raise CredentialUnavailable(f"the credential printed by `{name}` holds a control character.")
        if expires_at is None:
            expires_at = expiry_of(token, None, self.ttl)
        return token, expires_at


async def run_helper(argv: tuple[Value, ...], limit: float, route: str) -> bytes:
    """The helper's stdout, within ``limit`` seconds and ``MAX_STDOUT``; the helper never outlives the call."""
    name = program_name(argv)
    args = [a.reveal() for a in argv]
    start = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            env=_helper_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise CredentialUnavailable(f"the command `{name}` cannot be started ({why}).", route) from None
    assert proc.stdout is not None and proc.stderr is not None
    out_task = asyncio.create_task(_read_bounded(proc.stdout, MAX_STDOUT))
    err_task = asyncio.create_task(_discard(proc.stderr))
    tasks: list[asyncio.Task[Any]] = [out_task, err_task]
    try:
        async with asyncio.timeout(limit):
            out = await out_task
            err_size = await err_task
            status = await proc.wait()
    except TimeoutError:
        await _stop(proc, tasks)
        raise TokenEndpointTimeout(
            f"the command `{name}` did not finish within {limit:g} s and was killed.", route
        ) from None
    except _TooMuchOutput:
        await _stop(proc, tasks)
        raise CredentialUnavailable(
            f"the command `{name}` printed more than {MAX_STDOUT // 1024} KiB; it was killed.", route
        ) from None
    except BaseException:
        # Cancelled (shutdown) or a bug: never leave a helper running.
        await _stop(proc, tasks)
        raise
    ms = (time.monotonic() - start) * 1000
    log.debug(
        "route %s: command `%s` exited with status %s in %.0f ms (%d bytes out, %d bytes on stderr, discarded)",
        route,
        name,
        status,
        ms,
        len(out),
        err_size,
    )
    _check_status(name, status, route)
    return out


# A helper that is itself a Python program using prometheus_client would write its
# metrics into the workers' shared folder and show up in the proxy's /metrics.
_PRIVATE_ENV = frozenset({"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"})


def _helper_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}


def _check_status(name: str, status: int, route: str) -> None:
    """A helper that failed, or was ended by a signal, gives no credential; its output is never shown."""
    if status == 0:
        return
    if status < 0:
        try:
            how = f"was ended by signal {signal.Signals(-status).name}"
        except ValueError:
            how = f"was ended by signal {-status}"
    else:
        how = f"failed with exit status {status}"
    raise CredentialUnavailable(
        f"the command `{name}` {how}; its output is not shown, as it could hold a secret.", route
    )
