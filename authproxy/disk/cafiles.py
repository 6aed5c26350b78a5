"""The local CA's two files, and the error that says which of them cannot be used.

Shared by ``ca.py`` (checks at start, without cryptography) and ``cakeys.py``
(parsing and minting, with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class CAError(Exception):
    """The CA cannot be created or loaded; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class CAFiles:
    cert: Path
    key: Path


def why(exc: BaseException) -> str:
    """What is wrong with a CA file, in a few words."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return "not a PEM certificate or unencrypted key"
