"""The one log line per request (and per tunnel), text or JSON.

Fields are values the proxy chose to record (the path has its query cut off,
since keys travel there), so no secret can reach this line by construction.
"""

from __future__ import annotations

import json
import logging
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


def setup(fmt: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("authproxy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
