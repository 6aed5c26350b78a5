"""Regenerate the ``--help`` blocks of docs/commands.md from the real command line.

Each block sits between ``<!-- help: COMMAND -->`` and ``<!-- /help -->`` and is the
output of ``authproxy COMMAND --help`` (``authproxy --help`` for ``authproxy``), run
from this checkout at a fixed width so the text does not depend on the terminal.
The prose around the blocks is left alone.

    python3 scripts/docs.py          # rewrite docs/commands.md
    python3 scripts/docs.py --check  # exit 1 and show the diff when it is stale (CI)
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ROOT / "docs" / "commands.md"
WIDTH = "100"
_BLOCK = re.compile(r"(<!-- help: ([a-z-]+) -->\n)(.*?)(<!-- /help -->)", re.S)


def help_text(command: str) -> str:
    """What ``authproxy COMMAND --help`` prints, from this checkout's code."""
    args = ["--help"] if command == "authproxy" else [command, "--help"]
    env = {**os.environ, "COLUMNS": WIDTH, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "authproxy", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout


def generate(text: str) -> str:
    """``text`` with every help block replaced by the command's current ``--help``."""

    def block(m: re.Match[str]) -> str:
        return f"{m.group(1)}```text\n{help_text(m.group(2)).rstrip()}\n```\n{m.group(4)}"

    return _BLOCK.sub(block, text)


def main(argv: list[str]) -> int:
    current = COMMANDS.read_text()
    fresh = generate(current)
    if "--check" in argv:
        if fresh == current:
            return 0
        diff = difflib.unified_diff(current.splitlines(True), fresh.splitlines(True), "docs/commands.md", "generated")
        sys.stdout.writelines(diff)
        print("docs/commands.md is stale: run python3 scripts/docs.py", file=sys.stderr)
        return 1
    COMMANDS.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
