"""Features, labels and next-period returns from one coin's candles.

Every function here works on the regular grid made by ``to_grid``: one row per
candle open time from the first to the last candle, with all-NaN rows where the
exchange produced no candle. On that grid:

- a feature at t uses candles up to and including t, never after t;
- any feature whose window contains a missing candle is NaN, so no feature
  silently spans a gap;
- every feature is scale-free. Prices enter only through ratios (log returns,
  log(high/low), close relative to its moving average), so multiplying every
  price by a constant changes features only by float rounding. No step adds
  an absolute epsilon or rounds, so a coin priced around 1e-6 keeps full
  precision.

Rolling statistics are computed on explicit sliding windows (NumPy), not with
pandas' online rolling sums, so the value at t depends only on the rows in its
window and NaN anywhere in the window gives NaN.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

logger = logging.getLogger(__name__)

OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")

# Below this standard deviation (in log1p-volume units) a volume window counts
# as flat and its z-score is 0. NumPy's std of identical values can return a
# rounding residue around 1e-16 instead of 0, which would blow up the z-score.
_FLAT_LOG_VOLUME_STD = 1e-9


class NonFiniteFeatureError(ValueError):
    """A feature, label or return matrix that contains NaN or infinity where a model needs numbers."""

    def __init__(self, message: str, *, symbol: str, column: str, timestamp, value: float, count: int):
        super().__init__(message)
        self.symbol = symbol
        self.column = column
        self.timestamp = timestamp
        self.value = value
        self.count = count


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Feature windows and the label horizon, all counted in candles."""

    return_horizons: tuple[int, ...] = (1, 2, 4, 8, 12, 24, 48, 72)
    volatility_windows: tuple[int, ...] = (12, 24, 72, 168)
    moving_average_windows: tuple[int, ...] = (24, 72, 168)
    rsi_window: int = 14
    volume_windows: tuple[int, ...] = (24, 168)
    label_horizon: int = 4

    def __post_init__(self) -> None:
        for name in ("return_horizons", "volatility_windows", "moving_average_windows", "volume_windows"):
            windows = getattr(self, name)
            if not windows:
                raise ValueError(f"invalid FeatureConfig.{name}=(): expected at least one window")
            minimum = 1 if name == "return_horizons" else 2
            for window in windows:
                _check_window(f"FeatureConfig.{name}", window, minimum)
        _check_window("FeatureConfig.rsi_window", self.rsi_window, 2)
        _check_window("FeatureConfig.label_horizon", self.label_horizon, 1)


def _check_window(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"invalid {name}={value!r}: expected a whole number of candles, at least {minimum}")


def _feature_spans(config: FeatureConfig) -> dict[str, int]:
    """Map each feature column to its span: the candles its value at t reads, t included."""
    spans: dict[str, int] = {}
    for horizon in config.return_horizons:
        spans[f"ret_{horizon}"] = horizon + 1
    for window in config.volatility_windows:
        # ``window`` one-candle returns need one more candle than returns.
        spans[f"vol_{window}"] = window + 1
    for name in ("range_hl", "body", "upper_wick", "lower_wick", "close_pos"):
        spans[name] = 1
    for window in config.moving_average_windows:
        spans[f"ma_dist_{window}"] = window
    spans[f"rsi_{config.rsi_window}"] = config.rsi_window + 1
    for window in config.volume_windows:
        spans[f"volume_z_{window}"] = window
    return spans


def feature_names(config: FeatureConfig) -> list[str]:
    """Return the feature columns ``build_features`` produces for ``config``, in order."""
    return list(_feature_spans(config))


def feature_lookback(config: FeatureConfig) -> int:
    """Return how many candles before t the widest feature reads.

    On a gap-free grid, row ``feature_lookback(config)`` (0-based) is the first
    with every feature defined.
    """
    return max(_feature_spans(config).values()) - 1


