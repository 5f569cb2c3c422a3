"""Tests of incremental candle downloads through ccxt against a local Binance server, and of the merge rules."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine_assets.data.download import merge
from engine_assets.data.download.cli import add_download_parser, run_download
from engine_assets.data.download.exchange import (
    RetryPolicy,
    create_exchange,
    download_candles,
    parse_retry_after,
)
from engine_assets.data.download.merge import (
    Gap,
    candle_file_path,
    drop_open_candles,
    find_gaps,
    find_partial_days,
    merge_candles,
    partial_state_path,
    reject_misaligned,
)
from engine_assets.data.loading import write_candles_feather
from engine_assets.settings import EngineSettings
from engine_assets_tests.binance_server import FakeBinance, RateLimitResponse

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "ohlcv" / "binance"
HOUR = pd.Timedelta(hours=1)


def _read_sample(name: str, rows: int) -> pd.DataFrame:
    path = SAMPLE_DIR / name
    if not path.exists():
        pytest.skip(f"sample candles not found at {path}")
    return pd.read_feather(path).iloc[:rows].reset_index(drop=True)


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    return _read_sample("BTC_USDT-1h.feather", 3000)


@pytest.fixture(scope="module")
def eth() -> pd.DataFrame:
    return _read_sample("ETH_USDT-1h.feather", 3000)


@pytest.fixture
def fake(btc, eth):
    # The server's clock is 30 minutes into the last candle, so that candle is still open.
    now_ms = int(btc["date"].iloc[-1].value // 1_000_000) + 30 * 60_000
    with FakeBinance({"BTCUSDT": btc, "ETHUSDT": eth}, now_ms=now_ms) as server:
        yield server


@pytest.fixture
def exchange(fake):
    return create_exchange("binance", api_url=fake.url)


@pytest.fixture
def waits() -> list[float]:
    return []


@pytest.fixture
def retry(waits) -> RetryPolicy:
    return RetryPolicy(max_attempts=3, sleep=waits.append)


def _now(fake: FakeBinance) -> pd.Timestamp:
    return pd.Timestamp(fake.now_ms, unit="ms", tz="UTC")


def _store(data_dir: Path, symbol: str, frame: pd.DataFrame) -> Path:
    return write_candles_feather(frame, candle_file_path(data_dir, symbol, "1h"))


def _start_times(fake: FakeBinance, symbol: str) -> list[pd.Timestamp]:
    return [
        pd.Timestamp(int(request.query["startTime"]), unit="ms", tz="UTC")
        for request in fake.klines_requests(symbol)
    ]


# Downloads against the local server.


def test_download_incremental_pages(tmp_path, fake, exchange, retry, btc):
    path = _store(tmp_path, "BTCUSDT", btc.iloc[:1000])
    events = []

    results = download_candles(
        tmp_path, ["BTCUSDT"], "1h", now=_now(fake), exchange=exchange, progress=events.append, limit=500, retry=retry
    )

    result = results["BTCUSDT"]
    assert result.status == "updated"
    assert result.error is None
    # Rows 1000 to 2998 are new and closed; row 2999 is still open.
    assert result.rows_added == 1999
    assert result.rows_ignored == 0
    assert result.dropped_open == 1
    assert result.first_new == btc["date"].iloc[1000]
    assert result.last_candle == btc["date"].iloc[2998]
    assert result.gaps == []
    assert _start_times(fake, "BTCUSDT") == [btc["date"].iloc[index] for index in (1000, 1500, 2000, 2500)]
    assert {request.query["limit"] for request in fake.klines_requests("BTCUSDT")} == {"500"}

    stored = pd.read_feather(path)
    pd.testing.assert_frame_equal(stored, btc.iloc[:2999].reset_index(drop=True))
    assert stored["date"].is_unique
    assert stored["date"].is_monotonic_increasing

    stages = [event.stage for event in events]
    assert stages[0] == "start"
    assert stages[-1] == "done"
    assert stages.count("page") == 4
    assert events[-1].result is result


def test_download_repeat_requests_nothing(tmp_path, fake, exchange, retry, btc):
    _store(tmp_path, "BTCUSDT", btc.iloc[:2999])

    result = download_candles(tmp_path, ["BTCUSDT"], "1h", now=_now(fake), exchange=exchange, retry=retry)["BTCUSDT"]

    assert result.status == "up_to_date"
    assert result.rows_added == 0
    assert fake.klines_requests("BTCUSDT") == []


def test_download_drops_open_candle(tmp_path, fake, exchange, retry, btc):
    since = btc["date"].iloc[2990]

    result = download_candles(
        tmp_path, ["BTCUSDT"], "1h", since=since, now=_now(fake), exchange=exchange, retry=retry
    )["BTCUSDT"]

    stored = pd.read_feather(candle_file_path(tmp_path, "BTCUSDT", "1h"))
    assert result.dropped_open == 1
    assert stored["date"].tolist() == btc["date"].iloc[2990:2999].tolist()
    assert btc["date"].iloc[2999] not in set(stored["date"])


def test_download_new_coin_since(tmp_path, fake, exchange, retry, btc):
    since = btc["date"].iloc[2900] - pd.Timedelta(minutes=20)

    result = download_candles(
        tmp_path, ["BTC/USDT"], "1h", since=since, now=_now(fake), exchange=exchange, retry=retry
    )["BTCUSDT"]

    # ``since`` is rounded up to the next boundary.
    assert _start_times(fake, "BTCUSDT")[0] == btc["date"].iloc[2900]
    assert result.rows_added == 99
    assert result.path == tmp_path / "BTC_USDT-1h.feather"


@pytest.mark.parametrize("status", [429, 418])
def test_download_retries_rate_limit(tmp_path, fake, exchange, retry, waits, btc, status):
    _store(tmp_path, "BTCUSDT", btc.iloc[:2900])
    fake.rate_limit_responses["BTCUSDT"] = [RateLimitResponse(status=status, retry_after="1")]

    result = download_candles(tmp_path, ["BTCUSDT"], "1h", now=_now(fake), exchange=exchange, retry=retry)["BTCUSDT"]

    assert waits == [1.0]
    assert result.retries == 1
    assert result.status == "updated"
    assert result.rows_added == 99
    # The rate-limited request and its retry ask for the same start.
    starts = _start_times(fake, "BTCUSDT")
    assert starts[0] == starts[1] == btc["date"].iloc[2900]


def test_download_backoff_bounded(tmp_path, fake, exchange, retry, waits, btc):
    path = _store(tmp_path, "BTCUSDT", btc.iloc[:2900])
    fake.fail_after_responses["BTCUSDT"] = 0

    result = download_candles(tmp_path, ["BTCUSDT"], "1h", now=_now(fake), exchange=exchange, retry=retry)["BTCUSDT"]

    # No Retry-After: waits of 1 s, then 2 s, then the third attempt fails for good.
    assert waits == [1.0, 2.0]
    assert result.status == "failed"
    assert "Internal error" in result.error
    assert len(fake.klines_requests("BTCUSDT")) == 3
    assert len(pd.read_feather(path)) == 2900


def test_download_long_ban_stops(tmp_path, fake, exchange, retry, waits, btc):
    _store(tmp_path, "BTCUSDT", btc.iloc[:2900])
    fake.rate_limit_responses["BTCUSDT"] = [RateLimitResponse(status=418, retry_after="3600")]

    results = download_candles(
        tmp_path, ["BTCUSDT", "ETHUSDT"], "1h", now=_now(fake), exchange=exchange, retry=retry
    )

    assert waits == []
    assert results["BTCUSDT"].status == "failed"
    assert "RateLimitBanError" in results["BTCUSDT"].error
    assert "3600 s" in results["BTCUSDT"].error
    assert results["ETHUSDT"].status == "failed"
    assert results["ETHUSDT"].error.startswith("not attempted")
    assert fake.klines_requests("ETHUSDT") == []


def test_download_reports_gap(tmp_path, fake, exchange, retry, btc):
    _store(tmp_path, "BTCUSDT", btc.iloc[:2900])
    missing = btc["date"].iloc[2950:2953]
    fake.missing_open_times["BTCUSDT"] = {int(stamp.value // 1_000_000) for stamp in missing}

    result = download_candles(tmp_path, ["BTCUSDT"], "1h", now=_now(fake), exchange=exchange, retry=retry)["BTCUSDT"]

    assert result.gaps == [Gap(start=missing.iloc[0], end=missing.iloc[-1], count=3)]
    assert result.rows_added == 96
    stored = pd.read_feather(candle_file_path(tmp_path, "BTCUSDT", "1h"))
    assert not stored["date"].isin(missing).any()


def test_download_failing_coin_isolated(tmp_path, fake, exchange, retry, btc, eth):
    btc_path = _store(tmp_path, "BTCUSDT", btc.iloc[:1000])
    eth_path = _store(tmp_path, "ETHUSDT", eth.iloc[:1000])
    eth_bytes = eth_path.read_bytes()
    # ETH returns its first page, then fails on every later request.
    fake.fail_after_responses["ETHUSDT"] = 1

    results = download_candles(
        tmp_path, ["ETHUSDT", "BTCUSDT"], "1h", now=_now(fake), exchange=exchange, limit=500, retry=retry
    )

    assert results["ETHUSDT"].status == "failed"
    assert "Internal error" in results["ETHUSDT"].error
    assert eth_path.read_bytes() == eth_bytes
    assert not partial_state_path(eth_path).exists()
    assert results["BTCUSDT"].status == "updated"
    assert len(pd.read_feather(btc_path)) == 2999


def test_download_crash_keeps_file(tmp_path, fake, exchange, retry, btc, monkeypatch):
    path = _store(tmp_path, "BTCUSDT", btc.iloc[:2900])
    before = path.read_bytes()

    def crash(table, destination, *args, **kwargs):
        destination.write(b"half a feather file")
        raise OSError("disk full")

    monkeypatch.setattr("engine_assets.data.loading.feather.write_feather", crash)
    result = download_candles(tmp_path, ["BTCUSDT"], "1h", now=_now(fake), exchange=exchange, retry=retry)["BTCUSDT"]

    assert result.status == "failed"
    assert "disk full" in result.error
    assert path.read_bytes() == before
    assert sorted(item.name for item in tmp_path.iterdir()) == [path.name]


def test_download_partial_day_refetched(tmp_path, fake, exchange, retry, btc):
    # Day 2024-12-20 lacks 4 hours in the first response, then the exchange fills them.
    _store(tmp_path, "BTCUSDT", btc.iloc[:2000])
    day = pd.Timestamp("2024-12-20", tz="UTC")
    hours = [day + HOUR * offset for offset in range(10, 14)]
    fake.missing_open_times["BTCUSDT"] = {int(stamp.value // 1_000_000) for stamp in hours}
    path = candle_file_path(tmp_path, "BTCUSDT", "1h")
    now = _now(fake)

    first = download_candles(tmp_path, ["BTCUSDT"], "1h", now=now, exchange=exchange, retry=retry)["BTCUSDT"]

    assert first.partial_days == [dt.date(2024, 12, 20)]
    state = json.loads(partial_state_path(path).read_text())
    assert state["partial_days"] == {"2024-12-20": {"candles": 20, "expected": 24, "refetches": 0}}

    fake.missing_open_times.clear()
    fake.requests.clear()
    second = download_candles(tmp_path, ["BTCUSDT"], "1h", now=now, exchange=exchange, retry=retry)["BTCUSDT"]

    assert _start_times(fake, "BTCUSDT")[0] == day
    assert second.rows_added == 4
    assert second.rows_replaced == 20
    # Candles after the partial day were final and stay as stored.
    assert second.rows_ignored == len(btc.loc[btc["date"] >= day + pd.Timedelta(days=1)].iloc[:-1])
    assert second.partial_days == []
    assert not partial_state_path(path).exists()
    pd.testing.assert_frame_equal(pd.read_feather(path), btc.iloc[:2999].reset_index(drop=True))


def test_download_partial_day_bounded(tmp_path, fake, exchange, retry, btc):
    _store(tmp_path, "BTCUSDT", btc.iloc[:2900])
    hole = btc["date"].iloc[2950]
    fake.missing_open_times["BTCUSDT"] = {int(hole.value // 1_000_000)}
    path = candle_file_path(tmp_path, "BTCUSDT", "1h")
    now = _now(fake)

    for _ in range(4):
        download_candles(tmp_path, ["BTCUSDT"], "1h", now=now, exchange=exchange, retry=retry)
    fake.requests.clear()
    last = download_candles(tmp_path, ["BTCUSDT"], "1h", now=now, exchange=exchange, retry=retry)["BTCUSDT"]

    # Three refetches happened; the day stays listed partial but no longer moves the start.
    state = json.loads(partial_state_path(path).read_text())
    assert state["partial_days"][hole.date().isoformat()]["refetches"] == merge.MAX_PARTIAL_REFETCHES
    assert last.status == "up_to_date"
    assert fake.klines_requests("BTCUSDT") == []


def test_download_unknown_symbol_fails(tmp_path, fake, exchange, retry):
    results = download_candles(tmp_path, ["SOLUSDT"], "1h", now=_now(fake), exchange=exchange, retry=retry)

    assert results["SOLUSDT"].status == "failed"
    assert "BadSymbol" in results["SOLUSDT"].error
    assert not candle_file_path(tmp_path, "SOLUSDT", "1h").exists()


def test_download_markets_spot_only(tmp_path, fake, exchange, retry):
    download_candles(tmp_path, ["BTCUSDT"], "1h", since="2025-01-01", now=_now(fake), exchange=exchange, retry=retry)

    assert set(fake.paths_requested()) == {"/api/v3/exchangeInfo", "/api/v3/klines"}


# Command line.


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="engine")
    add_download_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_help_documents_options(capsys):
    with pytest.raises(SystemExit):
        _parse(["download-data", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--symbols", "--timeframe", "--exchange", "--since", "--data-dir", "--archives",
                   "--archive-url", "--months", "--days", "--start", "--end", "--api-url", "--limit"):
        assert option in text
    assert "default: binance" in text
    assert "default: 1000" in text


def test_cli_exit_status(tmp_path, fake, btc):
    _store(tmp_path, "BTCUSDT", btc.iloc[:2990])
    settings = EngineSettings(home=tmp_path / "home", data_dir=tmp_path / "unused")
    # The CLI uses the clock: the fake's candles are all closed by now.
    fake.now_ms = int(btc["date"].iloc[-1].value // 1_000_000)
    argv = ["download-data", "--data-dir", str(tmp_path), "--api-url", fake.url]

    out = io.StringIO()
    status = run_download(_parse([*argv, "--symbols", "BTCUSDT"]), settings, out=out)

    assert status == 0
    assert "[1/1] BTCUSDT: updated, 10 added, 0 replaced" in out.getvalue()
    assert len(pd.read_feather(candle_file_path(tmp_path, "BTCUSDT", "1h"))) == 3000

    out = io.StringIO()
    status = run_download(_parse([*argv, "--symbols", "BTCUSDT,SOLUSDT"]), settings, out=out)

    assert status == 1
    assert "SOLUSDT: failed: BadSymbol" in out.getvalue()


def test_cli_symbols_from_data_dir(tmp_path, fake, btc, eth):
    _store(tmp_path, "ETHUSDT", eth.iloc[:2995])
    settings = EngineSettings(home=tmp_path / "home", data_dir=tmp_path)
    fake.now_ms = int(btc["date"].iloc[-1].value // 1_000_000)

    out = io.StringIO()
    status = run_download(_parse(["download-data", "--api-url", fake.url]), settings, out=out)

    assert status == 0
    assert fake.klines_requests("BTCUSDT") == []
    assert _start_times(fake, "ETHUSDT")[0] == eth["date"].iloc[2995]
    assert len(pd.read_feather(candle_file_path(tmp_path, "ETHUSDT", "1h"))) == 3000


def test_cli_archive_options_need_flag(tmp_path):
    settings = EngineSettings(home=tmp_path / "home", data_dir=tmp_path)

    status = run_download(_parse(["download-data", "--symbols", "BTCUSDT", "--months", "2024-10"]), settings)

    assert status == 2


# Merge rules as pure functions.


def _frame(hours: list[str], close: float = 1.0) -> pd.DataFrame:
    dates = pd.to_datetime(hours, utc=True).astype("datetime64[ns, UTC]")
    values = np.full(len(hours), close)
    return pd.DataFrame(
        {"date": dates, "open": values, "high": values, "low": values, "close": values, "volume": values}
    )


def test_drop_open_candles():
    frame = _frame(["2025-01-01 10:00", "2025-01-01 11:00", "2025-01-01 12:00"])

    closed, dropped = drop_open_candles(frame, "1h", pd.Timestamp("2025-01-01 12:30", tz="UTC"))

    assert dropped == 1
    assert closed["date"].dt.hour.tolist() == [10, 11]


def test_drop_open_candles_boundary():
    frame = _frame(["2025-01-01 11:00"])

    closed, dropped = drop_open_candles(frame, "1h", pd.Timestamp("2025-01-01 12:00", tz="UTC"))

    assert dropped == 0
    assert len(closed) == 1


def test_reject_misaligned_logs_row(caplog):
    frame = _frame(["2025-01-01 10:00", "2025-01-01 10:30", "2025-01-01 11:00"])

    aligned, rejected = reject_misaligned(frame, "1h", "BTCUSDT (BTC_USDT-1h.feather)")

    assert aligned["date"].dt.hour.tolist() == [10, 11]
    assert [candle.row for candle in rejected] == [2]
    assert "1800 s past a 1h boundary" in rejected[0].reason
    assert "BTCUSDT (BTC_USDT-1h.feather): rejected row 2" in caplog.text


def test_merge_keeps_final_hours():
    stored = _frame(["2025-01-01 10:00", "2025-01-01 11:00"], close=1.0)
    fetched = _frame(["2025-01-01 11:00", "2025-01-01 12:00"], close=2.0)

    result = merge_candles(stored, fetched, replaceable_days=[])

    assert result.frame["date"].dt.hour.tolist() == [10, 11, 12]
    assert result.frame["close"].tolist() == [1.0, 1.0, 2.0]
    assert (result.added, result.replaced, result.ignored) == (1, 0, 1)


def test_merge_replaces_partial_day():
    stored = _frame(["2025-01-01 22:00", "2025-01-02 00:00"], close=1.0)
    fetched = _frame(["2025-01-01 22:00", "2025-01-01 23:00", "2025-01-02 00:00"], close=2.0)

    result = merge_candles(stored, fetched, replaceable_days=[dt.date(2025, 1, 1)])

    assert result.frame["date"].dt.hour.tolist() == [22, 23, 0]
    assert result.frame["close"].tolist() == [2.0, 2.0, 1.0]
    assert (result.added, result.replaced, result.ignored) == (1, 1, 1)
    assert result.frame["date"].is_unique


def test_merge_inserts_earlier_history():
    stored = _frame(["2025-01-01 12:00"])
    fetched = _frame(["2025-01-01 10:00", "2025-01-01 11:00"])

    result = merge_candles(stored, fetched, replaceable_days=[])

    assert result.frame["date"].dt.hour.tolist() == [10, 11, 12]
    assert result.frame["date"].is_monotonic_increasing


def test_find_gaps_with_bounds():
    dates = _frame(["2025-01-01 02:00", "2025-01-01 03:00", "2025-01-01 06:00"])["date"]

    gaps = find_gaps(
        dates, "1h", start=pd.Timestamp("2025-01-01 00:00", tz="UTC"), end=pd.Timestamp("2025-01-01 08:00", tz="UTC")
    )

    assert [(gap.start.hour, gap.end.hour, gap.count) for gap in gaps] == [(0, 1, 2), (4, 5, 2), (7, 7, 1)]


def test_find_partial_days_closed_only():
    hours = [f"2025-01-01 {hour:02d}:00" for hour in range(20)] + ["2025-01-02 00:00"]
    frame = _frame(hours)
    days = [dt.date(2025, 1, 1), dt.date(2025, 1, 2), dt.date(2025, 1, 3)]

    partial = find_partial_days(frame, "1h", days, pd.Timestamp("2025-01-02 05:00", tz="UTC"))

    # 2025-01-02 is still running and 2025-01-03 has no candle: neither is partial.
    assert partial == {dt.date(2025, 1, 1): 20}


def test_stored_unsorted_rejected(tmp_path, fake, exchange, retry):
    path = _store(tmp_path, "BTCUSDT", _frame(["2025-01-01 11:00", "2025-01-01 10:00"]))
    before = path.read_bytes()

    result = download_candles(tmp_path, ["BTCUSDT"], "1h", now=_now(fake), exchange=exchange, retry=retry)["BTCUSDT"]

    assert result.status == "failed"
    assert "BTC_USDT-1h.feather: open times do not strictly increase at row 2" in result.error
    assert path.read_bytes() == before


def test_parse_retry_after_forms():
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", clock=lambda: 1767225600.0) == 60.0


def test_download_rejects_ban_before_retry(tmp_path, fake, exchange, btc):
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=3, max_wait_seconds=5, sleep=waits.append)
    _store(tmp_path, "BTCUSDT", btc.iloc[:2900])
    fake.rate_limit_responses["BTCUSDT"] = [RateLimitResponse(status=429, retry_after="6")]

    result = download_candles(tmp_path, ["BTCUSDT"], "1h", now=_now(fake), exchange=exchange, retry=policy)["BTCUSDT"]

    assert waits == []
    assert "RateLimitBanError" in result.error
    assert "more than the 5 s limit" in result.error
