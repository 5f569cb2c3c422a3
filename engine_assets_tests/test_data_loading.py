"""Tests for finding, reading and writing candle files, and for the symbol universe."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.feather as feather
import pytest

from engine_assets.data import loading
from engine_assets.data.loading import (
    CandleFileError,
    CandleSource,
    CandleSourceNotFoundError,
    find_candle_sources,
    read_candles,
    write_candles_feather,
)
from engine_assets.data.universe import discover_universe

HOUR_MS = 3_600_000


def make_candles(rows: int = 48, start: str = "2024-12-31 00:00", seed: int = 7) -> pd.DataFrame:
    """Build hourly candles with random but consistent prices (high and low enclose open and close)."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, rows)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1.0 + rng.uniform(0.0, 0.005, rows))
    low = np.minimum(open_, close) * (1.0 - rng.uniform(0.0, 0.005, rows))
    volume = rng.uniform(10.0, 1000.0, rows)
    return pd.DataFrame(
        {
            "date": pd.date_range(start, periods=rows, freq="h", tz="UTC"),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
        }
    )


def epoch_ms(frame: pd.DataFrame) -> np.ndarray:
    return frame["date"].to_numpy(dtype="datetime64[ms]").astype(np.int64)


def write_json(frame: pd.DataFrame, path: Path) -> None:
    values = frame[["open", "high", "low", "close", "volume"]].to_numpy().tolist()
    rows = [[int(ms), *prices] for ms, prices in zip(epoch_ms(frame), values)]
    text = json.dumps(rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def write_binance_csv(frame: pd.DataFrame, path: Path, unit: str = "ms", header: bool = False) -> None:
    """Write a 12-column Binance kline CSV with open and close times in ``unit``."""
    scale = 1000 if unit == "us" else 1
    open_time = epoch_ms(frame) * scale
    kline = pd.DataFrame(
        {
            "open_time": open_time,
            "open": frame["open"],
            "high": frame["high"],
            "low": frame["low"],
            "close": frame["close"],
            "volume": frame["volume"],
            "close_time": open_time + HOUR_MS * scale - 1,
            "quote_volume": frame["volume"] * frame["close"],
            "count": 100,
            "taker_buy_volume": frame["volume"] / 2,
            "taker_buy_quote_volume": frame["volume"] * frame["close"] / 2,
            "ignore": 0,
        }
    )
    kline.to_csv(path, index=False, header=header)


def source_for(path: Path, file_format: str, symbol: str = "BTCUSDT") -> CandleSource:
    return CandleSource(symbol=symbol, timeframe="1h", paths=(path,), format=file_format)


# Discovery


def test_find_sources_mixed_folder(tmp_path, caplog):
    for name in [
        "BTC_USDT-1h.feather",
        "BTC_USDT-1h.json",
        "ETH_USDT-1h.json.gz",
        "SOL_USDT-1h.csv",
        "SOL_USDT-5m.feather",
        "ADA_USDT-4h.json",
        "BTC_USDT_USDT-1h-futures.feather",
        "BTC_USDT_USDT-1h-mark.feather",
        "BTC_USDT_USDT-8h-funding_rate.feather",
        "XRPUSDT-1h-2024-02.csv",
        "XRPUSDT-1h-2024-01.csv",
        "XRPUSDT-1h-2024-02-03.csv",
        "XRPUSDT-5m-2024-01.csv",
        "doge_usdt-1h.feather",
        "README.md",
    ]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "futures").mkdir()
    (tmp_path / "futures" / "LTC_USDT-1h.feather").write_bytes(b"")

    with caplog.at_level(logging.INFO, logger=loading.__name__):
        sources = find_candle_sources(tmp_path, "1h")

    assert list(sources) == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
    assert sources["BTCUSDT"].format == "feather"
    assert sources["BTCUSDT"].paths == (tmp_path / "BTC_USDT-1h.feather",)
    assert sources["ETHUSDT"].format == "json.gz"
    assert sources["SOLUSDT"].format == "csv"
    assert sources["XRPUSDT"].format == "binance_csv"
    assert [path.name for path in sources["XRPUSDT"].paths] == [
        "XRPUSDT-1h-2024-01.csv",
        "XRPUSDT-1h-2024-02.csv",
        "XRPUSDT-1h-2024-02-03.csv",
    ]
    assert all(source.timeframe == "1h" for source in sources.values())
    assert "ignoring BTC_USDT-1h.json" in caplog.text
    assert "doge_usdt-1h.feather" in caplog.text