def to_grid(candles: pd.DataFrame, timeframe_seconds: int) -> pd.DataFrame:
    """Place validated candles on the regular grid from the first to the last candle.

    ``candles`` has a ``date`` column (or a DatetimeIndex) of candle open times in
    UTC, on the timeframe boundary, without duplicates. The result is indexed by
    a UTC DatetimeIndex named ``date`` with the OHLCV columns as float64; a
    missing candle becomes an all-NaN row.
    """
    if timeframe_seconds <= 0:
        raise ValueError(
            f"invalid timeframe_seconds={timeframe_seconds}: expected a positive number of seconds"
        )
    missing = [column for column in OHLCV_COLUMNS if column not in candles.columns]
    if missing:
        raise ValueError(f"candle frame is missing columns {missing}: expected {list(OHLCV_COLUMNS)}")

    if "date" in candles.columns:
        dates = pd.DatetimeIndex(candles["date"])
    elif isinstance(candles.index, pd.DatetimeIndex):
        dates = candles.index
    else:
        raise ValueError(
            "candle frame has no 'date' column or DatetimeIndex: expected candle open times in UTC"
        )
    if dates.tz is None:
        raise ValueError("candle dates are timezone-naive: expected UTC timestamps (datetime64[ns, UTC])")
    dates = dates.tz_convert("UTC").as_unit("ns")

    frame = pd.DataFrame(
        {column: candles[column].to_numpy(dtype=np.float64) for column in OHLCV_COLUMNS},
        index=pd.DatetimeIndex(dates, name="date"),
    )
    if frame.empty:
        return frame
    if frame.index.has_duplicates:
        first = frame.index[frame.index.duplicated()][0]
        raise ValueError(
            f"duplicate candle at {first.isoformat()}: deduplicate the candles before building the grid"
        )
    frame = frame.sort_index()

    step_ns = timeframe_seconds * 1_000_000_000
    off_grid = frame.index.asi8 % step_ns != 0
    if off_grid.any():
        first = frame.index[off_grid][0]
        raise ValueError(
            f"candle at {first.isoformat()} is not on the {timeframe_seconds} s timeframe boundary: "
            "check the timeframe or validate the candles first"
        )

    grid_index = pd.date_range(
        frame.index[0], frame.index[-1], freq=pd.Timedelta(seconds=timeframe_seconds), name="date"
    )
    grid = frame.reindex(grid_index)
    gaps = len(grid) - len(frame)
    if gaps:
        logger.debug("grid has %d missing candles out of %d rows", gaps, len(grid))
    return grid


def _missing_rows(grid: pd.DataFrame) -> np.ndarray:
    """Return a boolean array, True where the candle is missing or incomplete."""
    values = grid.loc[:, list(OHLCV_COLUMNS)].to_numpy(dtype=np.float64)
    return ~np.isfinite(values).all(axis=1)


def _window_has_gap(missing: np.ndarray, span: int) -> np.ndarray:
    """Return True at t when any of the ``span`` rows ending at t is missing or lies before the data."""
    counts = np.concatenate(([0], np.cumsum(missing, dtype=np.int64)))
    n = len(missing)
    has_gap = np.ones(n, dtype=bool)
    if span <= n:
        ends = np.arange(span, n + 1)
        has_gap[span - 1 :] = (counts[ends] - counts[ends - span]) > 0
    return has_gap


def _windows(values: np.ndarray, window: int) -> np.ndarray:
    """Return an (n, window) view whose row t contains values[t - window + 1 .. t].

    The first ``window - 1`` rows are padded with NaN.
    """
    padded = np.concatenate((np.full(window - 1, np.nan), values))
    return sliding_window_view(padded, window)


def _log_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    # Dividing first keeps full precision at any price scale: the ratio of two
    # prices near 1e-6 is as exact as the ratio of two prices near 1e4.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(numerator / denominator)


def _shift(values: np.ndarray, periods: int) -> np.ndarray:
    """Return ``values`` moved ``periods`` rows later (positive) or earlier (negative), NaN-filled."""
    shifted = np.full_like(values, np.nan)
    if periods > 0:
        shifted[periods:] = values[:-periods]
    elif periods < 0:
        shifted[:periods] = values[-periods:]
    else:
        shifted[:] = values
    return shifted


