"""The closing summary table of `engine train`."""

from engine_assets.console import summary_table

SUMMARY = {
    "counts": {"failed": 1, "skipped": 1, "succeeded": 3, "timed_out": 0},
    "coins": [
        {"symbol": "AAAUSDT", "status": "succeeded", "head": "xgboost", "sharpe_net": 1.234, "total_return_net": 0.05,
         "buy_and_hold_return": -0.1, "buy_and_hold_sharpe": -0.5, "champion_changed": True, "champion": "models/A/1"},
        {"symbol": "BBBUSDT", "status": "succeeded", "head": "lightgbm", "sharpe_net": -0.5, "total_return_net": -0.01,
         "buy_and_hold_return": 0.2, "buy_and_hold_sharpe": 1.1, "champion_changed": False, "champion": "models/B/0"},
        {"symbol": "CCCUSDT", "status": "succeeded", "head": "xgboost", "sharpe_net": -9.0, "total_return_net": -0.5,
         "buy_and_hold_return": -0.4, "buy_and_hold_sharpe": -3.0, "champion_changed": False, "champion": None},
        {"symbol": "DDDUSDT", "status": "skipped", "reason": "insufficient history: 10 candles, need 5056"},
        {"symbol": "EEEUSDT", "status": "failed", "reason": "EEE_USDT-1h.feather: empty file"},
    ],
}


def _row(table: str, symbol: str) -> list[str]:
    (line,) = [line for line in table.splitlines() if line.startswith(symbol)]
    return line.split()


def test_table_champion_column():
    table = summary_table(SUMMARY)
    assert _row(table, "AAAUSDT")[7] == "changed"
    assert _row(table, "BBBUSDT")[7] == "kept"
    assert _row(table, "CCCUSDT")[7] == "none"


def test_table_numbers_formatted():
    row = _row(summary_table(SUMMARY), "AAAUSDT")
    assert row[3:7] == ["+1.23", "+5.0%", "-10.0%", "-0.50"]


def test_table_reasons_and_counts():
    table = summary_table(SUMMARY)
    assert "insufficient history: 10 candles, need 5056" in table
    assert "EEE_USDT-1h.feather: empty file" in table
    assert table.splitlines()[-1] == "5 coins: 3 succeeded, 1 skipped, 1 failed"
