"""Train, validation and holdout windows from one cutoff per run.

All windows are half-open, ``[start, end)``, over candle open times: a row
with index t belongs to a window when ``start <= t < end``. Counting back from
the cutoff::

    [train) purge [validation) purge [holdout) cutoff

The holdout ends at the cutoff rounded down to the timeframe, so its last row
is the last candle that has closed by the cutoff. Every window is a whole
number of candles long.

What the purge gap excludes: the ``purge_candles`` rows between train and
validation, and the ``purge_candles`` rows between validation and holdout,
belong to no window. No model trains on them and no metric is computed on
them. Their candles stay in the data. They are the targets of the labels of
the last rows before the gap, and the feature history of the rows after it.
Because the label at t reads close[t + h], a purge of at least the label
horizon h means no label of an earlier window reads a candle of a later
window.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_LABEL_HORIZON = 4
WINDOW_NAMES = ("train", "validation", "holdout")


class InsufficientHistoryError(ValueError):
    """A coin with too few candles before the cutoff to fill its windows."""


@dataclasses.dataclass(frozen=True)
class WindowConfig:
    """Window lengths in candles. ``purge_candles`` defaults to ``label_horizon``."""

    holdout_candles: int = 60 * 24
    validation_candles: int = 60 * 24
    purge_candles: int | None = None
    max_train_candles: int = 365 * 24
    min_train_candles: int = 2000
    label_horizon: int = DEFAULT_LABEL_HORIZON

    def __post_init__(self) -> None:
        if self.purge_candles is None:
            # A frozen dataclass sets a resolved default through object.__setattr__.
            object.__setattr__(self, "purge_candles", self.label_horizon)
        for name in (
            "holdout_candles",
            "validation_candles",
            "max_train_candles",
            "min_train_candles",
            "label_horizon",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"invalid WindowConfig.{name}={value!r}: expected a positive number of candles"
                )
        if isinstance(self.purge_candles, bool) or not isinstance(self.purge_candles, int):
            raise ValueError(
                f"invalid WindowConfig.purge_candles={self.purge_candles!r}: expected a number of candles"
            )
        if self.purge_candles < self.label_horizon:
            raise ValueError(
                f"invalid WindowConfig.purge_candles={self.purge_candles}: "
                f"it must be at least the label horizon ({self.label_horizon} candles), "
                "or labels of one window would read candles of the next"
            )
        if self.min_train_candles > self.max_train_candles:
            raise ValueError(
                f"invalid WindowConfig.min_train_candles={self.min_train_candles}: "
                f"it exceeds max_train_candles={self.max_train_candles}"
            )


@dataclasses.dataclass(frozen=True)
class Windows:
    """Start and end (exclusive) of each window as UTC timestamps, and the purge in candles."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    validation_start: pd.Timestamp
    validation_end: pd.Timestamp
    holdout_start: pd.Timestamp
    holdout_end: pd.Timestamp
    purge: int
    timeframe_seconds: int

    @property
    def cutoff(self) -> pd.Timestamp:
        return self.holdout_end

    def bounds(self, name: str) -> tuple[pd.Timestamp, pd.Timestamp]:
        """Return the ``(start, end)`` of window ``name``: train, validation or holdout."""
        if name not in WINDOW_NAMES:
            raise ValueError(f"unknown window {name!r}: expected one of {', '.join(WINDOW_NAMES)}")
        return getattr(self, f"{name}_start"), getattr(self, f"{name}_end")

    def to_dict(self) -> dict:
        """Return the windows as JSON-safe values: ISO 8601 strings and whole numbers."""
        result: dict = {}
        for name in WINDOW_NAMES:
            start, end = self.bounds(name)
            result[f"{name}_start"] = start.isoformat()
            result[f"{name}_end"] = end.isoformat()
        result["purge"] = self.purge
        result["timeframe_seconds"] = self.timeframe_seconds
        result["end_exclusive"] = True
        return result


def _utc_timestamp(value) -> pd.Timestamp:
    timestamp = pd.Timestamp(value)
    if timestamp is pd.NaT:
        raise ValueError(f"invalid cutoff {value!r}: expected a timestamp")
    if timestamp.tzinfo is None:
        # A naive cutoff is read as UTC, the timezone of every candle.
        return timestamp.tz_localize("UTC")
    return timestamp.tz_convert("UTC")