def build_features(grid: pd.DataFrame, config: FeatureConfig | None = None) -> pd.DataFrame:
    """Build the feature matrix on the grid index. Row t uses candles up to t only.

    Columns (windows in candles, returns as natural-log returns):

    - ``ret_{h}``: log(close[t] / close[t-h]).
    - ``vol_{w}``: sample standard deviation of the last ``w`` one-candle log returns.
    - ``range_hl``: log(high/low). ``body``: log(close/open).
      ``upper_wick``: log(high / max(open, close)). ``lower_wick``: log(min(open, close) / low).
    - ``close_pos``: (close - low) / (high - low), 0.5 when high == low.
    - ``ma_dist_{w}``: log(close / mean close of the last ``w`` candles).
    - ``rsi_{n}``: sum of gains / sum of absolute returns over ``n`` one-candle
      log returns, in [0, 1] (RSI / 100 with simple averages); 0.5 when flat.
    - ``volume_z_{w}``: z-score of log1p(volume) against the last ``w`` candles;
      0 when those volumes are all equal (including all zero).

    A row whose window for a column includes a missing candle, or reaches
    before the first candle, has NaN in that column.
    """
    config = config or FeatureConfig()
    spans = _feature_spans(config)
    if grid.empty:
        return pd.DataFrame(columns=list(spans), index=grid.index, dtype=np.float64)

    open_ = grid["open"].to_numpy(dtype=np.float64)
    high = grid["high"].to_numpy(dtype=np.float64)
    low = grid["low"].to_numpy(dtype=np.float64)
    close = grid["close"].to_numpy(dtype=np.float64)
    volume = grid["volume"].to_numpy(dtype=np.float64)
    one_candle_returns = _log_ratio(close, _shift(close, 1))

    columns: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for horizon in config.return_horizons:
            columns[f"ret_{horizon}"] = _log_ratio(close, _shift(close, horizon))

        for window in config.volatility_windows:
            columns[f"vol_{window}"] = np.std(_windows(one_candle_returns, window), axis=1, ddof=1)

        columns["range_hl"] = _log_ratio(high, low)
        columns["body"] = _log_ratio(close, open_)
        columns["upper_wick"] = _log_ratio(high, np.maximum(open_, close))
        columns["lower_wick"] = _log_ratio(np.minimum(open_, close), low)
        spread = high - low
        columns["close_pos"] = np.where(spread > 0, (close - low) / spread, 0.5)

        for window in config.moving_average_windows:
            mean_close = np.mean(_windows(close, window), axis=1)
            columns[f"ma_dist_{window}"] = _log_ratio(close, mean_close)

        rsi_windows = _windows(one_candle_returns, config.rsi_window)
        gains = np.sum(np.maximum(rsi_windows, 0.0), axis=1)
        moves = np.sum(np.abs(rsi_windows), axis=1)
        columns[f"rsi_{config.rsi_window}"] = np.where(moves > 0, gains / moves, 0.5)

        # log1p keeps zero volume finite; volume is in base-currency units.
        # NOTE: log1p is not invariant to the volume unit when volumes are near
        # one unit, but z-scores of large volumes are nearly unit-free.
        log_volume = np.log1p(volume)
        for window in config.volume_windows:
            volume_windows = _windows(log_volume, window)
            mean = np.mean(volume_windows, axis=1)
            std = np.std(volume_windows, axis=1, ddof=1)
            flat = std <= _FLAT_LOG_VOLUME_STD * np.maximum(np.abs(mean), 1.0)
            columns[f"volume_z_{window}"] = np.where(flat, 0.0, (log_volume - mean) / std)

    missing = _missing_rows(grid)
    gap_masks: dict[int, np.ndarray] = {}
    for name, span in spans.items():
        if span not in gap_masks:
            gap_masks[span] = _window_has_gap(missing, span)
        values = columns[name]
        values[gap_masks[span]] = np.nan

    return pd.DataFrame(columns, index=grid.index)


def build_label(grid: pd.DataFrame, horizon: int) -> pd.Series:
    """Return the forward log return log(close[t+h] / close[t]) at each t.

    NaN when candle t or any candle in (t, t+h] is missing or lies beyond the
    data. This is the only column that looks ahead. Windows purge at least
    ``horizon`` candles so that no label of one window reads the next window.
    """
    _check_window("horizon", horizon, 1)
    close = grid["close"].to_numpy(dtype=np.float64)
    label = _log_ratio(_shift(close, -horizon), close)
    # The window of the label at t is rows t .. t+h, which is the backward
    # window of span h+1 that ends at t+h, moved back by h rows.
    future_gap = _shift(_window_has_gap(_missing_rows(grid), horizon + 1).astype(np.float64), -horizon)
    label[future_gap != 0.0] = np.nan
    return pd.Series(label, index=grid.index, name=f"label_{horizon}")


def next_returns(grid: pd.DataFrame) -> pd.Series:
    """Return close[t+1] / close[t] - 1 at t: what a position held from t's close earns.

    NaN when candle t or t+1 is missing and at the last row.
    """
    close = grid["close"].to_numpy(dtype=np.float64)
    missing = _missing_rows(grid)
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = _shift(close, -1) / close - 1.0
    next_missing = _shift(missing.astype(np.float64), -1) != 0.0
    returns[missing | next_missing] = np.nan
    returns[-1:] = np.nan
    return pd.Series(returns, index=grid.index, name="next_return")


def assert_finite(frame: pd.DataFrame | pd.Series, symbol: str, what: str) -> None:
    """Raise NonFiniteFeatureError unless every value of ``frame`` is finite.

    Call it on the exact matrix a model will see, after dropping warm-up, gap
    and label-horizon rows. The message names the coin, the column, the first
    bad timestamp and its value.
    """
    if isinstance(frame, pd.Series):
        frame = frame.to_frame(name=frame.name if frame.name is not None else what)
    values = frame.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    row = int(np.flatnonzero(bad.any(axis=1))[0])
    column_position = int(np.flatnonzero(bad[row])[0])
    column = str(frame.columns[column_position])
    timestamp = frame.index[row]
    value = float(values[row, column_position])
    count = int(bad.sum())
    when = timestamp.isoformat() if hasattr(timestamp, "isoformat") else str(timestamp)
    raise NonFiniteFeatureError(
        f"{what} for {symbol} has {count} non-finite value(s): first in column {column!r} at {when} "
        f"(value {value}); drop the warm-up, gap and label-horizon rows before fitting, "
        "or check the candles for zero or negative prices",
        symbol=symbol,
        column=column,
        timestamp=timestamp,
        value=value,
        count=count,
    )
