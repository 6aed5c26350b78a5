"""Paths a config names: relative to the config file's folder, and readable now.

One rule for every file a key names (a CA, a client certificate, a key), so
`check` reports a missing or unreadable one the same way wherever it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from authproxy.schema.yamlreader import Section


def readable_file(sec: Section, key: str) -> Path | None:
    """The file ``key`` names, relative to the config file's folder; None (and a problem) when it cannot be read."""
    text = sec.text(key)
    if text is None:
        return None
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = sec.base_dir / path
    if not path.is_file() or not os.access(path, os.R_OK):
        sec.error(key, f"{path} is not a readable file")
        return None
    return path
