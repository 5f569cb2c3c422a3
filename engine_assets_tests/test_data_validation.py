"""Tests for candle validation: repairs, rejections, the report, and loading one symbol."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine_assets.data.loading import CandleFileError, CandleSourceNotFoundError, write_candles_feather
from engine_assets.data.validation import (
    CandleDataError,
    CandleGap,
    load_symbol_candles,
    validate_candles,
)

HOUR = 3600
SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv" / "binance"


def make_candles(
    rows: int = 48, start: str = "2025-03-01 00:00", freq: str = "h", seed: int = 11
) -> pd.DataFrame:
    """Build candles with random but consistent prices (high and low enclose open and close)."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, rows)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1.0 + rng.uniform(0.0, 0.005, rows))
    low = np.minimum(open_, close) * (1.0 - rng.uniform(0.0, 0.005, rows))
    return pd.DataFrame(
        {
            "date": pd.date_range(start, periods=rows, freq=freq, tz="UTC"),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.uniform(10.0, 1000.0, rows),
        }
    )


def validate(frame: pd.DataFrame, **kwargs) -> tuple[pd.DataFrame, object]:
    return validate_candles(frame, "BTCUSDT", HOUR, "BTC_USDT-1h.feather", **kwargs)


def test_validate_clean_candles():
    candles = make_candles()

    frame, report = validate(candles)

    pd.testing.assert_frame_equal(frame, candles)
    assert report.severity == "ok"
    assert report.rows_read == 48
    assert report.rows_valid == 48
    assert report.first == pd.Timestamp("2025-03-01 00:00", tz="UTC")
    assert report.last == pd.Timestamp("2025-03-02 23:00", tz="UTC")
    assert report.gaps == []
    assert report.findings == []


def test_validate_gap_one_hour():
    candles = make_candles(rows=10)
    with_gap = candles.drop(index=4).reset_index(drop=True)

    frame, report = validate(with_gap)

    assert report.gaps == [
        CandleGap(first_missing=pd.Timestamp("2025-03-01 04:00", tz="UTC"), missing_candles=1)
    ]
    assert report.missing_candles == 1
    assert "gap: 2025-03-01 04:00 UTC, 1 candle missing" in report.findings
    assert report.severity == "ok"
    assert report.rows_valid == 9
    pd.testing.assert_frame_equal(frame, with_gap)


def test_validate_gap_several_hours():
    candles = make_candles(rows=30)
    with_gaps = candles.drop(index=[5, 6, 7, 20]).reset_index(drop=True)

    # Missing rows are gaps, not dropped rows, so even a zero drop limit accepts them.
    _, report = validate(with_gaps, max_dropped_share=0.0)

    assert [gap.describe() for gap in report.gaps] == [
        "2025-03-01 05:00 UTC, 3 candles missing",
        "2025-03-01 20:00 UTC, 1 candle missing",
    ]
    assert report.missing_candles == 4


def test_validate_conflict_independent_of_order():
    candles = make_candles(rows=30)
    other = candles.loc[[10]].assign(
        close=candles.at[10, "close"] * 1.01, volume=candles.at[10, "volume"] + 5.0
    )
    first_order = pd.concat([candles, other], ignore_index=True)
    second_order = pd.concat([candles.iloc[:10], other, candles.iloc[10:]], ignore_index=True)

    frame_a, report_a = validate(first_order)
    frame_b, report_b = validate(second_order)

    pd.testing.assert_frame_equal(frame_a, frame_b)
    assert frame_a.at[10, "close"] == other["close"].iloc[0]
    assert frame_a.at[10, "volume"] == other["volume"].iloc[0]
    assert len(frame_a) == 30
    assert report_a.duplicates_conflicting == 1
    assert report_b.duplicates_conflicting == 1
    assert report_a.conflicting_timestamps == [pd.Timestamp("2025-03-01 10:00", tz="UTC")]
    assert report_a.severity == "repaired"
    assert any("2025-03-01 10:00 UTC" in line for line in report_a.findings)


