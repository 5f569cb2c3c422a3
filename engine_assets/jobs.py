"""Jobs: the encoder run, one run per coin, and the report run.

Every job uses the in-process executor: a coin's run pays for one process
(the run worker), not one per step, and imports only what its steps use.
"""

from __future__ import annotations

import dagster as dg

from engine_assets.assets import candles, coin_model, features, roster, shared_encoder, summary
from engine_assets.partitions import coin_partitions
from engine_assets.settings import EngineSettings

_settings = EngineSettings.from_env()

encoder_job = dg.define_asset_job(
    "encoder_job",
    selection=[shared_encoder],
    executor_def=dg.in_process_executor,
    description="Train today's shared encoder (or reuse or resume it).",
)

coin_job = dg.define_asset_job(
    "coin_job",
    selection=[candles, features, coin_model],
    partitions_def=coin_partitions,
    executor_def=dg.in_process_executor,
    # Dagster's run monitoring ends a coin run after this many seconds.
    tags={"dagster/max_runtime": str(_settings.coin_timeout_seconds)},
    description="Train one coin: candles, features and its model, as one run in one process.",
)

publish_job = dg.define_asset_job(
    "publish_job",
    selection=[roster, summary],
    executor_def=dg.in_process_executor,
    description="Publish the roster of champions and the day's summary.",
)
