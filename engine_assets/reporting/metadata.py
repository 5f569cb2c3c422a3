"""Materialization metadata of each asset: the plots and tables the Dagster UI shows.

The assets call these after their work is done and merge the result into
their own metadata, so a failure to draw never hides a model. A plot that
cannot be drawn is replaced by a text entry with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import dagster as dg

from engine_assets.storage.base import ArtifactStore, StorageError
from engine_assets.storage.manifest import verify_folder

logger = logging.getLogger(__name__)


def _plot_entry(draw, alt: str) -> dg.MetadataValue:
    """Return the plot ``draw()`` renders as markdown, or a text entry naming the error."""
    from engine_assets.reporting.plots import png_markdown

    try:
        png = draw()
    except (ValueError, KeyError, TypeError, StorageError, OSError) as error:
        logger.warning("cannot draw %s: %s", alt, error)
        return dg.MetadataValue.text(f"no plot: {error}")
    if png is None:
        return dg.MetadataValue.text("no plot: nothing to draw")
    return png_markdown(png, alt)


def coin_model_metadata(metrics: Mapping, store: ArtifactStore, model_path: str) -> dict[str, dg.MetadataValue]:
    """Return the metrics table, the holdout equity plot, the top features and the champion decision.

    ``metrics`` is the model's ``metrics.json`` content. The equity curves are
    read from ``{model_path}/equity.csv``, verified against the folder's manifest.
    """
    from engine_assets.reporting.plots import equity_plot, read_equity_csv
    from engine_assets.reporting.tables import feature_importance_table, metrics_table

    symbol = metrics.get("symbol", "")
    head = metrics.get("head") or "model"

    def draw_equity() -> bytes:
        data = verify_folder(store, model_path, names=["equity.csv"])["equity.csv"]
        return equity_plot(read_equity_csv(data), f"{symbol}: holdout equity after costs", f"model ({head})")

    decision = metrics.get("decision") or {}
    promoted = bool(decision.get("promote"))
    previous = (metrics.get("champion") or {}).get("path")
    if promoted:
        verdict = f"**promoted** to champion, replacing `{previous}`" if previous else "**promoted** to first champion"
    else:
        verdict = f"**not promoted**: champion `{previous}` kept" if previous else "**not promoted**: the coin has no champion"
    entries: dict[str, dg.MetadataValue] = {
        "equity_curve": _plot_entry(draw_equity, f"{symbol} holdout equity"),
        "metrics": metrics_table(metrics),
        "champion_decision": dg.MetadataValue.md(f"{verdict}\n\n{decision.get('reason') or ''}".strip()),
    }
    importance = metrics.get("feature_importance_top") or {}
    if importance:
        entries["top_features"] = feature_importance_table(importance)
    windows = metrics.get("windows") or {}
    if windows.get("holdout_start"):
        entries["holdout_window"] = dg.MetadataValue.text(f"{windows['holdout_start']} to {windows.get('holdout_end')}")
    return entries


def encoder_metadata(history: list[Mapping]) -> dict[str, dg.MetadataValue]:
    """Return the loss plot and the per-epoch loss table of the shared encoder."""
    from engine_assets.reporting.plots import loss_plot
    from engine_assets.reporting.tables import encoder_history_table

    if not history:
        return {}
    return {
        "loss_curve": _plot_entry(lambda: loss_plot(history), "encoder loss by epoch"),
        "loss_by_epoch": encoder_history_table(history),
    }


def candles_metadata(report: Mapping) -> dict[str, dg.MetadataValue]:
    """Return the table of candle checks with counts, and the list of gaps when there are any."""
    from engine_assets.reporting.tables import candle_findings_table, gap_table

    entries: dict[str, dg.MetadataValue] = {
        "repairs": candle_findings_table(report),
        "rows_read": dg.MetadataValue.int(int(report.get("rows_read", 0))),
    }
    if report.get("gaps"):
        entries["gap_list"] = gap_table(report)
    return entries


def roster_metadata(roster: Mapping) -> dict[str, dg.MetadataValue]:
    """Return the roster as tables, one row per coin, with the day it belongs to."""
    from engine_assets.reporting.tables import roster_tables

    entries: dict[str, dg.MetadataValue] = dict(roster_tables(roster))
    for key in ("day", "cutoff", "generated_at"):
        if roster.get(key) is not None:
            entries[key] = dg.MetadataValue.text(str(roster[key]))
    return entries


def summary_metadata(summary: Mapping) -> dict[str, dg.MetadataValue]:
    """Return the day's summary as a table and a plot of each coin's return beside buy-and-hold."""
    from engine_assets.reporting.plots import returns_plot
    from engine_assets.reporting.tables import summary_table

    entries: dict[str, dg.MetadataValue] = {
        "coins_table": summary_table(summary),
        "returns_by_coin": _plot_entry(lambda: returns_plot(summary.get("coins", [])), "holdout return by coin"),
    }
    for key in ("date", "mode", "device", "cutoff", "encoder", "started_at", "finished_at"):
        if summary.get(key) is not None:
            entries[key] = dg.MetadataValue.text(str(summary[key]))
    if summary.get("concurrency") is not None:
        entries["concurrency"] = dg.MetadataValue.int(int(summary["concurrency"]))
    if summary.get("duration_seconds") is not None:
        entries["duration_seconds"] = dg.MetadataValue.float(float(summary["duration_seconds"]))
    return entries
