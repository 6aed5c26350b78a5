"""Access lines: the same bytes however they are made (accesslog.py builds them the cheap way).

A line written by the direct path (no LogRecord, one write per loop turn) is
the line a LogRecord through the formatter gives; the JSON line is the
record's fields in order but ``audit``, as ``dataclasses.asdict`` gave them;
shared-stderr batches are whole lines of at most PIPE_BUF bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import select
from collections.abc import Iterator
from dataclasses import asdict

import pytest

from authproxy.ops import accesslog
from authproxy.ops.accesslog import AccessRecord, json_line, text_line


def _records(seed: int, n: int) -> list[AccessRecord]:
    r = random.Random(seed)
    return [
        AccessRecord(
            method=r.choice(["GET", "POST", "-", "CONNECT"]),
            mode=r.choice(["plain", "intercept", "gateway"]),
            host=r.choice(["api.example:443", "-", "exämple.com"]),
            path=r.choice(["/", "/a%20b", "-", "/☃"]),
            route=r.choice(["a", None, "*"]),
            status=r.choice([0, 200, 407, 502]),
            bytes_in=r.randint(0, 9),
            bytes_out=r.randint(0, 99999),
            ms=r.choice([0.0, 0.05, 0.15, 0.25, 2.5e6, r.random() * 100]),
            token=r.choice(["none", "fresh", "refreshed"]),
            retry=r.choice([None, "done", "skipped", "nonce"]),
            error=r.choice([None, "upstream_unreachable"]),
            note=r.choice([None, "unverified-tls"]),
            scrubbed=r.choice([0, 5]),
            audit=r.choice([None, {"credential": "bearer"}]),
        )
        for _ in range(n)
    ]


def test_the_json_line_is_every_field_in_order_but_audit() -> None:
    for rec in _records(1, 500):
        data = {"time": "T", **asdict(rec)}
        data["ms"] = round(rec.ms, 1)
        del data["audit"]
        assert json_line(rec, "T") == json.dumps(data)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup() rewires the process's loggers: put them back for the tests that follow."""
    ours, root = logging.getLogger("authproxy"), logging.getLogger()
    saved = (ours.handlers[:], ours.level, ours.propagate, root.handlers[:], accesslog._direct)
    yield
    ours.handlers[:], ours.level, ours.propagate, root.handlers[:], accesslog._direct = saved


def _unstamped(line: str, fmt: str) -> str:
    """The line but its timestamp (the two ways of writing it may straddle a second)."""
    if fmt == "json":
        data = json.loads(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", data.pop("time"))
        return json.dumps(data)
    stamp, rest = line.split(" ", 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", stamp)
    return rest


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_the_direct_path_writes_what_the_formatter_writes_once_per_turn(
    fmt: str, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    records = _records(2, 60)
    accesslog.setup(fmt)
    sink = accesslog._direct
    assert sink is not None  # nothing else listens: the direct path
    for rec in records:
        accesslog.emit(rec)
    assert capsys.readouterr().err == ""  # queued until the turn ends
    await asyncio.sleep(0)
    direct = capsys.readouterr().err
    formatter = sink.formatter
    assert isinstance(formatter, (accesslog.TextFormatter, accesslog.JsonFormatter))
    via_record = []
    for rec in records:
        record = logging.LogRecord("authproxy.access", logging.INFO, __file__, 0, "access", None, None)
        record.__dict__["access"] = rec
        via_record.append(formatter.format(record))
    assert direct.endswith("\n")
    lines = direct[:-1].split("\n")
    assert [_unstamped(x, fmt) for x in lines] == [_unstamped(x, fmt) for x in via_record]
    line = text_line if fmt == "text" else json_line
    stamp = "2000-01-01T00:00:00" + ("+0000" if fmt == "json" else "")
    assert [_unstamped(line(rec, stamp), fmt) for rec in records] == [_unstamped(x, fmt) for x in lines]


async def test_a_message_is_written_at_once_after_the_lines_queued_before_it(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    accesslog.setup("text")
    rec = _records(3, 1)[0]
    accesslog.emit(rec)
    logging.getLogger("authproxy.test").warning("two\nlines")
    err = capsys.readouterr().err
    first, second, third = err[:-1].split("\n")
    assert first.endswith(text_line(rec, "")[1:])
    assert second.endswith(" warning two") and third == "lines"


def test_shared_stderr_pieces_are_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    r = random.Random(4)
    lines = ["é" * r.randint(0, 900) + "x" for _ in range(300)] + ["y" * (select.PIPE_BUF + 5)]
    pieces = accesslog._pieces(lines)
    assert "".join(pieces) == "\n".join(lines) + "\n"
    for piece in pieces:
        assert piece.endswith("\n")
        size = len(piece.encode())
        assert size <= select.PIPE_BUF or piece.count("\n") == 1