def test_validate_conflict_volume_tie():
    candles = make_candles(rows=30)
    higher_close = candles.loc[[10]].assign(close=candles.at[10, "close"] + 0.5)

    frame_a, _ = validate(pd.concat([candles, higher_close], ignore_index=True))
    frame_b, _ = validate(pd.concat([higher_close, candles], ignore_index=True))

    assert frame_a.at[10, "close"] == higher_close["close"].iloc[0]
    pd.testing.assert_frame_equal(frame_a, frame_b)


def test_validate_exact_duplicates():
    candles = make_candles(rows=20)
    doubled = pd.concat([candles, candles.iloc[5:8]], ignore_index=True)

    frame, report = validate(doubled)

    pd.testing.assert_frame_equal(frame, candles)
    assert report.duplicates_exact == 3
    assert report.duplicates_conflicting == 0
    assert report.unsorted_rows == 0
    assert report.rows_read == 23
    assert report.rows_valid == 20


def test_validate_exact_duplicates_over_limit():
    # Overlapping monthly and daily Binance files can repeat most rows, which loses nothing.
    candles = make_candles(rows=20)

    frame, report = validate(pd.concat([candles, candles], ignore_index=True))

    assert report.duplicates_exact == 20
    assert len(frame) == 20


def test_validate_unsorted():
    candles = make_candles(rows=20)
    shuffled = candles.iloc[[0, 1, 5, 2, 3, 4, *range(6, 20)]].reset_index(drop=True)

    frame, report = validate(shuffled)

    pd.testing.assert_frame_equal(frame, candles)
    assert report.unsorted_rows == 3
    assert report.severity == "repaired"
    assert "3 rows out of date order, sorted" in report.findings


def test_validate_bad_prices_dropped():
    candles = make_candles(rows=100)
    broken = candles.copy()
    broken.loc[10, "close"] = 0.0
    broken.loc[20, "open"] = -1.0
    broken.loc[30, "high"] = np.nan
    broken.loc[40, "low"] = np.inf
    broken.loc[50, "volume"] = -3.0

    frame, report = validate(broken)

    assert report.dropped_invalid["non_positive_price"] == 2
    assert report.dropped_invalid["non_finite_price"] == 2
    assert report.dropped_invalid["invalid_volume"] == 1
    assert report.rows_valid == 95
    assert report.rows_dropped == 5
    pd.testing.assert_frame_equal(frame, candles.drop(index=[10, 20, 30, 40, 50]).reset_index(drop=True))
    assert len(report.gaps) == 5
    assert "2 rows dropped: open, high, low or close at or below zero" in report.findings


def test_validate_zero_volume_kept():
    candles = make_candles(rows=20)
    candles.loc[3, "volume"] = 0.0

    frame, report = validate(candles)

    assert report.rows_valid == 20
    assert report.severity == "ok"


def test_validate_high_below_low_dropped():
    candles = make_candles(rows=40)
    broken = candles.copy()
    broken.loc[7, ["high", "low"]] = [90.0, 110.0]

    frame, report = validate(broken)

    assert report.dropped_invalid["high_below_low"] == 1
    assert pd.Timestamp("2025-03-01 07:00", tz="UTC") not in set(frame["date"])
    assert report.gaps == [CandleGap(pd.Timestamp("2025-03-01 07:00", tz="UTC"), 1)]


def test_validate_high_low_widened():
    candles = make_candles(rows=40)
    broken = candles.copy()
    broken.loc[8, "high"] = min(candles.at[8, "open"], candles.at[8, "close"])
    broken.loc[9, "low"] = max(candles.at[9, "open"], candles.at[9, "close"])

    frame, report = validate(broken)

    assert report.repaired_high_low == 2
    assert report.rows_valid == 40
    assert frame.at[8, "high"] == max(candles.at[8, "open"], candles.at[8, "close"])
    assert frame.at[9, "low"] == min(candles.at[9, "open"], candles.at[9, "close"])
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()
    assert (frame["low"] <= frame[["open", "close"]].min(axis=1)).all()
    assert report.severity == "repaired"


def test_validate_off_boundary_dropped():
    candles = make_candles(rows=40)
    odd = candles.loc[[5]].assign(date=pd.Timestamp("2025-03-01 05:30", tz="UTC"))

    frame, report = validate(pd.concat([candles, odd], ignore_index=True).sort_values("date"))

    assert report.dropped_invalid["off_timeframe_boundary"] == 1
    pd.testing.assert_frame_equal(frame, candles)


