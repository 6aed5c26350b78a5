"""The one log line per request (and per tunnel), text or JSON.

Fields are values the proxy chose to record (the path has its query cut off,
since keys travel there), so no secret can reach this line by construction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass

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
    retry: str | None = None  # "done" or "skipped" when a 401 came back
    error: str | None = None  # our error code, when the answer is ours
    note: str | None = None  # e.g. "unverified-tls" for verify: false routes


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        rec = getattr(record, "access", None)
        if not isinstance(rec, AccessRecord):
            return f"{ts} {record.levelname.lower()} {record.getMessage()}"
        line = (
            f"{ts} {rec.method} {rec.mode} {rec.host} {rec.path} route={rec.route or '-'}"
            f" status={rec.status} in={rec.bytes_in} out={rec.bytes_out} ms={rec.ms:.1f}"
            f" token={rec.token}"
        )
        if rec.retry:
            line += f" retry={rec.retry}"
        if rec.error:
            line += f" error={rec.error}"
        if rec.note:
            line += f" note={rec.note}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(record.created))
        rec = getattr(record, "access", None)
        if not isinstance(rec, AccessRecord):
            return json.dumps({"time": ts, "level": record.levelname.lower(), "message": record.getMessage()})
        data = {"time": ts, **asdict(rec)}
        data["ms"] = round(rec.ms, 1)
        return json.dumps(data)


def emit(rec: AccessRecord) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info("access", extra={"access": rec})


class BatchingStderrHandler(logging.Handler):
    """Writes access lines to stderr in batches: one write per event-loop turn, not per request.

    Under load many requests finish in one turn of the loop; one ``write``
    for all of their lines saves a system call each. Anything that is not an
    access line (warnings, errors) is written at once, after what is queued.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lines: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        if getattr(record, "access", None) is None:
            self.flush()
            return
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
        text, self._lines = "".join(self._lines), []
        stream = sys.stderr
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass  # stderr is gone: nothing useful left to do with a log line


def setup(fmt: str, level: int = logging.INFO) -> None:
    handler = BatchingStderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("authproxy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