def make_windows(
    cutoff: pd.Timestamp | dt.datetime | str,
    timeframe_seconds: int,
    config: WindowConfig | None = None,
) -> Windows:
    """Lay out train, purge, validation, purge and holdout, ending at the cutoff.

    The cutoff is rounded down to the timeframe, so a run at 00:15 ends its
    holdout before the candle that opens at 00:00, which has not closed yet.
    The train window is ``max_train_candles`` long; a coin with less history
    simply has fewer train rows (``check_history`` enforces the minimum).
    """
    config = config or WindowConfig()
    if timeframe_seconds <= 0:
        raise ValueError(
            f"invalid timeframe_seconds={timeframe_seconds}: expected a positive number of seconds"
        )
    step = pd.Timedelta(seconds=timeframe_seconds)
    holdout_end = _utc_timestamp(cutoff).floor(step)
    holdout_start = holdout_end - config.holdout_candles * step
    validation_end = holdout_start - config.purge_candles * step
    validation_start = validation_end - config.validation_candles * step
    train_end = validation_start - config.purge_candles * step
    train_start = train_end - config.max_train_candles * step
    return Windows(
        train_start=train_start,
        train_end=train_end,
        validation_start=validation_start,
        validation_end=validation_end,
        holdout_start=holdout_start,
        holdout_end=holdout_end,
        purge=config.purge_candles,
        timeframe_seconds=timeframe_seconds,
    )


def required_candles(window_config: WindowConfig, feature_lookback: int, encoder_window: int) -> int:
    """Return the candles a coin needs before the cutoff to fill every window at its minimum.

    That is the history for the first train row (the wider of the feature
    lookback and the encoder window, which counts candles up to and including
    t), the minimum train window, both purges, validation and holdout.
    """
    if feature_lookback < 0 or encoder_window < 1:
        raise ValueError(
            f"invalid feature_lookback={feature_lookback} or encoder_window={encoder_window}: "
            "expected a lookback >= 0 and a window >= 1 candle"
        )
    history = max(feature_lookback, encoder_window - 1)
    return (
        history
        + window_config.min_train_candles
        + 2 * window_config.purge_candles
        + window_config.validation_candles
        + window_config.holdout_candles
    )


def _row_times(frame: pd.DataFrame) -> pd.DatetimeIndex:
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise TypeError(
            "expected a frame indexed by candle open time (DatetimeIndex), "
            f"got {type(frame.index).__name__}: build it with features.build.to_grid"
        )
    return frame.index


def check_history(grid: pd.DataFrame, windows: Windows, required: int) -> int:
    """Raise InsufficientHistoryError unless the coin has ``required`` candles before the cutoff.

    Candles are the grid rows before ``windows.holdout_end`` with a close
    price, so missing candles do not count. Also raises when the coin has no
    candle in the holdout window, because then it cannot be scored. Returns
    the number of candles before the cutoff.
    """
    times = _row_times(grid)
    if "close" in grid.columns:
        present = grid["close"].notna().to_numpy()
    else:
        present = grid.notna().all(axis=1).to_numpy()
    before_cutoff = present & (times < windows.holdout_end)
    available = int(before_cutoff.sum())
    if available < required:
        raise InsufficientHistoryError(f"insufficient history: {available} candles, need {required}")
    in_holdout = before_cutoff & (times >= windows.holdout_start)
    if not in_holdout.any():
        last = times[present][-1].isoformat() if present.any() else "none"
        raise InsufficientHistoryError(
            f"insufficient history: no candle in the holdout window "
            f"[{windows.holdout_start.isoformat()}, {windows.holdout_end.isoformat()}), last candle {last}; "
            "update the coin's data or leave it out of the run"
        )
    return available


def split(frame: pd.DataFrame, windows: Windows) -> dict[str, pd.DataFrame]:
    """Return the rows of ``frame`` in each window, keyed train, validation and holdout.

    Rows in the purges, before the train window or at and after the cutoff
    are in no window.
    """
    times = _row_times(frame)
    parts: dict[str, pd.DataFrame] = {}
    for name in WINDOW_NAMES:
        start, end = windows.bounds(name)
        parts[name] = frame.loc[(times >= start) & (times < end)]
    return parts
