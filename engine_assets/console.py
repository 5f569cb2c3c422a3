"""Console output of ``engine train``: progress lines and the closing summary table."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _pct(value) -> str:
    return "-" if value is None else f"{value * 100:+.1f}%"


def _num(value) -> str:
    return "-" if value is None else f"{value:+.2f}"


class Console:
    """Writes timestamped progress lines to a stream (standard output by default)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.stream.write(f"[{elapsed:7.1f}s] {text}\n")
        self.stream.flush()


def summary_table(summary: dict) -> str:
    """Render the day's summary as a fixed-width table, one row per coin."""
    headers = ["coin", "status", "head", "Sharpe net", "return net", "B&H return", "B&H Sharpe", "champion", "reason"]

    rows = []
    for coin in summary.get("coins", []):
        champion = "-"
        if coin["status"] == "succeeded" and coin.get("champion_changed"):
            champion = "changed"
        elif coin["status"] == "succeeded":
            # A challenger that fails the guards leaves a coin without a champion on its first day.
            champion = "kept" if coin.get("champion") else "none"
        rows.append(
            [
                coin["symbol"],
                coin["status"],
                coin.get("head") or "-",
                _num(coin.get("sharpe_net")),
                _pct(coin.get("total_return_net")),
                _pct(coin.get("buy_and_hold_return")),
                _num(coin.get("buy_and_hold_sharpe")),
                champion,
                (coin.get("reason") or "")[:90] if coin["status"] != "succeeded" else "",
            ]
        )

    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(value).ljust(width) for value, width in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        lines.append("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())

    counts = summary.get("counts", {})
    order = ["succeeded", "skipped", "failed", "timed_out"]
    statuses = order + sorted(set(counts) - set(order))
    totals = ", ".join(f"{counts[status]} {status}" for status in statuses if counts.get(status))
    lines.append("")
    lines.append(f"{len(rows)} coins: {totals or 'none'}")
    return "\n".join(lines)
