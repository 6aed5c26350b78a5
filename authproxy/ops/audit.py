"""The audit trail (``audit:``): one JSON line per decision the proxy made about a request or tunnel.

Each line says which route, which credential (its grant type and where its
secret comes from, as ``check`` shows it: references, never values), where
it was injected, what became of a placeholder (swapped, absent, refused),
the token's state, the 401 retry, the ``allow`` and ``destinations``
decisions, the bytes scrubbed from the response, and the error code when
the answer was the proxy's. Nothing in it is a value taken from a request or
a credential but the host and the path without its query, as in the access
log.

Writes never block the event loop: a line is formatted on the loop and put on
a queue; a thread (``logging.handlers.QueueListener``) writes it. A file is
rotated by size (``max_bytes``, default 10 MiB) keeping ``keep`` old files
(default 5: ``PATH.1`` … ``PATH.5``), created 0600. Under ``run --workers`` each worker
writes its own file, ``PATH.w1`` … ``PATH.wN`` (rotated alike), so that no two
processes rotate one file.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import sys
import time
from logging.handlers import QueueListener, RotatingFileHandler
from pathlib import Path

from authproxy.ops import accesslog
from authproxy.ops.accesslog import AccessRecord

_REFUSED = {"placeholder_required": "refused: required", "placeholder_misdirected": "refused: misdirected"}


class _PrivateRotatingFile(RotatingFileHandler):
    """A RotatingFileHandler whose files are created 0600: the trail is the operator's to read."""

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return open(fd, "a", encoding=self.encoding or "utf-8")


def file_for(path: Path, worker: int | None) -> Path:
    """Where one process writes: ``PATH``, or ``PATH.wN`` for worker N of ``run --workers``."""
    return path if worker is None else path.with_name(f"{path.name}.w{worker}")


def line(rec: AccessRecord) -> str:
    """The audit line of a finished record: decisions, never values."""
    extra = rec.audit or {}
    placeholder = _REFUSED.get(rec.error or "") or extra.get("placeholder")
    destination = None
    if rec.error == "destination_denied":
        destination = "denied"
    elif rec.route is None and rec.status and not rec.error:
        destination = "allowed"
    data = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": rec.method,
        "mode": rec.mode,
        "host": rec.host,
        "path": rec.path,
        "route": rec.route,
        "credential": extra.get("credential"),
        "sources": extra.get("sources"),
        "injected": extra.get("injected"),
        "placeholder": placeholder,
        "token": rec.token,
        "retry": rec.retry,
        "allow": extra.get("allow"),
        "destination": destination,
        # The bytes response scrubbing replaced (0 where it found nothing, or is off).
        "scrubbed": rec.scrubbed,
        "status": rec.status,
        "error": rec.error,
        "note": rec.note,
    }
    return json.dumps(data)


class AuditLog:
    """The running trail: ``record`` on the loop, the writing on a thread of its own."""

    def __init__(self, path: Path | None, max_bytes: int, keep: int, worker: int | None = None) -> None:
        """``path`` None: stderr."""
        handler: logging.Handler
        if path is None:
            handler = logging.StreamHandler(sys.stderr)
        else:
            handler = _PrivateRotatingFile(file_for(path, worker), maxBytes=max_bytes, backupCount=keep)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._handler = handler
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = QueueListener(self._queue, handler)

    def start(self) -> AuditLog:
        self._listener.start()
        accesslog.audit_sink = self.record
        return self

    def record(self, rec: AccessRecord) -> None:
        # A bare LogRecord: the line is final, nothing in it is formatted again on the thread.
        self._queue.put_nowait(logging.makeLogRecord({"msg": line(rec), "levelno": logging.INFO}))

    def close(self) -> None:
        """Stop taking lines, write what is queued, close the file."""
        if accesslog.audit_sink == self.record:
            accesslog.audit_sink = None
        self._listener.stop()
        self._handler.close()
