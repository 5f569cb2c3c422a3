"""Tests of Binance public-data archive imports (checksums, time units, partial days) against a local server."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from engine_assets.data.download import archives
from engine_assets.data.download.archives import (
    ArchiveError,
    ArchiveImportError,
    archive_periods,
    import_archives,
    parse_checksum,
)
from engine_assets.data.download.cli import add_download_parser, run_download
from engine_assets.data.download.merge import PartialDay, candle_file_path, partial_state_path, write_partial_state
from engine_assets.data.loading import BINANCE_KLINE_COLUMNS, write_candles_feather
from engine_assets.settings import EngineSettings
from engine_assets_tests.binance_server import FakeBinance, kline_rows_for

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv" / "binance" / "BTC_USDT-1h.feather"
HOUR_MS = 3_600_000
NOW = pd.Timestamp("2026-01-01", tz="UTC")


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    if not SAMPLE.exists():
        pytest.skip(f"sample candles not found at {SAMPLE}")
    return pd.read_feather(SAMPLE)


@pytest.fixture
def server():
    with FakeBinance({}) as fake:
        yield fake


def _period(frame: pd.DataFrame, first: str, last: str) -> pd.DataFrame:
    dates = frame["date"]
    chosen = frame.loc[(dates >= pd.Timestamp(first, tz="UTC")) & (dates < pd.Timestamp(last, tz="UTC"))]
    return chosen.reset_index(drop=True)


def _csv_text(rows: list[list[str]], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(BINANCE_KLINE_COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()


def _publish(
    server: FakeBinance, label: str, csv_text: str, period: str = "monthly", digest: str | None = None
) -> bytes:
    """Serve ``BTCUSDT-1h-{label}.zip`` and its checksum; ``digest`` overrides the correct SHA256."""
    name = f"BTCUSDT-1h-{label}"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}.csv", csv_text)
    payload = buffer.getvalue()
    folder = f"/data/spot/{period}/klines/BTCUSDT/1h"
    server.files[f"{folder}/{name}.zip"] = payload
    checksum = digest or hashlib.sha256(payload).hexdigest()
    server.files[f"{folder}/{name}.zip.CHECKSUM"] = f"{checksum}  {name}.zip\n".encode()
    return payload


def _publish_frame(server, frame, label, unit="ms", header=False, period="monthly") -> None:
    _publish(server, label, _csv_text(list(kline_rows_for(frame, HOUR_MS, unit)), header), period)


def test_months_ms_and_us_merged(tmp_path, server, btc):
    october = _period(btc, "2024-10-01", "2024-11-01")
    january = _period(btc, "2025-01-01", "2025-02-01")
    _publish_frame(server, october, "2024-10", unit="ms", header=False)
    _publish_frame(server, january, "2025-01", unit="us", header=True)

    result = import_archives(tmp_path, "BTCUSDT", "1h", server.url, months=["2025-01", "2024-10"], now=NOW)

    stored = pd.read_feather(candle_file_path(tmp_path, "BTCUSDT", "1h"))
    expected = pd.concat([october, january], ignore_index=True)
    pd.testing.assert_frame_equal(stored, expected)
    assert stored["date"].is_monotonic_increasing
    assert stored["date"].is_unique
    assert stored["date"].min() >= pd.Timestamp("2017-01-01", tz="UTC")
    assert stored["date"].max() < pd.Timestamp("2100-01-01", tz="UTC")
    assert len(stored) == 31 * 24 * 2
    assert result.status == "updated"
    assert result.rows_added == 31 * 24 * 2
    assert result.files == ["BTCUSDT-1h-2024-10.zip", "BTCUSDT-1h-2025-01.zip"]
    assert result.partial_days == []
    assert result.gaps == []


def test_checksum_mismatch_not_parsed(tmp_path, server, btc, monkeypatch):
    good = _period(btc, "2024-10-01", "2024-11-01")
    _publish_frame(server, good, "2024-10")
    november = list(kline_rows_for(_period(btc, "2024-11-01", "2024-12-01"), HOUR_MS))
    _publish(server, "2024-11", _csv_text(november, header=False), digest="0" * 64)
    opened = []
    real_read = archives.read_archive_zip

    def recording_read(payload: bytes, name: str) -> bytes:
        opened.append(name)
        return real_read(payload, name)

    monkeypatch.setattr(archives, "read_archive_zip", recording_read)

    expected = r"BTCUSDT-1h-2024-11\.zip: SHA256 mismatch \(expected 0{64}"
    with pytest.raises(ArchiveImportError, match=expected) as caught:
        import_archives(tmp_path, "BTCUSDT", "1h", server.url, months=["2024-10", "2024-11"], now=NOW)

    assert list(caught.value.failures) == ["BTCUSDT-1h-2024-11.zip"]
    assert opened == ["BTCUSDT-1h-2024-10.zip"]
    # All or nothing: the good month is not stored either.
    assert not candle_file_path(tmp_path, "BTCUSDT", "1h").exists()


def test_truncated_day_partial(tmp_path, server, btc):
    day = _period(btc, "2025-01-15", "2025-01-16")
    _publish_frame(server, day.iloc[:20], "2025-01-15", unit="us", header=True, period="daily")

    result = import_archives(tmp_path, "BTCUSDT", "1h", server.url, days=["2025-01-15"], now=NOW)

    path = candle_file_path(tmp_path, "BTCUSDT", "1h")
    assert result.partial_days == [dt.date(2025, 1, 15)]
    assert [(gap.start, gap.count) for gap in result.gaps] == [(pd.Timestamp("2025-01-15 20:00", tz="UTC"), 4)]
    state = json.loads(partial_state_path(path).read_text())
    assert state["partial_days"] == {"2025-01-15": {"candles": 20, "expected": 24, "refetches": 0}}
    assert len(pd.read_feather(path)) == 20


def test_partial_day_completed_by_archive(tmp_path, server, btc):
    day = _period(btc, "2025-01-15", "2025-01-16")
    path = candle_file_path(tmp_path, "BTCUSDT", "1h")
    stale = day.iloc[:20].copy()
    stale["close"] = 1.0
    write_candles_feather(stale, path)
    write_partial_state(partial_state_path(path), "BTCUSDT", "1h", {dt.date(2025, 1, 15): PartialDay(20, 24)})
    _publish_frame(server, day, "2025-01-15", period="daily")

    result = import_archives(tmp_path, "BTCUSDT", "1h", server.url, days=[dt.date(2025, 1, 15)], now=NOW)

    assert (result.rows_added, result.rows_replaced) == (4, 20)
    assert result.partial_days == []
    assert not partial_state_path(path).exists()
    pd.testing.assert_frame_equal(pd.read_feather(path), day)


def test_final_day_not_replaced(tmp_path, server, btc):
    day = _period(btc, "2025-01-15", "2025-01-16")
    path = candle_file_path(tmp_path, "BTCUSDT", "1h")
    write_candles_feather(day, path)
    changed = day.copy()
    changed["close"] = 1.0
    _publish_frame(server, changed, "2025-01-15", period="daily")

    result = import_archives(tmp_path, "BTCUSDT", "1h", server.url, days=["2025-01-15"], now=NOW)

    assert result.status == "up_to_date"
    assert result.rows_ignored == 24
    pd.testing.assert_frame_equal(pd.read_feather(path), day)


def test_mixed_units_rejected(tmp_path, server, btc):
    rows = list(kline_rows_for(_period(btc, "2024-11-01", "2024-12-01"), HOUR_MS))
    for row in rows[100:103]:
        row[0] = str(int(row[0]) * 1000)
    _publish(server, "2024-11", _csv_text(rows, header=False))

    with pytest.raises(
        ArchiveImportError,
        match=r"BTCUSDT-1h-2024-11\.zip: open_time mixes milliseconds \(717 rows, first at data row 1\) "
        r"and microseconds \(3 rows, first at data row 101\)",
    ):
        import_archives(tmp_path, "BTCUSDT", "1h", server.url, months=["2024-11"], now=NOW)

    assert not candle_file_path(tmp_path, "BTCUSDT", "1h").exists()


def test_open_time_after_2100_rejected(tmp_path, server, btc):
    rows = list(kline_rows_for(_period(btc, "2024-12-01", "2025-01-01"), HOUR_MS))
    rows[5][0] = "4102444800000"
    _publish(server, "2024-12", _csv_text(rows, header=False))

    expected = r"BTCUSDT-1h-2024-12\.zip: data row 6 opens at 2100-01-01 00:00:00\+00:00, not between 2017 and 2100"
    with pytest.raises(ArchiveImportError, match=expected):
        import_archives(tmp_path, "BTCUSDT", "1h", server.url, months=["2024-12"], now=NOW)


def test_row_outside_file_month_rejected(tmp_path, server, btc):
    rows = list(kline_rows_for(_period(btc, "2024-12-01", "2025-01-01"), HOUR_MS))
    rows[-1][0] = str(int(rows[-1][0]) + 24 * HOUR_MS)
    _publish(server, "2024-12", _csv_text(rows, header=False))

    expected = r"data row 744 opens at 2025-01-01 23:00:00\+00:00, not in the file's period 2024-12-01 to 2024-12-31"
    with pytest.raises(ArchiveImportError, match=expected):
        import_archives(tmp_path, "BTCUSDT", "1h", server.url, months=["2024-12"], now=NOW)


def test_month_before_2017_rejected(tmp_path, server):
    expected = r"BTCUSDT-1h-2016-12: outside the supported range 2017-01-01 to 2100-01-01"
    with pytest.raises(ArchiveError, match=expected):
        import_archives(tmp_path, "BTCUSDT", "1h", server.url, months=["2016-12"], now=NOW)

    assert server.requests == []


def test_missing_file_named(tmp_path, server):
    expected = r"BTCUSDT-1h-2025-02-03\.zip\.CHECKSUM: not found at http://127\.0\.0\.1"
    with pytest.raises(ArchiveImportError, match=expected):
        import_archives(tmp_path, "BTCUSDT", "1h", server.url, days=["2025-02-03"], now=NOW)


def test_zip_with_wrong_member_rejected(tmp_path, server):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    payload = buffer.getvalue()
    folder = "/data/spot/daily/klines/BTCUSDT/1h"
    server.files[f"{folder}/BTCUSDT-1h-2025-01-15.zip"] = payload
    checksum = hashlib.sha256(payload).hexdigest()
    server.files[f"{folder}/BTCUSDT-1h-2025-01-15.zip.CHECKSUM"] = f"{checksum}  BTCUSDT-1h-2025-01-15.zip".encode()

    with pytest.raises(ArchiveImportError, match=r"expected one file BTCUSDT-1h-2025-01-15\.csv, found notes\.txt"):
        import_archives(tmp_path, "BTCUSDT", "1h", server.url, days=["2025-01-15"], now=NOW)


def test_parse_checksum_forms():
    digest = "ab" * 32

    assert parse_checksum(f"{digest}  BTCUSDT-1h-2025-01.zip\n", "BTCUSDT-1h-2025-01.zip") == digest
    with pytest.raises(ArchiveError, match=r"names 'ETHUSDT-1h-2025-01\.zip' instead of 'BTCUSDT-1h-2025-01\.zip'"):
        parse_checksum(f"{digest}  ETHUSDT-1h-2025-01.zip", "BTCUSDT-1h-2025-01.zip")
    with pytest.raises(ArchiveError, match=r"expected one line '<sha256>  <file name>'"):
        parse_checksum("<html>not found</html>", "BTCUSDT-1h-2025-01.zip")


def test_archive_periods_split():
    months, days = archive_periods(dt.date(2024, 9, 28), dt.date(2024, 12, 2))

    assert months == ["2024-10", "2024-11"]
    assert days == ["2024-09-28", "2024-09-29", "2024-09-30", "2024-12-01", "2024-12-02"]


def test_archive_periods_whole_month():
    assert archive_periods(dt.date(2025, 2, 1), dt.date(2025, 2, 28)) == (["2025-02"], [])


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="engine")
    add_download_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_archives_exit_status(tmp_path, server, btc):
    _publish_frame(server, _period(btc, "2024-10-01", "2024-11-01"), "2024-10")
    settings = EngineSettings(home=tmp_path / "home", data_dir=tmp_path)
    argv = ["download-data", "--archives", "--archive-url", server.url, "--symbols", "BTCUSDT"]

    out = io.StringIO()
    status = run_download(_parse([*argv, "--start", "2024-10-01", "--end", "2024-10-31"]), settings, out=out)

    assert status == 0
    assert "[1/1] BTCUSDT: updated, 744 added, 0 replaced" in out.getvalue()

    out = io.StringIO()
    status = run_download(_parse([*argv, "--months", "2024-10,2024-11"]), settings, out=out)

    assert status == 1
    assert "BTCUSDT-1h-2024-11.zip.CHECKSUM: not found" in out.getvalue()
