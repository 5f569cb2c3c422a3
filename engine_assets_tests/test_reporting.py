"""Plots and tables of the Dagster UI metadata, built from one real training run on two sample coins."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import re
import struct
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from engine_assets.data.validation import load_symbol_candles, validate_candles
from engine_assets.encoder.model import EncoderConfig
from engine_assets.features.build import build_features, build_label, next_returns, to_grid
from engine_assets.reporting import metadata as ui_metadata
from engine_assets.reporting import plots, tables
from engine_assets.scheduling.ledger import Ledger
from engine_assets.settings import EngineSettings
from engine_assets.storage.local import LocalArtifactStore
from engine_assets.storage.manifest import read_json, verify_folder
from engine_assets.training.coin_stage import LABEL_COLUMN, NEXT_RETURN_COLUMN, train_coin
from engine_assets.training.config import TrainingConfig
from engine_assets.training.encoder_stage import train_shared_encoder
from engine_assets.training.reports import build_roster, build_summary, publish_roster
from engine_assets_tests.conftest import link_samples

NOW = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
DAY = "20260301Z"
BASES = ["BTC", "ETH"]
SYMBOL = "BTCUSDT"
# Small enough to train in seconds, with two epochs so that the loss plot has two points.
ENCODER = EncoderConfig(
    window=16, embedding_dim=4, hidden=16, epochs=2, batch_size=256, max_samples_per_coin=500, target_horizon=4
)
TRAINING = TrainingConfig()
MAX_PNG_BYTES = 100_000


@dataclasses.dataclass
class RealRun:
    """One encoder and one coin model trained on real sample candles, with the day's roster and summary."""

    store: LocalArtifactStore
    data_dir: Path
    encoder_ref: dict
    metrics: dict
    model_path: str
    roster: dict
    summary: dict


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, sample_dir) -> RealRun:
    root = tmp_path_factory.mktemp("reporting")
    data_dir = link_samples(sample_dir, root / "data", BASES)
    settings = EngineSettings.from_env({"ENGINE_HOME": str(root / "home"), "ENGINE_DATA_DIR": str(data_dir)})
    store = LocalArtifactStore(settings.storage_root)
    ledger = Ledger(store, DAY, settings.home / "locks")
    encoder = train_shared_encoder(settings, store, ledger, TRAINING, ENCODER, threads=1, now=NOW)

    candles, _report = load_symbol_candles(data_dir, SYMBOL, "1h")
    grid = to_grid(candles, 3600)
    features = build_features(grid, TRAINING.features)
    features[LABEL_COLUMN] = build_label(grid, TRAINING.windows.label_horizon)
    features[NEXT_RETURN_COLUMN] = next_returns(grid)
    outcome = train_coin(
        SYMBOL,
        candles,
        features,
        encoder.ref,
        store,
        settings.cache_root,
        settings.home / "locks",
        3600,
        TRAINING,
        threads=1,
        now=NOW,
    )
    assert outcome.status == "succeeded", outcome.reason
    ledger.finish_coin(
        SYMBOL,
        outcome.status,
        artifact=outcome.model_path,
        champion=outcome.champion_path,
        champion_changed=outcome.champion_changed,
        metrics=outcome.key_metrics(),
        attempts=1,
    )
    ledger.finish_coin("ETHUSDT", "failed", reason="ETH_USDT-1h.feather: simulated failure", attempts=1)
    document = ledger.read()
    roster = build_roster(store, document, [SYMBOL, "ETHUSDT"])
    publish_roster(store, roster)
    summary = build_summary(document, roster)
    return RealRun(store, data_dir, encoder.ref, outcome.metrics, outcome.model_path, roster, summary)