def test_find_sources_format_priority(tmp_path):
    for name in ["BTC_USDT-1h.csv", "BTC_USDT-1h.json.gz", "BTC_USDT-1h.json", "BTCUSDT-1h-2024-01.csv"]:
        (tmp_path / name).write_bytes(b"")

    assert find_candle_sources(tmp_path, "1h")["BTCUSDT"].format == "json"
    (tmp_path / "BTC_USDT-1h.json").unlink()
    assert find_candle_sources(tmp_path, "1h")["BTCUSDT"].format == "json.gz"


def test_find_sources_missing_folder(tmp_path):
    missing = tmp_path / "no-such-folder"

    with pytest.raises(FileNotFoundError, match="no-such-folder.*ENGINE_DATA_DIR"):
        find_candle_sources(missing, "1h")


def test_find_sources_binance_zip_warns(tmp_path, caplog):
    (tmp_path / "BTCUSDT-1h-2024-01.zip").write_bytes(b"PK")

    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        sources = find_candle_sources(tmp_path, "1h")

    assert sources == {}
    assert "unzip" in caplog.text


# Round trips: every format reads back to the frame that was written


@pytest.mark.parametrize("file_format", ["feather", "json", "json.gz", "csv_iso", "csv_ms"])
def test_read_freqtrade_round_trip(tmp_path, file_format):
    candles = make_candles()
    if file_format == "feather":
        write_candles_feather(candles, tmp_path / "BTC_USDT-1h.feather")
    elif file_format in ("json", "json.gz"):
        write_json(candles, tmp_path / f"BTC_USDT-1h.{file_format}")
    elif file_format == "csv_iso":
        candles.to_csv(tmp_path / "BTC_USDT-1h.csv", index=False)
    else:
        with_ms = candles.assign(date=epoch_ms(candles))
        with_ms.to_csv(tmp_path / "BTC_USDT-1h.csv", index=False)

    source = find_candle_sources(tmp_path, "1h")["BTCUSDT"]
    frame = read_candles(source)

    assert list(frame.columns) == ["date", "open", "high", "low", "close", "volume"]
    assert str(frame["date"].dtype) == "datetime64[ns, UTC]"
    assert (frame.dtypes.iloc[1:] == np.float64).all()
    pd.testing.assert_frame_equal(frame, candles)


@pytest.mark.parametrize(("unit", "header"), [("ms", False), ("us", False), ("us", True), ("ms", True)])
def test_read_binance_round_trip(tmp_path, unit, header):
    candles = make_candles()
    write_binance_csv(candles, tmp_path / "BTCUSDT-1h-2025-01.csv", unit=unit, header=header)

    frame = read_candles(find_candle_sources(tmp_path, "1h")["BTCUSDT"])

    pd.testing.assert_frame_equal(frame, candles)


def test_read_binance_files_join(tmp_path):
    # December 2024 in milliseconds, January 2025 in microseconds, as Binance publishes them.
    candles = make_candles(rows=48, start="2024-12-31 00:00")
    write_binance_csv(candles.iloc[:24], tmp_path / "BTCUSDT-1h-2024-12.csv", unit="ms")
    write_binance_csv(candles.iloc[24:], tmp_path / "BTCUSDT-1h-2025-01.csv", unit="us", header=True)

    source = find_candle_sources(tmp_path, "1h")["BTCUSDT"]
    frame = read_candles(source)

    assert len(source.paths) == 2
    assert source.name == "BTCUSDT-1h-2024-12.csv .. BTCUSDT-1h-2025-01.csv (2 files)"
    pd.testing.assert_frame_equal(frame, candles)


def test_read_binance_mixed_units(tmp_path):
    candles = make_candles(rows=4)
    path = tmp_path / "BTCUSDT-1h-2025-01.csv"
    write_binance_csv(candles, path, unit="ms")
    lines = path.read_text().splitlines()
    first_time, rest = lines[1].split(",", 1)
    lines[1] = f"{int(first_time) * 1000},{rest}"
    path.write_text("\n".join(lines) + "\n")

    expected = r"BTCUSDT-1h-2025-01\.csv: open_time mixes milliseconds \(3 rows\)"
    with pytest.raises(CandleFileError, match=expected):
        read_candles(source_for(path, "binance_csv"))


