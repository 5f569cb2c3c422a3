"""Table metadata for the Dagster UI, built from the engine's own documents.

Each builder takes what the assets already have (a model's metrics, a candle
report, the encoder's history, the roster and the summary) and returns a
``TableMetadataValue``, which the UI draws as a table on the asset's page.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

MISSING = "n/a"
# Decimal places of floats in the roster and summary tables. The files in storage keep full precision.
TABLE_DECIMALS = 4

# Holdout metrics, in table order: (key in metrics_to_dict, label, format).
METRIC_ROWS = (
    ("total_return", "total return", "percent"),
    ("annualized_return", "annual return", "percent"),
    # Annualized with 8,760 hourly candles a year.
    ("sharpe", "Sharpe", "ratio"),
    ("max_drawdown", "max drawdown", "percent"),
    ("trades", "trades", "count"),
    ("turnover", "turnover", "ratio"),
    ("hit_rate", "hit rate", "percent"),
    ("exposure", "exposure", "percent"),
    ("periods", "candles", "count"),
)
# Strategies compared in the metrics table: (column prefix, key in metrics.json).
STRATEGIES = (
    ("model", "holdout"),
    ("buy_and_hold", "buy_and_hold"),
    ("head_only", "head_only"),
)
# Candle findings, in table order: (key in CandleReport.to_dict, finding, what the engine did).
CANDLE_FINDINGS = (
    ("unsorted_rows", "rows out of date order", "sorted"),
    ("duplicates_exact", "exact duplicate rows", "dropped"),
    ("duplicates_conflicting", "rows sharing a timestamp with other values", "dropped, kept the highest volume"),
    ("dropped_invalid.non_finite_price", "NaN or infinite price", "dropped"),
    ("dropped_invalid.non_positive_price", "price at or below zero", "dropped"),
    ("dropped_invalid.invalid_volume", "NaN, infinite or negative volume", "dropped"),
    ("dropped_invalid.off_timeframe_boundary", "open time off the timeframe boundary", "dropped"),
    ("dropped_invalid.high_below_low", "high below low", "dropped"),
    ("repaired_high_low", "high/low not enclosing open/close", "widened"),
    ("gap_count", "gaps", "listed, not filled"),
    ("missing_candles", "missing candles", "left missing"),
)


def _format_value(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if kind == "percent":
        return f"{float(value):.2%}"
    if kind == "count":
        return f"{int(value):,}"
    return f"{float(value):.2f}"


def _table(rows: list[dict], columns: list[tuple[str, str, str | None]]) -> dg.TableMetadataValue:
    """Return a table value; ``columns`` are (name, type, description)."""
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name=name, type=kind, description=description) for name, kind, description in columns]
    )
    return dg.MetadataValue.table(records=[dg.TableRecord(row) for row in rows], schema=schema)


def _strategy_columns(metrics: Mapping) -> list[tuple[str, str, Mapping]]:
    """Return (column name, description, metric values) for each strategy and side present."""
    columns = []
    for prefix, key in STRATEGIES:
        block = metrics.get(key) or {}
        for side in ("net", "gross"):
            values = block.get(side)
            if isinstance(values, Mapping):
                cost = "after fees and slippage" if side == "net" else "before costs"
                columns.append((f"{prefix}_{side}", f"{prefix.replace('_', ' ')} on the holdout, {cost}", values))
    champion = (metrics.get("champion") or {}).get("holdout") or {}
    if isinstance(champion.get("net"), Mapping):
        columns.append(("champion_net", "the previous champion re-scored on the same holdout, after costs", champion["net"]))
    return columns


def metrics_table(metrics: Mapping) -> dg.TableMetadataValue:
    """Return one row per holdout metric, one column per strategy: the model, buy-and-hold,
    the head-only model, each after and before costs, and the champion it was compared with."""
    columns = _strategy_columns(metrics)
    if not columns:
        raise ValueError(
            f"no holdout metrics for {metrics.get('symbol', 'this coin')}: "
            "expected 'holdout' with 'net' and 'gross' blocks, as the coin stage writes to metrics.json"
        )
    rows = []
    for key, label, kind in METRIC_ROWS:
        row = {"metric": label}
        for name, _, values in columns:
            row[name] = _format_value(values.get(key), kind)
        rows.append(row)
    schema = [("metric", "string", None)] + [(name, "string", description) for name, description, _ in columns]
    return _table(rows, schema)


def feature_importance_table(importance: Mapping[str, float]) -> dg.TableMetadataValue:
    """Return the features ranked by the head's importance, highest first, with their share of the total."""
    ranked = sorted(importance.items(), key=lambda item: (-float(item[1]), item[0]))
    total = sum(max(float(value), 0.0) for _, value in ranked)
    rows = []
    for rank, (feature, value) in enumerate(ranked, start=1):
        share = float(value) / total if total > 0 else 0.0
        rows.append({"rank": rank, "feature": feature, "importance": round(float(value), 6), "share": f"{share:.1%}"})
    return _table(
        rows,
        [
            ("rank", "int", None),
            ("feature", "string", "input column; emb_* columns are the shared encoder's embedding"),
            ("importance", "float", "the head's own importance measure"),
            ("share", "string", "share of the listed features' total importance"),
        ],
    )


