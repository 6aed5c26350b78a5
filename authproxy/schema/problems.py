"""Configuration problems, collected rather than raised one at a time.

A user fixing a config wants every mistake in one run, each with the file,
the YAML path (``routes[2].auth.token_url``) and the line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True)
class Problem:
    severity: Literal["error", "warning"]
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.located()}"

    def located(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '(top)'}: {self.message}"


@dataclass(slots=True)
class Problems:
    file: str
    items: list[Problem] = field(default_factory=list)

    def error(self, path: str, line: int | None, message: str) -> None:
        self.items.append(Problem("error", self.file, line, path, message))

    def warn(self, path: str, line: int | None, message: str) -> None:
        self.items.append(Problem("warning", self.file, line, path, message))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.severity == "warning"]


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