def test_read_binance_wrong_column_count(tmp_path):
    path = tmp_path / "BTCUSDT-1h-2025-01.csv"
    make_candles(rows=3).assign(date=lambda f: epoch_ms(f)).to_csv(path, index=False, header=False)

    expected = r"BTCUSDT-1h-2025-01\.csv: expected the 12 Binance kline columns"
    with pytest.raises(CandleFileError, match=expected):
        read_candles(source_for(path, "binance_csv"))


# Broken files


@pytest.mark.parametrize(
    ("name", "file_format"),
    [
        ("BTC_USDT-1h.feather", "feather"),
        ("BTC_USDT-1h.json", "json"),
        ("BTC_USDT-1h.json.gz", "json.gz"),
        ("BTC_USDT-1h.csv", "csv"),
        ("BTCUSDT-1h-2025-01.csv", "binance_csv"),
    ],
)
def test_read_empty_file(tmp_path, name, file_format):
    path = tmp_path / name
    path.write_bytes(b"")

    with pytest.raises(CandleFileError, match=f"{name}: empty file") as caught:
        read_candles(source_for(path, file_format))
    assert caught.value.path == path
    assert caught.value.problem == "empty file"


def test_read_no_rows(tmp_path):
    csv_path = tmp_path / "BTC_USDT-1h.csv"
    csv_path.write_text("date,open,high,low,close,volume\n")
    json_path = tmp_path / "ETH_USDT-1h.json"
    json_path.write_text("[]")

    with pytest.raises(CandleFileError, match=r"BTC_USDT-1h\.csv: no rows"):
        read_candles(source_for(csv_path, "csv"))
    with pytest.raises(CandleFileError, match=r"ETH_USDT-1h\.json: no rows"):
        read_candles(source_for(json_path, "json", symbol="ETHUSDT"))


def test_read_wrong_columns_csv(tmp_path):
    path = tmp_path / "BTC_USDT-1h.csv"
    make_candles(rows=3).rename(columns={"close": "Close"}).to_csv(path, index=False)

    with pytest.raises(
        CandleFileError,
        match=(
            r"BTC_USDT-1h\.csv: missing columns \['close'\] "
            r"\(found: \['date', 'open', 'high', 'low', 'Close'"
        ),
    ):
        read_candles(source_for(path, "csv"))


def test_read_wrong_columns_feather(tmp_path):
    path = tmp_path / "BTC_USDT-1h.feather"
    feather.write_feather(make_candles(rows=3).rename(columns={"date": "timestamp"}), path)

    with pytest.raises(CandleFileError, match=r"BTC_USDT-1h\.feather: missing columns \['date'\]"):
        read_candles(source_for(path, "feather"))


