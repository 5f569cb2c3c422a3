"""Candle checks: repair what is safe to repair, reject what is not, and report both.

``validate_candles`` takes a frame from ``read_candles`` and returns it sorted by
date with unique dates and only valid rows, plus a ``CandleReport`` that counts
every finding. Missing candles are not filled: a gap stays a run of absent rows,
and the features layer puts the candles on a regular grid with NaN there.

Rules, in the order they are applied:

1. Wrong timeframe: the median spacing of the distinct timestamps must equal the
   timeframe, else the data is unusable (5-minute candles read as hourly ones).
2. Invalid rows are dropped. Each is counted under the first reason it meets,
   in the order of ``DROP_REASONS``. An open time off the timeframe boundary is
   one that is not a whole number of timeframes after 1970-01-01 00:00 UTC.
3. High and low that do not enclose open and close are repaired by widening them
   to the open and close: both are traded prices, so the true range includes them.
4. Exact duplicate rows are dropped (the first copy is kept).
5. Unsorted rows are sorted (a stable sort by date). A row counts as unsorted
   when it is earlier than a row before it.
6. Rows that share a timestamp but differ in values: the row with the highest
   volume is kept, ties broken by the highest close, then high, open and low.
   The rule depends only on the values, never on file order. Volume goes first
   because a candle fetched while still open has less volume than the final one.
7. If the rows dropped in steps 2 and 6 exceed ``max_dropped_share`` of the rows
   read, the data is unusable. Exact duplicates do not count: they lose nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine_assets.data.loading import (
    CANDLE_COLUMNS,
    CandleSourceNotFoundError,
    find_candle_sources,
    read_candles,
)
from engine_assets.settings import TIMEFRAME_SECONDS
from engine_assets.symbols import validate_symbol

logger = logging.getLogger(__name__)

PRICE_COLUMNS = ["open", "high", "low", "close"]
# Above this share of rows dropped as invalid or conflicting, the file is more
# likely broken than noisy, and a model trained on the rest would mislead.
MAX_DROPPED_SHARE = 0.05
# Tie-break order among rows with one timestamp and different values (step 6).
CONFLICT_ORDER = ["volume", "close", "high", "open", "low"]
# How many conflicting timestamps and gaps are spelled out in findings and to_dict().
MAX_LISTED = 50
# Reasons for dropping a row, checked in this order, with their text in findings.
DROP_REASONS = {
    "non_finite_price": "NaN or infinite open, high, low or close",
    "non_positive_price": "open, high, low or close at or below zero",
    "invalid_volume": "NaN, infinite or negative volume",
    "off_timeframe_boundary": "open time off the timeframe boundary",
    "high_below_low": "high below low",
}


class CandleDataError(ValueError):
    """Candles of one coin that cannot be used, with the reason."""

    def __init__(self, symbol: str, source: str, reason: str) -> None:
        self.symbol = symbol
        self.source = source
        self.reason = reason
        super().__init__(f"{symbol} candles from {source} are unusable: {reason}")


@dataclasses.dataclass(frozen=True)
class CandleGap:
    """A run of missing candles: the first missing open time and how many are missing."""

    first_missing: pd.Timestamp
    missing_candles: int

    def describe(self) -> str:
        noun = "candle" if self.missing_candles == 1 else "candles"
        return f"{_format_time(self.first_missing)}, {self.missing_candles} {noun} missing"


@dataclasses.dataclass
class CandleReport:
    """Findings of validate_candles in one coin's candles, with counts.

    ``severity`` is "ok" when the valid rows equal the rows read in file order,
    and "repaired" when rows were sorted, dropped or changed. Gaps do not change
    the severity because nothing is repaired there.
    """

    symbol: str
    source: str
    timeframe_seconds: int
    rows_read: int
    rows_valid: int = 0
    first: pd.Timestamp | None = None
    last: pd.Timestamp | None = None
    duplicates_exact: int = 0
    # Rows dropped because another row with the same timestamp won (rule 6).
    duplicates_conflicting: int = 0
    conflicting_timestamps: list[pd.Timestamp] = dataclasses.field(default_factory=list)
    unsorted_rows: int = 0
    dropped_invalid: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(DROP_REASONS, 0)
    )
    repaired_high_low: int = 0
    gaps: list[CandleGap] = dataclasses.field(default_factory=list)
    missing_candles: int = 0
    findings: list[str] = dataclasses.field(default_factory=list)

    @property
    def rows_dropped(self) -> int:
        """Rows dropped as invalid or as the losing side of a conflict."""
        return sum(self.dropped_invalid.values()) + self.duplicates_conflicting

    @property
    def severity(self) -> str:
        changed = (
            self.unsorted_rows
            or self.duplicates_exact
            or self.duplicates_conflicting
            or self.repaired_high_low
            or any(self.dropped_invalid.values())
        )
        return "repaired" if changed else "ok"

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-safe values; times are ISO 8601 UTC strings.

        Only the first MAX_LISTED gaps and conflicting timestamps are listed;
        ``gap_count`` and ``missing_candles`` always cover all of them.
        """
        return {
            "symbol": self.symbol,
            "source": self.source,
            "timeframe_seconds": self.timeframe_seconds,
            "severity": self.severity,
            "rows_read": self.rows_read,
            "rows_valid": self.rows_valid,
            "first": _iso(self.first),
            "last": _iso(self.last),
            "duplicates_exact": self.duplicates_exact,
            "duplicates_conflicting": self.duplicates_conflicting,
            "conflicting_timestamps": [_iso(ts) for ts in self.conflicting_timestamps[:MAX_LISTED]],
            "unsorted_rows": self.unsorted_rows,
            "dropped_invalid": dict(self.dropped_invalid),
            "repaired_high_low": self.repaired_high_low,
            "gap_count": len(self.gaps),
            "gaps": [
                {"first_missing": _iso(gap.first_missing), "missing_candles": gap.missing_candles}
                for gap in self.gaps[:MAX_LISTED]
            ],
            "missing_candles": self.missing_candles,
            "findings": list(self.findings),
        }

    def summary(self) -> str:
        """Return one line: coin, source, rows, date range, gaps and severity."""
        span = "no rows"
        if self.first is not None:
            span = f"{_format_time(self.first)} to {_format_time(self.last)}"
        return (
            f"{self.symbol} ({self.source}): {self.rows_read} rows read, {self.rows_valid} valid, {span}, "
            f"{len(self.gaps)} gaps ({self.missing_candles} candles missing), "
            f"{self.rows_dropped} dropped, {self.severity}"
        )


