"""What one bench run measured, gathered as it goes: what the report renders and results.json keeps."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

Rows = list[dict[str, Any]]


@dataclass
class Measured:
    command: str
    started: datetime.datetime
    facts: dict[str, Any] = field(default_factory=dict)
    results: Rows = field(default_factory=list)  # every load and download run, the scaling levels too
    runs: Rows = field(default_factory=list)  # one line per target and round: start, checks, stop
    cold: Rows = field(default_factory=list)
    idle: Rows = field(default_factory=list)
    refresh: Rows = field(default_factory=list)