def _lookup(document: Mapping, dotted: str) -> Any:
    value: Any = document
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def candle_findings_table(report: Mapping) -> dg.TableMetadataValue:
    """Return every candle check with its count and what was done, zero counts included."""
    rows = []
    for key, finding, action in CANDLE_FINDINGS:
        count = _lookup(report, key)
        rows.append({"finding": finding, "count": int(count or 0), "action": action})
    return _table(rows, [("finding", "string", None), ("count", "int", None), ("action", "string", None)])


def gap_table(report: Mapping) -> dg.TableMetadataValue:
    """Return the listed gaps: the first missing candle (UTC) and how many are missing."""
    rows = [
        {"first_missing": gap.get("first_missing") or MISSING, "missing_candles": int(gap.get("missing_candles") or 0)}
        for gap in report.get("gaps", [])
    ]
    return _table(rows, [("first_missing", "string", "open time of the first missing candle"), ("missing_candles", "int", None)])


def encoder_history_table(history: Iterable[Mapping]) -> dg.TableMetadataValue:
    """Return the encoder's training and validation loss per epoch."""
    rows = [
        {
            "epoch": int(record["epoch"]),
            "train_loss": _round(record.get("train_loss"), 6),
            "val_loss": _round(record.get("val_loss"), 6),
        }
        for record in history
    ]
    return _table(rows, [("epoch", "int", None), ("train_loss", "float", None), ("val_loss", "float", None)])


def _round(value: Any, digits: int = TABLE_DECIMALS) -> Any:
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    return value


def _cell(value: Any) -> Any:
    """Return a value a TableRecord accepts: str, int, float, bool or None."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return _round(value)
    return str(value)


def _records_table(records: list[dict], first: list[str]) -> dg.TableMetadataValue:
    """Return flat records as a table: the ``first`` columns that occur, then every other key in order of appearance."""
    names = [name for name in first if any(name in record for record in records)]
    for record in records:
        names.extend(name for name in record if name not in names)
    rows = [{name: _cell(record.get(name)) for name in names} for record in records]
    columns = []
    for name in names:
        values = [row[name] for row in rows if row[name] is not None]
        kind = _column_type(values)
        columns.append((name, kind, None))
    return _table(rows, columns)


def _column_type(values: list) -> str:
    if values and all(isinstance(value, bool) for value in values):
        return "bool"
    if values and all(isinstance(value, int) and not isinstance(value, bool) for value in values):
        return "int"
    if values and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
        return "float"
    return "string"


# The roster's fields per coin, split into three tables that fit the UI's width:
# (metadata key, nested field or None for the top level, leading columns).
ROSTER_TABLES = (
    ("roster", None, ["status", "champion", "champion_head", "champion_since", "champion_changed", "encoder", "reason"]),
    ("roster_today", "today", ["head", "sharpe_net", "total_return_net", "buy_and_hold_return", "buy_and_hold_sharpe"]),
    ("roster_champion_holdout", "champion_holdout_net", ["sharpe", "total_return", "max_drawdown", "trades"]),
)


def roster_tables(roster: Mapping) -> dict[str, dg.TableMetadataValue]:
    """Return ``champions/roster.json`` as three tables with one row per coin.

    ``roster`` has each coin's status and champion, ``roster_today`` today's
    training result (``today`` in the file), and ``roster_champion_holdout``
    the champion's holdout score after costs when it was promoted
    (``champion_holdout_net``). Together they hold every field of every coin;
    floats are rounded to TABLE_DECIMALS places.
    """
    coins = roster.get("coins", {})
    nested = {field for _, field, _ in ROSTER_TABLES if field}
    tables = {}
    for key, field, leading in ROSTER_TABLES:
        records = []
        for symbol, coin in coins.items():
            if field is None:
                values = {name: value for name, value in coin.items() if name not in nested}
            else:
                values = dict(coin.get(field) or {})
            records.append({"symbol": symbol, **values})
        tables[key] = _records_table(records, ["symbol", *leading])
    return tables


def summary_table(summary: Mapping) -> dg.TableMetadataValue:
    """Return one row per coin of the day's ``engine_summary.json``."""
    first = [
        "symbol",
        "status",
        "head",
        "sharpe_net",
        "total_return_net",
        "buy_and_hold_return",
        "buy_and_hold_sharpe",
        "champion_changed",
        "champion",
        "attempts",
        "reason",
    ]
    return _records_table(list(summary.get("coins", [])), first)