def validate_candles(
    raw: pd.DataFrame,
    symbol: str,
    timeframe_seconds: int,
    source_name: str,
    max_dropped_share: float = MAX_DROPPED_SHARE,
) -> tuple[pd.DataFrame, CandleReport]:
    """Check and repair one coin's candles; see the module docstring for the rules.

    Returns the valid rows, sorted by date with unique dates and a fresh index,
    and the report. Raises CandleDataError when the data is unusable.
    """
    if timeframe_seconds <= 0:
        raise ValueError(
            f"invalid timeframe_seconds={timeframe_seconds}: expected a positive number of seconds"
        )
    missing = [column for column in CANDLE_COLUMNS if column not in raw.columns]
    if missing:
        raise CandleDataError(symbol, source_name, f"missing columns {missing} (found: {list(raw.columns)})")

    report = CandleReport(
        symbol=symbol, source=source_name, timeframe_seconds=timeframe_seconds, rows_read=len(raw)
    )
    if raw.empty:
        raise CandleDataError(symbol, source_name, "no rows")

    frame = raw.loc[:, list(CANDLE_COLUMNS)].reset_index(drop=True).copy()
    frame["date"] = pd.to_datetime(frame["date"], utc=True).astype("datetime64[ns, UTC]")
    if frame["date"].isna().any():
        # read_candles never yields NaT; a frame built elsewhere might.
        raise CandleDataError(symbol, source_name, f"{int(frame['date'].isna().sum())} rows have no date")
    for column in CANDLE_COLUMNS[1:]:
        frame[column] = frame[column].astype(np.float64)

    _check_timeframe(frame, report, timeframe_seconds)
    frame = _drop_invalid_rows(frame, report, timeframe_seconds)
    if frame.empty:
        raise CandleDataError(symbol, source_name, f"no valid rows ({_describe_drops(report)})")
    _repair_high_low(frame, report)
    frame = _drop_exact_duplicates(frame, report)
    frame = _sort_by_date(frame, report)
    frame = _resolve_conflicts(frame, report)

    dropped_share = report.rows_dropped / report.rows_read
    if dropped_share > max_dropped_share:
        raise CandleDataError(
            symbol,
            source_name,
            f"{report.rows_dropped} of {report.rows_read} rows ({dropped_share:.1%}) "
            "are invalid or conflicting, "
            f"more than the {max_dropped_share:.0%} that can be dropped safely ({_describe_drops(report)}); "
            "download the candles again",
        )

    report.rows_valid = len(frame)
    report.first = frame["date"].iloc[0]
    report.last = frame["date"].iloc[-1]
    _find_gaps(frame, report, timeframe_seconds)
    report.findings = _describe_findings(report)
    if report.severity != "ok" or report.gaps:
        logger.info("candle check: %s", report.summary())
    return frame, report


