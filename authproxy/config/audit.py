"""The top-level ``audit:`` key: where the decision trail goes, and how it is rotated.

``audit: PATH``, ``audit: stderr``, or ``audit: {path, max_bytes, keep}``.
Off when absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from authproxy.schema.yamlreader import Section

MAX_BYTES = 10 * 1024 * 1024
KEEP = 5


@dataclass(frozen=True, slots=True)
class AuditSettings:
    path: Path | None  # None: stderr
    max_bytes: int = MAX_BYTES  # a file is rotated when the next line would take it past this
    keep: int = KEEP  # rotated files kept (PATH.1 ... PATH.keep)


def parse_audit(top: Section) -> AuditSettings | None:
    if not top.has("audit"):
        return None
    if not top.is_mapping("audit"):
        text = top.text("audit")
        return None if text is None else _settings(top, "audit", text, MAX_BYTES, KEEP)
    sec = top.section("audit")
    if sec is None:
        return None
    text = sec.text("path", required=True)
    max_bytes = sec.integer("max_bytes", MAX_BYTES, minimum=4096)
    keep = sec.integer("keep", KEEP, minimum=1)
    sec.finish()
    return None if text is None else _settings(sec, "path", text, max_bytes, keep)


def _settings(sec: Section, key: str, text: str, max_bytes: int, keep: int) -> AuditSettings | None:
    if text == "stderr":
        return AuditSettings(None, max_bytes, keep)
    if not text.strip():
        sec.error(key, "must be a file path or `stderr`")
        return None
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = sec.base_dir / path
    if not path.parent.is_dir():
        sec.error(key, f"{path.parent} is not a directory")
        return None
    return AuditSettings(path, max_bytes, keep)
