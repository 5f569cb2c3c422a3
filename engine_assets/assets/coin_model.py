"""The ``coin_model`` asset: one coin's tree head on features plus embeddings, scored after costs."""

import dagster as dg
import pandas as pd

from engine_assets.assets.common import begin_coin_step, failures_recorded, run_day, thread_budget
from engine_assets.scheduling import failpoints
from engine_assets.partitions import coin_partitions
from engine_assets.resources import EngineResource
from engine_assets.settings import EngineSettings

_settings = EngineSettings.from_env()


@dg.asset(
    partitions_def=coin_partitions,
    io_manager_key="json_io_manager",
    group_name="models",
    kinds={"xgboost", "lightgbm"},
    owners=["team:quant-platform"],
    # Retries cover transient errors; bad data raises a Failure that does not retry.
    retry_policy=dg.RetryPolicy(
        max_retries=_settings.coin_retries, delay=2, backoff=dg.Backoff.EXPONENTIAL
    ),
)
def coin_model(
    context: dg.AssetExecutionContext,
    engine: EngineResource,
    candles: pd.DataFrame,
    features: pd.DataFrame,
    shared_encoder: dict,
) -> dg.MaterializeResult:
    """XGBoost and LightGBM heads fitted on the training window; the better on validation is scored
    on the holdout after fees and slippage and replaces the champion only if it beats it there."""
    from engine_assets.reporting.metadata import coin_model_metadata
    from engine_assets.training.coin_stage import train_coin

    symbol = context.partition_key
    settings = engine.settings
    ledger = engine.ledger(run_day(context))
    attempt = begin_coin_step(context, ledger)
    with failures_recorded(ledger, symbol):
        failpoints.trigger(symbol, attempt, settings.failpoints)
        outcome = train_coin(
            symbol,
            candles,
            features,
            shared_encoder,
            engine.store(),
            settings.cache_root,
            engine.lock_dir,
            settings.timeframe_seconds,
            threads=thread_budget(context),
        )
        key = outcome.key_metrics()
        ledger.finish_coin(
            symbol,
            outcome.status,
            reason=outcome.reason,
            artifact=outcome.model_path,
            champion=outcome.champion_path,
            champion_changed=outcome.champion_changed,
            decision=outcome.decision,
            metrics=key if outcome.status == "succeeded" else None,
            error=None,
        )
        ledger.note_attempt_end(symbol, outcome.status)
    metadata: dict = {"status": outcome.status}
    if outcome.status != "succeeded":
        metadata["reason"] = outcome.reason or ""
        context.log.warning("%s skipped: %s", symbol, outcome.reason)
    else:
        metadata.update(
            {
                "head": outcome.head,
                "sharpe_net": key["sharpe_net"],
                "total_return_net": key["total_return_net"],
                "max_drawdown_net": key["max_drawdown_net"],
                "trades": key["trades"],
                "buy_and_hold_return": key["buy_and_hold_return"],
                "champion_changed": outcome.champion_changed,
                "decision": outcome.decision or "",
                "artifact_path": outcome.model_path,
                "manifest_sha256": outcome.manifest_sha256,
                "champion": outcome.champion_path,
                **coin_model_metadata(outcome.metrics, engine.store(), outcome.model_path),
            }
        )
    return dg.MaterializeResult(
        value=outcome.to_dict(), metadata={k: v for k, v in metadata.items() if v is not None}
    )
