"""The log: one line per request (and per tunnel), and the proxy's other messages; text or JSON.

Access lines are built from fields the proxy chose to record (the path has
its query cut off, since keys travel there; credentials go only into headers
and the query), so no secret can reach them by construction, and they skip
the redactor: it would cost every request a scan per known secret. Every
other message, at every level, and the text of an exception with its
traceback, goes through the redactor (``redact.py``) in the formatter, so
whatever handler writes it (ours, or one a test or an embedding adds with
these formatters) writes it redacted; ``setup`` routes other libraries'
warnings (asyncio's "Exception in callback", aiohttp's) through it too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from authproxy.secrecy.redact import redact

log = logging.getLogger("authproxy.access")


@dataclass(slots=True)
class AccessRecord:
    method: str
    mode: str
    host: str
    path: str
    route: str | None = None
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    ms: float = 0.0
    token: str = "none"
    retry: str | None = None  # "done" or "skipped" when a 401 came back; "nonce": a DPoP nonce challenge answered
    error: str | None = None  # our error code, when the answer is ours
    note: str | None = None  # e.g. "unverified-tls" for verify: false routes
    scrubbed: int = 0  # response bytes replaced by the scrubber (secrecy/scrub.py)
    # The decisions the audit trail records beyond these fields (ops/audit.py); set only when
    # `audit:` is on, and never in the access line.
    audit: dict[str, object] | None = None


class _Clock:
    """Under load many lines share a second: its timestamp is formatted once."""

    __slots__ = ("_fmt", "second", "stamp_of_second")

    def __init__(self, fmt: str) -> None:
        self._fmt, self.second, self.stamp_of_second = fmt, -1, ""

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            self.second, self.stamp_of_second = second, time.strftime(self._fmt, time.localtime(second))
        return self.stamp_of_second


def text_line(rec: AccessRecord, ts: str) -> str:
    line = (
        f"{ts} {rec.method} {rec.mode} {rec.host} {rec.path} route={rec.route or '-'}"
        f" status={rec.status} in={rec.bytes_in} out={rec.bytes_out} ms={rec.ms:.1f}"
        f" token={rec.token}"
    )
    if rec.retry:
        line += f" retry={rec.retry}"
    if rec.error:
        line += f" error={rec.error}"
    if rec.scrubbed:
        line += f" scrubbed={rec.scrubbed}"
    if rec.note:
        line += f" note={rec.note}"
    return line


def json_line(rec: AccessRecord, ts: str) -> str:
    # The record's fields in their order, but ``audit``; built by hand: dataclasses.asdict
    # deep-copies every value, three times the cost of the rest of the line
    # (bench/ops_ir.py json: ~210,000 -> ~55,000 instructions a line).
    return json.dumps(
        {
            "time": ts,
            "method": rec.method,
            "mode": rec.mode,
            "host": rec.host,
            "path": rec.path,
            "route": rec.route,
            "status": rec.status,
            "bytes_in": rec.bytes_in,
            "bytes_out": rec.bytes_out,
            "ms": round(rec.ms, 1),
            "token": rec.token,
            "retry": rec.retry,
            "error": rec.error,
            "note": rec.note,
            "scrubbed": rec.scrubbed,
        }
    )


def _exception_text(fmt: logging.Formatter, record: logging.LogRecord) -> str:
    """The traceback (and stack) a record carries, as ``logging.Formatter`` would add it; "" for none."""
    parts = []
    if record.exc_info:
        parts.append(fmt.formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(fmt.formatStack(record.stack_info))
    return "\n".join(parts)


class TextFormatter(logging.Formatter):
    # "worker 2: " in front of messages (not access lines) of a worker process,
    # so that an operator can tell which of several processes said what.
    tag = ""
    line = staticmethod(text_line)  # an access line, from its record and timestamp

    def __init__(self) -> None:
        super().__init__()
        self.clock = _Clock("%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        ts = self.clock.stamp(record.created)
        rec = getattr(record, "access", None)
        if not isinstance(rec, AccessRecord):
            text = record.getMessage()
            trace = _exception_text(self, record)
            if trace:
                text += "\n" + trace
            return f"{ts} {record.levelname.lower()} {self.tag}{redact(text)}"
        return text_line(rec, ts)


class JsonFormatter(logging.Formatter):
    tag = ""
    line = staticmethod(json_line)

    def __init__(self) -> None:
        super().__init__()
        self.clock = _Clock("%Y-%m-%dT%H:%M:%S%z")

    def format(self, record: logging.LogRecord) -> str:
        ts = self.clock.stamp(record.created)
        rec = getattr(record, "access", None)
        if not isinstance(rec, AccessRecord):
            data = {"time": ts, "level": record.levelname.lower(), "message": self.tag + redact(record.getMessage())}
            trace = _exception_text(self, record)
            if trace:
                data["exception"] = redact(trace)
            return json.dumps(data)
        return json_line(rec, ts)


# Set by setup() when our own stderr handler is the only one: access lines then
# skip the logging machinery (a LogRecord and three dispatch calls per request).
_direct: BatchingStderrHandler | None = None


# Set by ops/audit.py while `audit:` is on: every finished record goes there too.
audit_sink: Callable[[AccessRecord], None] | None = None


_enabled = log.isEnabledFor
_INFO = logging.INFO


def emit(rec: AccessRecord) -> None:
    if audit_sink is not None:
        audit_sink(rec)
    if not _enabled(_INFO):
        return
    sink = _direct
    if sink is not None:
        sink.access(rec)
        return
    # Made directly: Logger.info would walk the stack for a caller no access line prints.
    record = logging.LogRecord(log.name, logging.INFO, __file__, 0, "access", None, None)
    record.__dict__["access"] = rec
    log.handle(record)


class BatchingStderrHandler(logging.Handler):
    """Writes access lines to stderr in batches: one write per event-loop turn, not per request.

    Under load many requests finish in one turn of the loop; one ``write``
    for all of their lines saves a system call each. Anything that is not an
    access line (warnings, errors) is written at once, after what is queued.
    """

    def __init__(self, shared: bool = False) -> None:
        super().__init__()
        self._lines: list[str] = []  # each without its line end
        self._access: TextFormatter | JsonFormatter | None = None
        self._scheduled = False
        # Several processes write to one stderr (``run --workers``): a pipe write
        # of at most PIPE_BUF bytes is never interleaved with another's, so
        # batches are cut there, at line ends.
        self._shared = shared

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        self._access = fmt if isinstance(fmt, (TextFormatter, JsonFormatter)) else None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        if getattr(record, "access", None) is None:
            self.flush()
            return
        self._schedule()

    def access(self, rec: AccessRecord) -> None:
        """An access line without a LogRecord (see ``_direct``), stamped as ``format`` stamps one."""
        fmt = self._access
        assert fmt is not None  # setup() gives this handler one of ours
        clock, now = fmt.clock, time.time()
        stamp = clock.stamp_of_second if int(now) == clock.second else clock.stamp(now)
        self._lines.append(fmt.line(rec, stamp))
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        stream = sys.stderr
        if self._shared:
            pieces = _pieces(lines)
        else:
            lines.append("")  # the last line's end
            pieces = ["\n".join(lines)]
        try:
            for text in pieces:
                stream.write(text)
                stream.flush()
        except (OSError, ValueError):
            pass  # stderr is gone: nothing useful left to do with a log line


def _pieces(lines: list[str]) -> list[str]:
    """Whole lines (given without their ends) joined into pieces of at most PIPE_BUF bytes (a longer line alone)."""
    out: list[str] = []
    piece: list[str] = []
    size = 0
    for line in lines:
        n = len(line.encode("utf-8", "replace")) + 1
        if piece and size + n > select.PIPE_BUF:
            out.append("\n".join(piece) + "\n")
            piece, size = [], 0
        piece.append(line)
        size += n
    if piece:
        out.append("\n".join(piece) + "\n")
    return out


def setup(fmt: str, level: int = logging.INFO, shared: bool = False, tag: str = "") -> None:
    """``shared``: other processes write to the same stderr; ``tag`` prefixes this one's messages."""
    handler = BatchingStderrHandler(shared)
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    formatter.tag = tag
    handler.setFormatter(formatter)
    root = logging.getLogger("authproxy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Other libraries' records (asyncio's "Exception in callback", aiohttp's) go to the
    # root logger: through the same handler, and so the same redactor, not logging's bare stderr.
    logging.getLogger().handlers[:] = [handler]
    global _direct
    access = logging.getLogger("authproxy.access")
    # Only while nothing else listens for access records (a filter, another handler).
    _direct = handler if not access.handlers and not access.filters and access.propagate else None