def test_validate_too_many_dropped():
    candles = make_candles(rows=40)
    candles.loc[[1, 2, 3], "close"] = np.nan

    expected = r"BTCUSDT candles from BTC_USDT-1h\.feather.*3 of 40 rows \(7\.5%\)"
    with pytest.raises(CandleDataError, match=expected):
        validate(candles)


def test_validate_wrong_timeframe():
    five_minute = make_candles(rows=60, freq="5min")

    with pytest.raises(CandleDataError, match="median spacing 300 s, expected 3600 s") as caught:
        validate(five_minute)
    assert caught.value.symbol == "BTCUSDT"
    assert caught.value.source == "BTC_USDT-1h.feather"


def test_validate_no_valid_rows():
    candles = make_candles(rows=5).assign(close=np.nan)

    expected = r"no valid rows \(NaN or infinite open, high, low or close: 5\)"
    with pytest.raises(CandleDataError, match=expected):
        validate(candles)


def test_validate_no_rows():
    with pytest.raises(CandleDataError, match="BTCUSDT candles .* unusable: no rows"):
        validate(make_candles(rows=5).iloc[:0])


def test_report_to_dict_json():
    candles = make_candles(rows=30)
    broken = pd.concat([candles.drop(index=12), candles.loc[[3]]], ignore_index=True)

    _, report = validate(broken)
    data = json.loads(json.dumps(report.to_dict()))

    assert data["symbol"] == "BTCUSDT"
    assert data["severity"] == "repaired"
    assert data["rows_read"] == 30
    assert data["rows_valid"] == 29
    assert data["duplicates_exact"] == 1
    assert data["first"] == "2025-03-01T00:00:00+00:00"
    assert data["gaps"] == [{"first_missing": "2025-03-01T12:00:00+00:00", "missing_candles": 1}]
    assert data["gap_count"] == 1
    assert report.summary() == (
        "BTCUSDT (BTC_USDT-1h.feather): 30 rows read, 29 valid, "
        "2025-03-01 00:00 UTC to 2025-03-02 05:00 UTC, "
        "1 gaps (1 candles missing), 0 dropped, repaired"
    )


def test_load_symbol_candles_file(tmp_path):
    candles = make_candles(rows=24)
    write_candles_feather(candles.iloc[::-1], tmp_path / "BTC_USDT-1h.feather")

    frame, report = load_symbol_candles(tmp_path, "BTCUSDT", "1h")

    pd.testing.assert_frame_equal(frame, candles)
    assert report.source == "BTC_USDT-1h.feather"
    assert report.unsorted_rows == 23


def test_load_symbol_candles_missing(tmp_path):
    write_candles_feather(make_candles(rows=3), tmp_path / "ETH_USDT-1h.feather")

    expected = re.escape(f"no candle file for symbol BTCUSDT and timeframe 1h in {tmp_path}")
    with pytest.raises(CandleSourceNotFoundError, match=expected):
        load_symbol_candles(tmp_path, "BTCUSDT", "1h")


def test_load_symbol_candles_bad_file(tmp_path):
    (tmp_path / "BTC_USDT-1h.json").write_text("[[1, 2")

    with pytest.raises(CandleFileError, match=r"BTC_USDT-1h\.json: invalid JSON"):
        load_symbol_candles(tmp_path, "BTCUSDT", "1h")


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_load_symbol_candles_samples(symbol):
    base = symbol.removesuffix("USDT")
    if not (SAMPLE_DIR / f"{base}_USDT-1h.feather").is_file():
        pytest.skip(f"sample candles not found in {SAMPLE_DIR}")

    frame, report = load_symbol_candles(SAMPLE_DIR, symbol, "1h")

    assert 12_000 <= report.rows_read <= 13_000
    assert report.rows_valid == report.rows_read
    assert len(frame) == report.rows_valid
    assert report.severity == "ok"
    assert frame["date"].is_monotonic_increasing
    assert frame["date"].is_unique
    assert report.first == frame["date"].iloc[0]
    assert report.last == frame["date"].iloc[-1]