def _check_timeframe(frame: pd.DataFrame, report: CandleReport, timeframe_seconds: int) -> None:
    # Spacing of the distinct sorted timestamps, taken before any row is dropped, so
    # that 5-minute data read as hourly fails here and not as 92% off-boundary rows.
    # NOTE: data of the right timeframe with more than half of its candles missing
    # also fails this check, because its median spacing is two steps or more.
    times = np.unique(frame["date"].to_numpy(dtype="datetime64[ns]").astype(np.int64))
    if len(times) < 2:
        return
    median_seconds = float(np.median(np.diff(times))) / 1e9
    if median_seconds != timeframe_seconds:
        raise CandleDataError(
            report.symbol,
            report.source,
            f"wrong timeframe: median spacing {median_seconds:g} s, expected {timeframe_seconds} s; "
            "check that the file contains candles of the requested timeframe",
        )


def _drop_invalid_rows(frame: pd.DataFrame, report: CandleReport, timeframe_seconds: int) -> pd.DataFrame:
    prices = frame[PRICE_COLUMNS].to_numpy()
    volume = frame["volume"].to_numpy()
    epoch_ns = frame["date"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    # Each row is counted under the first check it fails, because `remaining`
    # excludes the rows that an earlier check already dropped.
    checks = {
        "non_finite_price": ~np.isfinite(prices).all(axis=1),
        "non_positive_price": (prices <= 0).any(axis=1),
        "invalid_volume": ~np.isfinite(volume) | (volume < 0),
        "off_timeframe_boundary": epoch_ns % (timeframe_seconds * 1_000_000_000) != 0,
        "high_below_low": frame["high"].to_numpy() < frame["low"].to_numpy(),
    }
    remaining = np.ones(len(frame), dtype=bool)
    for reason, failed in checks.items():
        hit = failed & remaining
        report.dropped_invalid[reason] = int(hit.sum())
        remaining &= ~hit
    return frame.loc[remaining].reset_index(drop=True)


def _repair_high_low(frame: pd.DataFrame, report: CandleReport) -> None:
    body_high = frame[["open", "close"]].max(axis=1)
    body_low = frame[["open", "close"]].min(axis=1)
    outside = (frame["high"] < body_high) | (frame["low"] > body_low)
    report.repaired_high_low = int(outside.sum())
    if report.repaired_high_low:
        frame["high"] = np.maximum(frame["high"], body_high)
        frame["low"] = np.minimum(frame["low"], body_low)


def _sort_by_date(frame: pd.DataFrame, report: CandleReport) -> pd.DataFrame:
    # Equal timestamps are conflicts, handled next, not unsorted rows.
    dates = frame["date"]
    report.unsorted_rows = int((dates < dates.cummax()).sum())
    if not report.unsorted_rows:
        return frame
    return frame.sort_values("date", kind="stable").reset_index(drop=True)


def _drop_exact_duplicates(frame: pd.DataFrame, report: CandleReport) -> pd.DataFrame:
    exact = frame.duplicated(keep="first")
    report.duplicates_exact = int(exact.sum())
    if not report.duplicates_exact:
        return frame
    return frame.loc[~exact].reset_index(drop=True)


def _resolve_conflicts(frame: pd.DataFrame, report: CandleReport) -> pd.DataFrame:
    shared = frame["date"].duplicated(keep=False)
    if not shared.any():
        return frame.reset_index(drop=True)
    report.conflicting_timestamps = sorted(frame.loc[shared, "date"].unique())
    # Sort so that the winner of each timestamp comes first, then keep it. The sort
    # keys are all values of the row, so the outcome does not depend on file order.
    ordered = frame.sort_values(["date", *CONFLICT_ORDER], ascending=[True] + [False] * len(CONFLICT_ORDER))
    winners = ordered.loc[~ordered["date"].duplicated(keep="first")]
    report.duplicates_conflicting = len(frame) - len(winners)
    return winners.reset_index(drop=True)


def _find_gaps(frame: pd.DataFrame, report: CandleReport, timeframe_seconds: int) -> None:
    step = pd.Timedelta(seconds=timeframe_seconds)
    dates = frame["date"]
    spacing = dates.diff()
    for position in np.flatnonzero((spacing > step).to_numpy()):
        previous = dates.iloc[position - 1]
        # Every kept timestamp is on the timeframe boundary, so the spacing is a
        # whole number of steps.
        missing = int(spacing.iloc[position] / step) - 1
        report.gaps.append(CandleGap(first_missing=previous + step, missing_candles=missing))
    report.missing_candles = sum(gap.missing_candles for gap in report.gaps)


def _describe_drops(report: CandleReport) -> str:
    parts = [f"{DROP_REASONS[reason]}: {count}" for reason, count in report.dropped_invalid.items() if count]
    if report.duplicates_conflicting:
        parts.append(f"conflicting duplicates: {report.duplicates_conflicting}")
    return ", ".join(parts) if parts else "nothing dropped"


def _describe_findings(report: CandleReport) -> list[str]:
    lines = []
    if report.unsorted_rows:
        lines.append(f"{report.unsorted_rows} rows out of date order, sorted")
    if report.duplicates_exact:
        lines.append(f"{report.duplicates_exact} exact duplicate rows dropped")
    if report.duplicates_conflicting:
        listed = ", ".join(_format_time(ts) for ts in report.conflicting_timestamps[:5])
        more = len(report.conflicting_timestamps) - 5
        suffix = f" and {more} more" if more > 0 else ""
        lines.append(
            f"{report.duplicates_conflicting} rows dropped at "
            f"{len(report.conflicting_timestamps)} timestamps "
            f"with conflicting values, kept the row with the highest volume: {listed}{suffix}"
        )
    for reason, count in report.dropped_invalid.items():
        if count:
            lines.append(f"{count} rows dropped: {DROP_REASONS[reason]}")
    if report.repaired_high_low:
        lines.append(f"{report.repaired_high_low} rows with high/low not enclosing open/close, widened")
    for gap in report.gaps[:MAX_LISTED]:
        lines.append(f"gap: {gap.describe()}")
    if len(report.gaps) > MAX_LISTED:
        lines.append(f"... and {len(report.gaps) - MAX_LISTED} more gaps")
    return lines


def _format_time(timestamp: pd.Timestamp | None) -> str:
    if timestamp is None:
        return "none"
    return timestamp.tz_convert("UTC").strftime("%Y-%m-%d %H:%M UTC")


def _iso(timestamp: pd.Timestamp | None) -> str | None:
    if timestamp is None:
        return None
    return pd.Timestamp(timestamp).tz_convert("UTC").isoformat()


def load_symbol_candles(
    data_dir: str | os.PathLike, symbol: str, timeframe: str
) -> tuple[pd.DataFrame, CandleReport]:
    """Find, read and validate the candles of one symbol.

    Raises CandleSourceNotFoundError when no file exists for the symbol,
    CandleFileError when the file cannot be read and CandleDataError when its
    candles are unusable.
    """
    validate_symbol(symbol)
    if timeframe not in TIMEFRAME_SECONDS:
        raise ValueError(f"invalid timeframe {timeframe!r}: expected one of {', '.join(TIMEFRAME_SECONDS)}")
    sources = find_candle_sources(data_dir, timeframe)
    if symbol not in sources:
        raise CandleSourceNotFoundError(
            f"no candle file for symbol {symbol} and timeframe {timeframe} in {Path(data_dir)}; "
            f"expected a file such as {symbol}-{timeframe}-YYYY-MM.csv or BASE_QUOTE-{timeframe}.feather "
            f"({len(sources)} symbols found)"
        )
    source = sources[symbol]
    raw = read_candles(source)
    return validate_candles(raw, symbol, TIMEFRAME_SECONDS[timeframe], source.name)
