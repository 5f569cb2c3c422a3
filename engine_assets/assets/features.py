"""The ``features`` asset: one coin's causal features, label and next-candle return on the hourly grid."""

import dagster as dg
import pandas as pd

from engine_assets.assets.common import begin_coin_step, failures_recorded, run_day
from engine_assets.partitions import coin_partitions
from engine_assets.resources import EngineResource
from engine_assets.training.coin_stage import LABEL_COLUMN, NEXT_RETURN_COLUMN
from engine_assets.training.config import TrainingConfig


@dg.asset(
    partitions_def=coin_partitions,
    io_manager_key="frame_io_manager",
    group_name="data",
    kinds={"pandas"},
    owners=["team:quant-platform"],
)
def features(context: dg.AssetExecutionContext, engine: EngineResource, candles: pd.DataFrame) -> dg.MaterializeResult:
    """Features at t from candles up to t only, and the forward-return label over the configured horizon.

    Rows whose windows touch a missing candle stay NaN, so no feature or label
    silently spans an exchange halt.
    """
    from engine_assets.features.build import build_features, build_label, next_returns, to_grid

    symbol = context.partition_key
    settings = engine.settings
    ledger = engine.ledger(run_day(context))
    begin_coin_step(context, ledger)
    config = TrainingConfig()
    with failures_recorded(ledger, symbol):
        grid = to_grid(candles, settings.timeframe_seconds)
        frame = build_features(grid, config.features)
        frame[LABEL_COLUMN] = build_label(grid, config.windows.label_horizon)
        frame[NEXT_RETURN_COLUMN] = next_returns(grid)
        complete = frame.dropna()
        return dg.MaterializeResult(
            value=frame,
            metadata={
                "rows": len(frame),
                "complete_rows": len(complete),
                "columns": len(frame.columns) - 2,
                "label_horizon_candles": config.windows.label_horizon,
                "first_complete_row": str(complete.index[0]) if len(complete) else "none",
            },
        )
