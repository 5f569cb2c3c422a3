"""Texts of the engine's Telegram notifications.

Every function returns plain text; ``TelegramNotifier.send`` escapes it.
Lines stay short and tables use fixed-width columns, so the summary reads
well on a phone when sent with ``monospace=True``.
"""

from __future__ import annotations

import datetime as dt
import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

STATUSES = ("succeeded", "skipped", "failed", "timed_out")
FAILED_STATUSES = ("failed", "timed_out")
# Width that fits a phone screen in a monospace font without scrolling.
LINE_WIDTH = 40
# Rows in each of the best and worst tables of the summary.
RANKED_ROWS = 5
HEAD_NAMES = {"xgboost": "XGB", "lightgbm": "LGB"}


def run_started_message(date: str | dt.date, symbols: Sequence[str], mode: str, limit: int) -> str:
    """Describe a starting run: the day, how many coins and which, the mode and the concurrency limit."""
    lines = [
        f"Engine run {_format_day(date)} started",
        f"Coins: {len(symbols)}",
        *_abbreviate(symbols, 30),
        f"Mode: {mode}, up to {limit} coin(s) at a time",
    ]
    return "\n".join(lines)


def coin_failed_message(symbol: str, status: str, attempts: int, reason: str | None) -> str:
    """Describe a coin that failed or timed out after its retries."""
    if status not in FAILED_STATUSES:
        raise ValueError(
            f"invalid status {status!r} for coin {symbol}: expected one of {', '.join(FAILED_STATUSES)}"
        )
    verb = "timed out" if status == "timed_out" else "failed"
    return f"{symbol} {verb} after {_attempts(attempts)}\nReason: {_shorten(reason, 1000)}"


def summary_message(summary: Mapping[str, Any]) -> str:
    """Describe a finished run from its ``engine_summary.json`` content.

    The text gives counts by status, the coins whose champion changed, the
    best and worst coins by Sharpe ratio after costs beside buy-and-hold,
    every skip and failure with its reason, and the duration. Returns are
    fractions in the summary (0.123 is shown as +12.3%). Missing fields are
    shown as ``n/a`` rather than raising, because a summary that cannot be
    formatted must not stop the notification.
    """
    coins = [coin for coin in summary.get("coins") or [] if isinstance(coin, Mapping)]
    sections = [
        _header_lines(summary, coins),
        _champion_lines(coins),
        _ranking_lines(coins),
        _reason_lines("Skipped", [coin for coin in coins if coin.get("status") == "skipped"]),
        _reason_lines("Failed", [coin for coin in coins if coin.get("status") in FAILED_STATUSES]),
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines)


def _header_lines(summary: Mapping[str, Any], coins: list[Mapping[str, Any]]) -> list[str]:
    counts = summary.get("counts")
    if not isinstance(counts, Mapping):
        counts = {status: sum(1 for coin in coins if coin.get("status") == status) for status in STATUSES}

    settings = [f"Duration {_format_duration(_duration_seconds(summary))}", str(summary.get("mode", "n/a"))]
    if summary.get("concurrency") is not None:
        settings.append(f"{summary['concurrency']} at a time")
    lines = [f"Engine run {summary.get('date', 'n/a')}: {len(coins)} coins", *_wrap(", ".join(settings))]
    if summary.get("cutoff"):
        lines.append(f"Cutoff {_format_time(summary['cutoff'])}")
    for status in STATUSES:
        lines.append(f"{status.replace('_', ' '):<10} {counts.get(status, 0):>5}")
    return lines


def _champion_lines(coins: list[Mapping[str, Any]]) -> list[str]:
    changed = [str(coin.get("symbol")) for coin in coins if coin.get("champion_changed")]
    if not changed:
        return ["Champions changed: none"]
    return [f"Champions changed: {len(changed)}", *_wrap(", ".join(changed))]


def _ranking_lines(coins: list[Mapping[str, Any]]) -> list[str]:
    scored = [coin for coin in coins if _finite(coin.get("sharpe_net"))]
    if not scored:
        return []
    ranked = sorted(scored, key=lambda coin: float(coin["sharpe_net"]), reverse=True)
    width = max(7, *(len(str(coin.get("symbol"))) for coin in ranked))
    legend = "SR: annualized Sharpe. B&H: buy-and-hold"
    if len(ranked) <= 2 * RANKED_ROWS:
        return ["After costs, by Sharpe", *_table(ranked, width), legend]
    return [
        f"Best {RANKED_ROWS} after costs, by Sharpe",
        *_table(ranked[:RANKED_ROWS], width),
        "",
        f"Worst {RANKED_ROWS} after costs",
        *_table(ranked[-RANKED_ROWS:], width),
        legend,
    ]


def _table(coins: list[Mapping[str, Any]], width: int) -> list[str]:
    rows = [f"{'coin':<{width}} {'head':<4} {'net':>7} {'SR':>5} {'B&H':>7} {'SR':>5}"]
    for coin in coins:
        head = HEAD_NAMES.get(str(coin.get("head")), str(coin.get("head") or "n/a"))
        rows.append(
            f"{str(coin.get('symbol')):<{width}} {head:<4} "
            f"{_percent(coin.get('total_return_net')):>7} {_ratio(coin.get('sharpe_net')):>5} "
            f"{_percent(coin.get('buy_and_hold_return')):>7} {_ratio(coin.get('buy_and_hold_sharpe')):>5}"
        )
    return rows


def _reason_lines(title: str, coins: list[Mapping[str, Any]]) -> list[str]:
    if not coins:
        return []
    lines = [f"{title}: {len(coins)}"]
    for coin in coins:
        status = str(coin.get("status"))
        label = str(coin.get("symbol"))
        if status in FAILED_STATUSES:
            verb = "timed out" if status == "timed_out" else "failed"
            label = f"{label} {verb}, {_attempts(coin.get('attempts'))}"
        lines.append(f"- {label}: {_shorten(coin.get('reason'), 200)}")
    return lines


def _format_day(date: str | dt.date) -> str:
    if isinstance(date, dt.date):
        return date.strftime("%Y-%m-%d")
    return str(date)


def _format_time(value: Any) -> str:
    try:
        moment = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _duration_seconds(summary: Mapping[str, Any]) -> float | None:
    if _finite(summary.get("duration_seconds")):
        return float(summary["duration_seconds"])
    try:
        started = dt.datetime.fromisoformat(str(summary["started_at"]))
        finished = dt.datetime.fromisoformat(str(summary["finished_at"]))
        return (finished - started).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def _format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _percent(value: Any) -> str:
    return f"{value * 100:+.1f}%" if _finite(value) else "n/a"


def _ratio(value: Any) -> str:
    return f"{value:.2f}" if _finite(value) else "n/a"


def _attempts(count: Any) -> str:
    if not isinstance(count, int):
        return "n/a attempts"
    return "1 attempt" if count == 1 else f"{count} attempts"


def _shorten(reason: Any, limit: int) -> str:
    """Return ``reason`` on one line, cut to ``limit`` characters with an ellipsis."""
    if reason is None or not str(reason).strip():
        return "no reason given"
    text = " ".join(str(reason).split())
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _abbreviate(items: Sequence[str], max_names: int) -> list[str]:
    """Return wrapped lines naming the first ``max_names`` items and counting the rest."""
    names = [str(item) for item in items]
    if not names:
        return []
    lines = _wrap(", ".join(names[:max_names]))
    if len(names) > max_names:
        lines.append(f"and {len(names) - max_names} more")
    return lines


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, LINE_WIDTH, break_long_words=False, break_on_hyphens=False) or [""]
