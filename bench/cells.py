"""The report's building blocks: medians, number formats, a target's rows and label, notes."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness import Bench


def med(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def ratio(v: float | None, base: float | None, spec: str) -> str:
    return fmt(v / base if v is not None and base else None, spec)


def rss_cell(rows: list[dict[str, Any]]) -> str:
    """Median peak RSS, and in brackets its median growth over the RSS the run started with."""
    peak = med(rows, "peak_rss_mb")
    growth = [r["peak_rss_mb"] - r["start_rss_mb"] for r in rows if "start_rss_mb" in r]
    return "-" if peak is None else f"{peak:.1f} ({statistics.median(growth):+.1f})" if growth else f"{peak:.1f}"


def pick(results: list[dict[str, Any]], scenario: str, target: str) -> list[dict[str, Any]]:
    return [r for r in results if r["scenario"] == scenario and r["target"] == target]


def ok_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "failed" not in r]


def errs_cell(rows: list[dict[str, Any]], download: bool = False) -> str:
    if download:
        return " / ".join("FAILED" if "failed" in r else str(r["errors"]) for r in rows)
    return " / ".join("FAILED" if "failed" in r else f"{r['errors']} + {r['non2xx']}" for r in rows)


def add_notes(notes: list[str], rows: list[dict[str, Any]], what: str) -> None:
    notes += [
        f"- {what}, {r['target']}, round {r['rep'] + 1}: {r.get('failed') or r['error_detail']}"
        for r in rows
        if r.get("failed") or r.get("error_detail")
    ]


def label(b: Bench, name: str, scenario: str) -> str:
    """A target's row label in a scenario's table."""
    t = b.targets[name]
    if scenario == "small_tls":
        return "direct (hey)" if not t.is_proxy else f"{t.display} (hey -x)"
    if scenario == "download_tls" and t.insecure:
        return f"{t.display} (curl -k)"
    return t.display