def png_size(png: bytes) -> tuple[int, int]:
    """Return (width, height) from a PNG's IHDR chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def embedded_png(value: dg.MarkdownMetadataValue) -> bytes:
    match = re.fullmatch(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", value.md_str)
    assert match, value.md_str[:80]
    return base64.b64decode(match.group(1))


def rows(table: dg.TableMetadataValue) -> list[dict]:
    return [record.data for record in table.records]


def equity_frame(run: RealRun) -> pd.DataFrame:
    data = verify_folder(run.store, run.model_path, names=["equity.csv"])["equity.csv"]
    return plots.read_equity_csv(data)


def test_equity_csv_matches_metrics(real_run):
    equity = equity_frame(real_run)
    assert list(equity.columns) == ["model", "buy_and_hold", "head_only"]
    assert len(equity) == real_run.metrics["rows"]["holdout"]
    assert str(equity.index.tz) == "UTC"
    final = equity["model"].iloc[-1] - 1.0
    assert final == pytest.approx(real_run.metrics["holdout"]["net"]["total_return"], abs=1e-6)
    hold = equity["buy_and_hold"].iloc[-1] - 1.0
    assert hold == pytest.approx(real_run.metrics["buy_and_hold"]["net"]["total_return"], abs=1e-6)


def test_equity_plot_size(real_run):
    png = plots.equity_plot(equity_frame(real_run), "BTCUSDT: holdout equity after costs", "model (xgboost)")
    assert png_size(png) == (800, 400)
    assert len(png) < MAX_PNG_BYTES


def test_equity_plot_without_head_only(real_run):
    equity = equity_frame(real_run).drop(columns=["head_only"])
    assert png_size(plots.equity_plot(equity, "no baseline")) == (800, 400)


def test_equity_plot_empty_rejected():
    empty = pd.DataFrame({"model": [], "buy_and_hold": []})
    with pytest.raises(ValueError, match="no rows"):
        plots.equity_plot(empty, "BTCUSDT")


def test_equity_csv_missing_column():
    with pytest.raises(ValueError, match="no column buy_and_hold"):
        plots.read_equity_csv(b"date,model\n2026-01-01 00:00:00+00:00,1.0\n")


def test_loss_plot_real_history(real_run):
    history = real_run.encoder_ref["history"]
    assert [record["epoch"] for record in history] == [1, 2]
    png = plots.loss_plot(history)
    assert png_size(png) == (800, 400)
    assert len(png) < MAX_PNG_BYTES


def test_loss_plot_empty_rejected():
    with pytest.raises(ValueError, match="no epochs"):
        plots.loss_plot([])


def test_returns_plot_real_summary(real_run):
    png = plots.returns_plot(real_run.summary["coins"])
    assert png_size(png) == (800, 400)


def test_returns_plot_nothing_to_draw():
    assert plots.returns_plot([{"symbol": "ETHUSDT", "total_return_net": None}]) is None


def test_png_markdown_round_trip(real_run):
    png = plots.loss_plot(real_run.encoder_ref["history"])
    value = plots.png_markdown(png, "loss [by epoch]")
    assert value.md_str.startswith("![loss (by epoch)](data:image/png;base64,")
    assert embedded_png(value) == png


def test_png_markdown_rejects_other_bytes():
    with pytest.raises(ValueError, match="not a PNG"):
        plots.png_markdown(b"GIF89a", "equity")


def test_metrics_table_real_model(real_run):
    metrics = real_run.metrics
    table = tables.metrics_table(metrics)
    names = [column.name for column in table.schema.columns]
    assert names == [
        "metric",
        "model_net",
        "model_gross",
        "buy_and_hold_net",
        "buy_and_hold_gross",
        "head_only_net",
        "head_only_gross",
    ]
    by_metric = {row["metric"]: row for row in rows(table)}
    assert list(by_metric) == [label for _, label, _ in tables.METRIC_ROWS]
    assert by_metric["total return"]["model_net"] == f"{metrics['holdout']['net']['total_return']:.2%}"
    assert by_metric["total return"]["model_gross"] == f"{metrics['holdout']['gross']['total_return']:.2%}"
    assert by_metric["Sharpe"]["buy_and_hold_net"] == f"{metrics['buy_and_hold']['net']['sharpe']:.2f}"
    assert by_metric["trades"]["model_net"] == f"{metrics['holdout']['net']['trades']:,}"
    assert by_metric["candles"]["head_only_net"] == f"{metrics['head_only']['net']['periods']:,}"


def test_metrics_table_champion_column(real_run):
    metrics = json.loads(json.dumps(real_run.metrics))
    metrics["champion"] = {"path": "models/BTCUSDT/20260201_000000Z", "holdout": {"net": {"sharpe": 0.5, "trades": 7}}}
    metrics["head_only"] = {"skipped": "head learned nothing"}
    table = tables.metrics_table(metrics)
    names = [column.name for column in table.schema.columns]
    assert "champion_net" in names
    assert "head_only_net" not in names
    by_metric = {row["metric"]: row for row in rows(table)}
    assert by_metric["Sharpe"]["champion_net"] == "0.50"
    assert by_metric["total return"]["champion_net"] == tables.MISSING


def test_metrics_table_without_holdout():
    with pytest.raises(ValueError, match="no holdout metrics for BTCUSDT"):
        tables.metrics_table({"symbol": "BTCUSDT"})


def test_feature_importance_table_order(real_run):
    importance = real_run.metrics["feature_importance_top"]
    table_rows = rows(tables.feature_importance_table(importance))
    assert sorted(row["feature"] for row in table_rows) == sorted(importance)
    values = [row["importance"] for row in table_rows]
    assert values == sorted(values, reverse=True)
    assert [row["rank"] for row in table_rows] == list(range(1, len(importance) + 1))
    top = max(importance, key=importance.get)
    assert table_rows[0]["feature"] == top
    assert table_rows[0]["share"] == f"{importance[top] / sum(importance.values()):.1%}"


def test_candle_findings_table_repairs(real_run):
    raw = pd.read_feather(real_run.data_dir / "BTC_USDT-1h.feather").head(3000)
    broken = pd.concat([raw.iloc[:10], raw.iloc[[5]], raw.iloc[12:]], ignore_index=True)
    broken = broken.iloc[[0, 2, 1, *range(3, len(broken))]].reset_index(drop=True)
    _, report = validate_candles(broken, SYMBOL, 3600, "BTC_USDT-1h.feather")
    info = report.to_dict()
    by_finding = {row["finding"]: row for row in rows(tables.candle_findings_table(info))}
    assert len(by_finding) == len(tables.CANDLE_FINDINGS)
    assert by_finding["exact duplicate rows"]["count"] == 1
    assert by_finding["rows out of date order"]["count"] == info["unsorted_rows"] == 1
    assert by_finding["gaps"]["count"] == 1
    assert by_finding["missing candles"]["count"] == 2
    assert by_finding["high below low"]["count"] == 0
    gap_rows = rows(tables.gap_table(info))
    assert gap_rows == [{"first_missing": info["gaps"][0]["first_missing"], "missing_candles": 2}]


def test_encoder_history_table(real_run):
    history = real_run.encoder_ref["history"]
    table_rows = rows(tables.encoder_history_table(history))
    assert [row["epoch"] for row in table_rows] == [1, 2]
    assert table_rows[1]["val_loss"] == pytest.approx(history[1]["val_loss"], abs=1e-6)


def test_roster_tables_hold_the_file(real_run):
    roster = read_json(real_run.store, "champions/roster.json")
    built = tables.roster_tables(roster)
    assert list(built) == ["roster", "roster_today", "roster_champion_holdout"]
    assert sorted(roster["coins"]) == ["BTCUSDT", "ETHUSDT"]
    for symbol, coin in roster["coins"].items():
        rebuilt: dict = {}
        for key, field, _ in tables.ROSTER_TABLES:
            (row,) = [row for row in rows(built[key]) if row["symbol"] == symbol]
            values = {name: value for name, value in row.items() if name != "symbol" and value is not None}
            if field is None:
                rebuilt.update(values)
            elif values:
                rebuilt[field] = values
        expected = {name: value for name, value in coin.items() if value is not None}
        assert rebuilt.keys() == expected.keys()
        for name, value in expected.items():
            if isinstance(value, dict):
                assert rebuilt[name] == pytest.approx(value, abs=10**-tables.TABLE_DECIMALS)
            else:
                assert rebuilt[name] == value


def test_roster_tables_failed_coin(real_run):
    built = tables.roster_tables(real_run.roster)
    (eth,) = [row for row in rows(built["roster"]) if row["symbol"] == "ETHUSDT"]
    assert eth["status"] == "failed"
    assert eth["champion"] is None
    assert "simulated failure" in eth["reason"]
    (eth_today,) = [row for row in rows(built["roster_today"]) if row["symbol"] == "ETHUSDT"]
    assert set(eth_today.values()) == {"ETHUSDT", None}


def test_summary_table_rows(real_run):
    summary = real_run.summary
    table = tables.summary_table(summary)
    names = [column.name for column in table.schema.columns]
    assert names[:2] == ["symbol", "status"]
    assert set(names) == set(summary["coins"][0])
    for row, coin in zip(rows(table), summary["coins"]):
        for name, value in coin.items():
            if isinstance(value, float):
                assert row[name] == pytest.approx(value, abs=10**-tables.TABLE_DECIMALS)
            else:
                assert row[name] == value


def test_coin_model_metadata_entries(real_run):
    entries = ui_metadata.coin_model_metadata(real_run.metrics, real_run.store, real_run.model_path)
    assert list(entries) == ["equity_curve", "metrics", "champion_decision", "top_features", "holdout_window"]
    png = embedded_png(entries["equity_curve"])
    assert png_size(png) == (800, 400)
    decision = entries["champion_decision"].md_str
    assert decision.startswith("**promoted** to first champion")
    assert real_run.metrics["decision"]["reason"] in decision


def test_coin_model_metadata_tampered_equity(real_run, tmp_path):
    store = LocalArtifactStore(tmp_path / "storage")
    files = verify_folder(real_run.store, real_run.model_path)
    for name, data in files.items():
        store.write_bytes(f"{real_run.model_path}/{name}", data)
    store.write_bytes(f"{real_run.model_path}/manifest.json", real_run.store.read_bytes(f"{real_run.model_path}/manifest.json"))
    store.write_bytes(f"{real_run.model_path}/equity.csv", files["equity.csv"] + b"\n")
    entries = ui_metadata.coin_model_metadata(real_run.metrics, store, real_run.model_path)
    assert entries["equity_curve"].text.startswith("no plot: SHA256 mismatch")
    assert "metrics" in entries


def test_encoder_metadata_entries(real_run):
    entries = ui_metadata.encoder_metadata(real_run.encoder_ref["history"])
    assert png_size(embedded_png(entries["loss_curve"])) == (800, 400)
    assert len(entries["loss_by_epoch"].records) == 2
    assert ui_metadata.encoder_metadata([]) == {}


def test_roster_metadata_entries(real_run):
    entries = ui_metadata.roster_metadata(real_run.roster)
    assert entries["day"].text == DAY
    assert {"roster", "roster_today", "roster_champion_holdout"} <= set(entries)
    assert "cutoff" not in entries


def test_summary_metadata_entries(real_run):
    entries = ui_metadata.summary_metadata(real_run.summary)
    assert len(entries["coins_table"].records) == 2
    assert png_size(embedded_png(entries["returns_by_coin"])) == (800, 400)
    assert entries["date"].text == DAY


def test_candles_metadata_gap_list(real_run):
    raw = pd.read_feather(real_run.data_dir / "BTC_USDT-1h.feather")
    _, clean = validate_candles(raw, SYMBOL, 3600, "BTC_USDT-1h.feather")
    entries = ui_metadata.candles_metadata(clean.to_dict())
    assert "gap_list" not in entries
    assert entries["rows_read"].value == len(raw)
    gapped = raw.drop(index=[100, 101, 102])
    _, report = validate_candles(gapped, SYMBOL, 3600, "BTC_USDT-1h.feather")
    entries = ui_metadata.candles_metadata(report.to_dict())
    assert rows(entries["gap_list"]) == [{"first_missing": report.to_dict()["gaps"][0]["first_missing"], "missing_candles": 3}]
