"""The ``shared_encoder`` asset: one PyTorch encoder trained on every coin's training window."""

import dagster as dg
from pydantic import Field

from engine_assets.assets.common import run_day, thread_budget
from engine_assets.assets.candles import candles
from engine_assets.resources import EngineResource
from engine_assets.settings import EngineSettings

_settings = EngineSettings.from_env()


class SharedEncoderConfig(dg.Config):
    """Launchpad settings of the encoder's training."""

    epochs: int = Field(
        default=_settings.encoder_epochs,
        ge=1,
        description="Training epochs over every coin's training windows (default: ENGINE_ENCODER_EPOCHS or 6).",
    )
    window: int = Field(default=48, ge=4, description="Candles per input window, ending at the embedded candle.")
    embedding_dim: int = Field(default=8, ge=1, description="Size of the embedding passed to the heads.")
    max_samples_per_coin: int = Field(
        default=6000, ge=100, description="Training windows per coin, evenly strided, to bound CPU time."
    )
    force: bool = Field(default=False, description="Train a new encoder even if today's already succeeded.")


@dg.asset(
    deps=[candles],
    io_manager_key="json_io_manager",
    group_name="models",
    kinds={"pytorch"},
    owners=["team:quant-platform"],
)
def shared_encoder(
    context: dg.AssetExecutionContext, config: SharedEncoderConfig, engine: EngineResource
) -> dg.MaterializeResult:
    """An encoder of recent candle windows, trained on all coins before the run's training end.

    Its cutoff fixes the train, validation and holdout windows of every coin
    model trained with it. Checkpoints are stored every epoch, and a rerun the
    same day resumes from the last one.
    """
    from engine_assets.encoder.model import EncoderConfig
    from engine_assets.reporting.metadata import encoder_metadata
    from engine_assets.training.config import TrainingConfig
    from engine_assets.training.encoder_stage import train_shared_encoder

    settings = engine.settings
    training = TrainingConfig()
    encoder_config = EncoderConfig(
        window=config.window,
        embedding_dim=config.embedding_dim,
        epochs=config.epochs,
        max_samples_per_coin=config.max_samples_per_coin,
        target_horizon=training.windows.label_horizon,
        seed=training.seed,
    )
    ledger = engine.ledger(run_day(context))
    force = config.force
    try:
        outcome = train_shared_encoder(
            settings,
            engine.store(),
            ledger,
            training,
            encoder_config,
            force=force,
            threads=thread_budget(context),
            progress=lambda message: context.log.info(message),
        )
    except Exception as error:
        ledger.update_encoder(status="failed", error=f"{type(error).__name__}: {error}")
        raise
    ref = outcome.ref
    history = ref.get("history", [])
    metadata = {
        "path": ref["path"],
        "cutoff": ref["cutoff"],
        "reused": outcome.reused,
        "coins": len(ref.get("symbols", [])),
        "samples_train": ref.get("samples_train"),
        "samples_validation": ref.get("samples_validation"),
        "epochs": len(history),
        "resumed_from_epoch": ref.get("resumed_from_epoch") if ref.get("resumed_from_epoch") is not None else "none",
        "duration_seconds": ref.get("duration_seconds"),
        "manifest_sha256": ref.get("manifest_sha256", ""),
    }
    if history:
        metadata["train_loss"] = float(history[-1]["train_loss"])
        metadata["validation_loss"] = float(history[-1]["val_loss"])
        metadata.update(encoder_metadata(history))
    if ref.get("skipped"):
        metadata["left_out"] = dg.MetadataValue.json(ref["skipped"])
    return dg.MaterializeResult(value=ref, metadata=metadata)
