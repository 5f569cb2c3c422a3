"""Tests for the candle grid, features, labels, next returns and the finiteness check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine_assets.features.build import (
    FeatureConfig,
    NonFiniteFeatureError,
    assert_finite,
    build_features,
    build_label,
    feature_lookback,
    feature_names,
    next_returns,
    to_grid,
)

HOUR = 3600
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv" / "binance"
SAMPLE_BTC = SAMPLE_DIR / "BTC_USDT-1h.feather"
CONFIG = FeatureConfig()
HORIZON = CONFIG.label_horizon

# Candles each feature reads at t, t included, written out here independently
# of the implementation so the gap test checks the documented windows.
EXPECTED_SPANS = {
    **{f"ret_{h}": h + 1 for h in CONFIG.return_horizons},
    **{f"vol_{w}": w + 1 for w in CONFIG.volatility_windows},
    "range_hl": 1,
    "body": 1,
    "upper_wick": 1,
    "lower_wick": 1,
    "close_pos": 1,
    **{f"ma_dist_{w}": w for w in CONFIG.moving_average_windows},
    f"rsi_{CONFIG.rsi_window}": CONFIG.rsi_window + 1,
    **{f"volume_z_{w}": w for w in CONFIG.volume_windows},
}


def make_candles(count: int, seed: int, start_price: float = 100.0) -> pd.DataFrame:
    """Return a random-walk hourly candle frame as the validator delivers it."""
    rng = np.random.default_rng(seed)
    close = start_price * np.exp(np.cumsum(rng.normal(0.0, 0.01, count)))
    open_ = np.concatenate(([start_price], close[:-1]))
    high = np.maximum(open_, close) * (1.0 + rng.uniform(0.0, 0.005, count))
    low = np.minimum(open_, close) * (1.0 - rng.uniform(0.0, 0.005, count))
    volume = rng.lognormal(5.0, 1.0, count)
    dates = pd.date_range("2024-01-01", periods=count, freq="h", tz="UTC")
    return pd.DataFrame(
        {"date": dates, "open": open_, "high": high, "low": low, "close": close, "volume": volume}
    )


def make_tick_candles(count: int, seed: int, tick: float = 1e-9, start_ticks: int = 1000) -> pd.DataFrame:
    """Return candles priced around 1e-6 on a 1e-9 tick, with some unchanged closes."""
    rng = np.random.default_rng(seed)
    close_ticks = start_ticks + np.cumsum(rng.integers(-3, 4, count))
    close_ticks = np.maximum(close_ticks, 100)
    open_ticks = np.concatenate(([start_ticks], close_ticks[:-1]))
    high_ticks = np.maximum(open_ticks, close_ticks) + rng.integers(0, 3, count)
    low_ticks = np.minimum(open_ticks, close_ticks) - rng.integers(0, 3, count)
    dates = pd.date_range("2024-01-01", periods=count, freq="h", tz="UTC")
    return pd.DataFrame(
        {
            "date": dates,
            "open": open_ticks * tick,
            "high": high_ticks * tick,
            "low": low_ticks * tick,
            "close": close_ticks * tick,
            "volume": rng.lognormal(15.0, 1.0, count),
        }
    )


def scale_prices(candles: pd.DataFrame, factor: float) -> pd.DataFrame:
    scaled = candles.copy()
    for column in ("open", "high", "low", "close"):
        scaled[column] = scaled[column] * factor
    return scaled


def test_grid_inserts_missing_rows():
    candles = make_candles(10, seed=1).drop(index=4).reset_index(drop=True)

    grid = to_grid(candles, HOUR)

    assert len(grid) == 10
    assert grid.index.name == "date"
    assert str(grid.index.tz) == "UTC"
    assert grid.iloc[4].isna().all()
    assert grid.drop(grid.index[4]).notna().all().all()
    assert list(grid.columns) == ["open", "high", "low", "close", "volume"]


def test_grid_rejects_off_boundary():
    candles = make_candles(5, seed=1)
    candles.loc[2, "date"] = candles.loc[2, "date"] + pd.Timedelta(minutes=30)

    with pytest.raises(ValueError, match="not on the 3600 s timeframe boundary"):
        to_grid(candles, HOUR)


def test_grid_rejects_duplicates():
    candles = make_candles(5, seed=1)
    candles.loc[3, "date"] = candles.loc[2, "date"]

    with pytest.raises(ValueError, match="duplicate candle at 2024-01-01T02:00:00"):
        to_grid(candles, HOUR)


def test_lookback_first_complete_row():
    features = build_features(to_grid(make_candles(400, seed=2), HOUR))
    lookback = feature_lookback(CONFIG)

    assert lookback == 168
    assert features.iloc[lookback - 1].isna().any()
    assert features.iloc[lookback:].notna().all().all()
    assert list(features.columns) == feature_names(CONFIG)
    assert set(features.columns) == set(EXPECTED_SPANS)


@pytest.mark.parametrize("cut", [180, 260, 390])
def test_features_ignore_future_candles(cut):
    candles = make_candles(500, seed=3)
    changed = candles.copy()
    rng = np.random.default_rng(30 + cut)
    after = changed.index > cut
    factor = rng.uniform(0.5, 2.0, after.sum())
    for column in ("open", "high", "low", "close"):
        changed.loc[after, column] = changed.loc[after, column] * factor
    changed.loc[after, "volume"] = rng.lognormal(8.0, 2.0, after.sum())

    grid, changed_grid = to_grid(candles, HOUR), to_grid(changed, HOUR)
    features, changed_features = build_features(grid), build_features(changed_grid)
    label, changed_label = build_label(grid, HORIZON), build_label(changed_grid, HORIZON)
    returns, changed_returns = next_returns(grid), next_returns(changed_grid)

    # Bitwise: rows up to the cut read no changed candle.
    np.testing.assert_array_equal(
        features.iloc[: cut + 1].to_numpy(), changed_features.iloc[: cut + 1].to_numpy()
    )
    np.testing.assert_array_equal(label.iloc[: cut - HORIZON + 1], changed_label.iloc[: cut - HORIZON + 1])
    np.testing.assert_array_equal(returns.iloc[:cut], changed_returns.iloc[:cut])
    # The change is real: the first rows after the cut and the next label differ.
    assert not np.allclose(features.iloc[cut + 1].to_numpy(), changed_features.iloc[cut + 1].to_numpy())
    assert label.iloc[cut - HORIZON + 1] != changed_label.iloc[cut - HORIZON + 1]


def test_gap_blanks_windows():
    gap = 250
    candles = make_candles(520, seed=4).drop(index=gap).reset_index(drop=True)
    grid = to_grid(candles, HOUR)
    assert grid.iloc[gap].isna().all()

    features = build_features(grid)
    lookback = feature_lookback(CONFIG)

    for column, span in EXPECTED_SPANS.items():
        values = features[column].to_numpy()
        blanked = values[gap : gap + span]
        assert np.isnan(blanked).all(), f"{column}: a window containing the gap is not NaN"
        assert np.isfinite(values[gap + span]), f"{column}: first window past the gap is NaN"
        assert np.isfinite(values[lookback:gap]).all(), f"{column}: rows before the gap are not finite"

    label = build_label(grid, HORIZON)
    assert np.isnan(label.iloc[gap - HORIZON : gap + 1]).all()
    assert np.isfinite(label.iloc[gap - HORIZON - 1])
    assert np.isfinite(label.iloc[gap + 1])

    returns = next_returns(grid)
    assert np.isnan(returns.iloc[gap - 1])
    assert np.isnan(returns.iloc[gap])
    assert np.isfinite(returns.iloc[gap - 2])
    assert np.isfinite(returns.iloc[gap + 1])


def test_label_is_forward_log_return():
    grid = to_grid(make_candles(50, seed=5), HOUR)
    close = grid["close"].to_numpy()

    label = build_label(grid, 3)

    np.testing.assert_allclose(label.iloc[:-3], np.log(close[3:] / close[:-3]), rtol=1e-12)
    assert label.iloc[-3:].isna().all()


def test_next_returns_simple_return():
    grid = to_grid(make_candles(20, seed=6), HOUR)
    close = grid["close"].to_numpy()

    returns = next_returns(grid)

    np.testing.assert_allclose(returns.iloc[:-1], close[1:] / close[:-1] - 1.0, rtol=1e-12)
    assert np.isnan(returns.iloc[-1])


@pytest.mark.parametrize("flat_count", [3, 200])
def test_zero_volume_flat_candles(flat_count):
    candles = make_candles(700, seed=7)
    start = 300
    flat = slice(start, start + flat_count - 1)
    price = candles.loc[start - 1, "close"]
    candles.loc[flat, ["open", "high", "low", "close"]] = price
    candles.loc[flat, "volume"] = 0.0

    features = build_features(to_grid(candles, HOUR))
    after_lookback = features.iloc[feature_lookback(CONFIG) :]

    assert np.isfinite(after_lookback.to_numpy()).all()
    middle = features.iloc[start + flat_count // 2]
    assert middle["ret_1"] == 0.0
    assert middle["range_hl"] == 0.0
    assert middle["close_pos"] == 0.5
    if flat_count > 168:
        last_flat = features.iloc[start + flat_count - 1]
        assert last_flat["vol_168"] == 0.0
        assert last_flat["volume_z_168"] == 0.0
        assert last_flat[f"rsi_{CONFIG.rsi_window}"] == 0.5


def test_tiny_prices_scale_free():
    candles = make_tick_candles(600, seed=8)
    grid = to_grid(candles, HOUR)
    scaled_grid = to_grid(scale_prices(candles, 1e6), HOUR)

    features = build_features(grid)
    scaled = build_features(scaled_grid)

    np.testing.assert_array_equal(features.isna().to_numpy(), scaled.isna().to_numpy())
    np.testing.assert_allclose(features.to_numpy(), scaled.to_numpy(), rtol=1e-9, atol=0)
    np.testing.assert_allclose(next_returns(grid), next_returns(scaled_grid), rtol=1e-9, atol=0)


def test_tiny_prices_keep_returns():
    candles = make_tick_candles(600, seed=9)
    grid = to_grid(candles, HOUR)
    close = grid["close"].to_numpy()
    moved = close[1:] != close[:-1]
    assert moved.sum() > 100
    assert (~moved).sum() > 10

    one_candle = build_features(grid)["ret_1"].to_numpy()[1:]
    forward = next_returns(grid).to_numpy()[:-1]

    assert (one_candle[moved] != 0.0).all()
    assert (one_candle[~moved] == 0.0).all()
    assert (forward[moved] != 0.0).all()
    assert (forward[~moved] == 0.0).all()


def test_assert_finite_names_first_bad():
    index = pd.date_range("2024-01-01", periods=8, freq="h", tz="UTC", name="date")
    frame = pd.DataFrame({"ret_1": np.linspace(0.0, 1.0, 8), "vol_24": np.ones(8)}, index=index)
    frame.iloc[6, 0] = np.nan
    frame.iloc[5, 1] = np.inf

    with pytest.raises(NonFiniteFeatureError, match=r"features for ETHUSDT has 2 non-finite") as caught:
        assert_finite(frame, "ETHUSDT", "features")

    message = str(caught.value)
    assert "column 'vol_24'" in message
    assert "2024-01-01T05:00:00+00:00" in message
    assert "value inf" in message
    assert caught.value.column == "vol_24"
    assert caught.value.timestamp == index[5]


def test_assert_finite_passes_clean():
    index = pd.date_range("2024-01-01", periods=3, freq="h", tz="UTC")
    assert_finite(pd.DataFrame({"a": [1.0, 2.0, 3.0]}, index=index), "BTCUSDT", "features")
    assert_finite(pd.Series([0.1, 0.2, 0.3], index=index, name="label_4"), "BTCUSDT", "labels")


def test_config_rejects_bad_window():
    with pytest.raises(ValueError, match=r"FeatureConfig.volatility_windows=1"):
        FeatureConfig(volatility_windows=(1, 24))
    with pytest.raises(ValueError, match=r"FeatureConfig.label_horizon=0"):
        FeatureConfig(label_horizon=0)


@pytest.mark.skipif(not SAMPLE_BTC.exists(), reason=f"sample candles not found at {SAMPLE_BTC}")
def test_sample_btc_finite():
    candles = pd.read_feather(SAMPLE_BTC)
    grid = to_grid(candles, HOUR)

    features = build_features(grid)
    label = build_label(grid, HORIZON)
    lookback = feature_lookback(CONFIG)

    assert len(grid) == len(candles)
    assert_finite(features.iloc[lookback:], "BTCUSDT", "features")
    assert_finite(label.iloc[:-HORIZON], "BTCUSDT", "labels")
    assert features.iloc[lookback:].std().gt(0).all()
    assert label.iloc[-HORIZON:].isna().all()
