"""The token store: atomic writes, two processes at once, and a kill -9 mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from authproxy.disk.store import StateStore

ROOT = Path(__file__).resolve().parents[1]


def _checkout_env() -> dict[str, str]:
    """A script's own folder comes first on its sys.path: point it at this checkout's authproxy."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

WRITER = r"""
import asyncio, sys
from pathlib import Path
from authproxy.disk.store import StateStore

async def main(state: str, me: str, rounds: int) -> None:
    store = StateStore(Path(state))
    for i in range(rounds):
        # The read-modify-write that a refresh does, under the route's lock.
        async with store.locked("shared"):
            rec = store.read("shared") or {"n": 0, "log": []}
            rec["n"] += 1
            rec["log"].append(f"{me}-{i}")
            rec["pad"] = "x" * 20000  # big enough that a torn write would show
            store.write("shared", rec)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_two_processes_write_without_losing_an_update(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = _checkout_env()
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / "st"), name, "150"], env=env)
        for name in ("a", "b")
    ]
    for p in procs:
        assert p.wait(120) == 0
    rec = StateStore(tmp_path / "st").read("shared")
    assert rec is not None
    assert rec["n"] == 300  # every read-modify-write saw the one before it
    assert sorted(rec["log"]) == sorted([f"a-{i}" for i in range(150)] + [f"b-{i}" for i in range(150)])
    mode = (tmp_path / "st" / "tokens" / "shared.json").stat().st_mode & 0o777
    assert mode == 0o600
    assert (tmp_path / "st" / "tokens").stat().st_mode & 0o777 == 0o700


KILLED = r"""
import sys
from pathlib import Path
from authproxy.disk.store import StateStore

store = StateStore(Path(sys.argv[1]))
i = 0
while True:
    i += 1
    store.write("route", {"refresh_token": f"rt-{i}", "pad": "y" * 200000})
    print(i, flush=True)
"""


def test_kill_9_during_writes_keeps_the_last_good_file(tmp_path: Path) -> None:
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    for attempt in range(5):
        p = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "st")], stdout=subprocess.PIPE, text=True, env=_checkout_env()
        )
        assert p.stdout is not None
        written = 0
        deadline = time.monotonic() + 20
        while written < 20 + attempt * 7 and time.monotonic() < deadline:
            written = int(p.stdout.readline())
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        rec = StateStore(tmp_path / "st").read("route")
        assert rec is not None, "the store lost its last good file"
        assert rec["refresh_token"].startswith("rt-")
        assert int(rec["refresh_token"][3:]) >= written  # at least the last one reported done
        # And the file parses as a whole: no torn write.
        json.loads((tmp_path / "st" / "tokens" / "route.json").read_text())


def test_corrupt_file_is_reported_and_treated_as_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path / "st")
    store.write("r", {"refresh_token": "secret-rt-value-0001"})
    path = tmp_path / "st" / "tokens" / "r.json"
    path.write_text('{"version": 1, "data": {"refresh_token": "secret-rt-value-0001"')  # cut short
    with caplog.at_level("WARNING", logger="authproxy.store"):
        assert store.read("r") is None
    assert "corrupt" in caplog.text
    assert "secret-rt-value-0001" not in caplog.text
    assert not path.exists() and any(p.name.startswith("r.json.corrupt-") for p in path.parent.iterdir())
    store.write("r", {"refresh_token": "new"})
    assert store.read("r") == {"refresh_token": "new"}