def test_read_truncated_feather(tmp_path):
    path = tmp_path / "BTC_USDT-1h.feather"
    write_candles_feather(make_candles(rows=500), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    expected = r"BTC_USDT-1h\.feather: unreadable Feather file \(truncated or corrupt\)"
    with pytest.raises(CandleFileError, match=expected):
        read_candles(source_for(path, "feather"))


def test_read_truncated_json_gz(tmp_path):
    path = tmp_path / "BTC_USDT-1h.json.gz"
    write_json(make_candles(rows=500), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(CandleFileError, match=r"BTC_USDT-1h\.json\.gz: unreadable gzip file"):
        read_candles(source_for(path, "json.gz"))


def test_read_invalid_json_rows(tmp_path):
    path = tmp_path / "BTC_USDT-1h.json"
    path.write_text('{"date": [1]}')
    short_rows = tmp_path / "ETH_USDT-1h.json"
    short_rows.write_text("[[1735603200000, 1.0, 2.0, 0.5, 1.5]]")

    with pytest.raises(CandleFileError, match=r"BTC_USDT-1h\.json: expected a JSON list .* found a dict"):
        read_candles(source_for(path, "json"))
    with pytest.raises(CandleFileError, match=r"ETH_USDT-1h\.json: expected a JSON list .* row 1 is"):
        read_candles(source_for(short_rows, "json", symbol="ETHUSDT"))


def test_read_unparsable_value(tmp_path):
    path = tmp_path / "BTC_USDT-1h.csv"
    candles = make_candles(rows=5).astype({"close": object})
    candles.loc[3, "close"] = "abc"
    candles.to_csv(path, index=False)

    with pytest.raises(CandleFileError, match=r"unparsable value 'abc' in column 'close' at data row 4"):
        read_candles(source_for(path, "csv"))


def test_read_unparsable_date(tmp_path):
    path = tmp_path / "BTC_USDT-1h.csv"
    candles = make_candles(rows=5).astype({"date": object})
    candles.loc[2, "date"] = "yesterday"
    candles.to_csv(path, index=False)

    with pytest.raises(CandleFileError, match=r"unparsable date 'yesterday' at data row 3"):
        read_candles(source_for(path, "csv"))


def test_read_date_in_seconds(tmp_path):
    path = tmp_path / "BTC_USDT-1h.csv"
    candles = make_candles(rows=3)
    candles.assign(date=epoch_ms(candles) // 1000).to_csv(path, index=False)

    expected = r"at data row 1 is not epoch milliseconds between 2000 and 2100"
    with pytest.raises(CandleFileError, match=expected):
        read_candles(source_for(path, "csv"))


def test_read_keeps_file_order(tmp_path):
    candles = make_candles(rows=6)
    shuffled = candles.iloc[[3, 0, 5, 1, 1, 2, 4]].reset_index(drop=True)
    write_json(shuffled, tmp_path / "BTC_USDT-1h.json")

    frame = read_candles(source_for(tmp_path / "BTC_USDT-1h.json", "json"))

    pd.testing.assert_frame_equal(frame, shuffled)


# Writing


def test_write_feather_layout(tmp_path):
    candles = make_candles(rows=10)
    path = tmp_path / "new" / "BTC_USDT-1h.feather"

    written = write_candles_feather(candles.iloc[::-1].set_index("date", drop=False).assign(extra=1), path)

    table = feather.read_table(path)
    assert written == path
    assert table.column_names == ["date", "open", "high", "low", "close", "volume"]
    assert str(table.schema.field("date").type) == "timestamp[ns, tz=UTC]"
    assert table.num_rows == 10
    assert sorted(p.name for p in path.parent.iterdir()) == ["BTC_USDT-1h.feather"]


def test_write_feather_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "BTC_USDT-1h.feather"
    old = make_candles(rows=5, seed=1)
    write_candles_feather(old, path)

    def fail_midway(frame, destination, **kwargs):
        destination.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(loading.feather, "write_feather", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write_candles_feather(make_candles(rows=5, seed=2), path)
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["BTC_USDT-1h.feather"]
    pd.testing.assert_frame_equal(read_candles(source_for(path, "feather")), old)


def test_write_feather_missing_column(tmp_path):
    with pytest.raises(ValueError, match=r"BTC_USDT-1h\.feather: missing columns \['volume'\]"):
        write_candles_feather(make_candles(rows=3).drop(columns="volume"), tmp_path / "BTC_USDT-1h.feather")


# Universe


def test_universe_all_and_subset(tmp_path):
    for name in ["ETH_USDT-1h.feather", "BTC_USDT-1h.json", "SOLUSDT-1h-2024-01.csv", "ADA_USDT-4h.feather"]:
        (tmp_path / name).write_bytes(b"")

    assert discover_universe(tmp_path, "1h") == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert discover_universe(tmp_path, "1h", ["SOLUSDT", "BTCUSDT", "SOLUSDT"]) == ["BTCUSDT", "SOLUSDT"]
    assert discover_universe(tmp_path, "4h") == ["ADAUSDT"]


def test_universe_missing_symbol(tmp_path):
    (tmp_path / "ETH_USDT-1h.feather").write_bytes(b"")
    (tmp_path / "BTC_USDT-1h.feather").write_bytes(b"")

    with pytest.raises(CandleSourceNotFoundError, match=r"DOGEUSDT; symbols found: BTCUSDT, ETHUSDT"):
        discover_universe(tmp_path, "1h", ["BTCUSDT", "DOGEUSDT"])


def test_universe_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="candle data folder not found: .*absent"):
        discover_universe(tmp_path / "absent", "1h")
