"""Tests for the train, validation and holdout windows, the purge gaps and the history check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engine_assets.features.build import build_label
from engine_assets.features.windows import (
    InsufficientHistoryError,
    WindowConfig,
    check_history,
    make_windows,
    required_candles,
    split,
)

HOUR = 3600
STEP = pd.Timedelta(hours=1)
SMALL = WindowConfig(
    holdout_candles=48,
    validation_candles=36,
    max_train_candles=200,
    min_train_candles=100,
    label_horizon=4,
)


def hourly_grid(start: str, count: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=count, freq="h", tz="UTC", name="date")
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, count)))
    return pd.DataFrame(
        {"open": close, "high": close * 1.001, "low": close * 0.999, "close": close, "volume": 1.0},
        index=index,
    )


def test_windows_default_layout():
    windows = make_windows("2026-03-01T00:15:00Z", HOUR)

    assert windows.holdout_end == pd.Timestamp("2026-03-01T00:00:00Z")
    assert windows.train_start < windows.train_end < windows.validation_start
    assert windows.validation_start < windows.validation_end < windows.holdout_start < windows.holdout_end
    assert windows.holdout_end - windows.holdout_start == 1440 * STEP
    assert windows.validation_end - windows.validation_start == 1440 * STEP
    assert windows.train_end - windows.train_start == 365 * 24 * STEP
    assert windows.purge == 4


def test_windows_purge_sizes():
    windows = make_windows(pd.Timestamp("2026-03-01", tz="UTC"), HOUR, WindowConfig(purge_candles=10))

    assert windows.validation_start - windows.train_end == 10 * STEP
    assert windows.holdout_start - windows.validation_end == 10 * STEP
    assert windows.purge == 10


def test_windows_naive_cutoff_is_utc():
    naive = make_windows("2026-03-01 05:00", HOUR, SMALL)
    aware = make_windows("2026-03-01T06:00:00+01:00", HOUR, SMALL)

    assert naive == aware
    assert str(naive.holdout_end.tz) == "UTC"


def test_split_no_overlap():
    grid = hourly_grid("2026-01-01", 24 * 30)
    windows = make_windows("2026-01-30T12:00:00Z", HOUR, SMALL)

    parts = split(grid, windows)

    assert len(parts["holdout"]) == 48
    assert len(parts["validation"]) == 36
    assert len(parts["train"]) == 200
    assert parts["train"].index.max() < parts["validation"].index.min()
    assert parts["validation"].index.max() < parts["holdout"].index.min()
    assert parts["holdout"].index.max() == windows.holdout_end - STEP
    # Exactly the purge rows lie between windows.
    assert parts["validation"].index.min() - parts["train"].index.max() == (SMALL.purge_candles + 1) * STEP
    assert parts["holdout"].index.min() - parts["validation"].index.max() == (SMALL.purge_candles + 1) * STEP
    used = parts["train"].index.append(parts["validation"].index).append(parts["holdout"].index)
    assert not used.has_duplicates


def test_split_labels_stay_inside():
    grid = hourly_grid("2026-01-01", 24 * 30)
    windows = make_windows("2026-01-30T12:00:00Z", HOUR, SMALL)
    horizon = SMALL.label_horizon
    label = build_label(grid, horizon)

    parts = split(label.to_frame(), windows)

    # The label at t reads the close of candle t + h, which must lie before the next window.
    assert parts["train"].index.max() + horizon * STEP < windows.validation_start
    assert parts["validation"].index.max() + horizon * STEP < windows.holdout_start
    assert parts["train"]["label_4"].notna().all()
    assert parts["validation"]["label_4"].notna().all()


def test_purge_below_horizon_rejected():
    with pytest.raises(ValueError, match=r"purge_candles=3: it must be at least the label horizon \(4"):
        WindowConfig(purge_candles=3, label_horizon=4)


def test_purge_defaults_to_horizon():
    assert WindowConfig(label_horizon=12).purge_candles == 12
    assert WindowConfig().purge_candles == 4


def test_config_rejects_min_above_max():
    with pytest.raises(ValueError, match="min_train_candles=500: it exceeds max_train_candles=100"):
        WindowConfig(min_train_candles=500, max_train_candles=100)


def test_required_candles_sum():
    assert required_candles(SMALL, feature_lookback=168, encoder_window=64) == 168 + 100 + 2 * 4 + 36 + 48
    assert required_candles(SMALL, feature_lookback=10, encoder_window=65) == 64 + 100 + 2 * 4 + 36 + 48


def test_history_message_exact():
    grid = hourly_grid("2026-01-01", 120)
    grid.iloc[10] = np.nan
    windows = make_windows(grid.index[100], HOUR, SMALL)

    # 100 rows before the cutoff, one of them missing; rows at and after it do not count.
    with pytest.raises(InsufficientHistoryError, match=r"^insufficient history: 99 candles, need 500$"):
        check_history(grid, windows, 500)


def test_history_enough():
    grid = hourly_grid("2026-01-01", 600)
    windows = make_windows(grid.index[-1] + STEP, HOUR, SMALL)
    required = required_candles(SMALL, feature_lookback=168, encoder_window=64)

    assert check_history(grid, windows, required) == 600


def test_history_stale_coin_rejected():
    grid = hourly_grid("2026-01-01", 600)
    windows = make_windows(grid.index[-1] + 100 * STEP, HOUR, SMALL)

    with pytest.raises(InsufficientHistoryError, match="no candle in the holdout window"):
        check_history(grid, windows, 100)


def test_windows_to_dict_iso():
    windows = make_windows("2026-03-01T00:00:00Z", HOUR, SMALL)

    data = json.loads(json.dumps(windows.to_dict()))

    assert data["holdout_end"] == "2026-03-01T00:00:00+00:00"
    assert data["holdout_start"] == "2026-02-27T00:00:00+00:00"
    assert data["validation_end"] == "2026-02-26T20:00:00+00:00"
    assert data["purge"] == 4
    assert data["end_exclusive"] is True
