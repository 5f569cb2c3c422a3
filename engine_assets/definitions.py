"""The ``engine_assets`` code location: assets, jobs, the schedule, the sensor and resources, wired together."""

from __future__ import annotations

import dagster as dg

from engine_assets.assets import candles, coin_model, features, roster, shared_encoder, summary
from engine_assets.assets.checks import coin_model_checks
from engine_assets.io_managers import FrameIOManager, JsonIOManager
from engine_assets.jobs import coin_job, daily_job, encoder_job, publish_job
from engine_assets.notify.resources import TelegramResource
from engine_assets.resources import EngineResource
from engine_assets.schedules import daily_training_schedule
from engine_assets.sensors import run_failure_telegram
from engine_assets.settings import EngineSettings

_settings = EngineSettings.from_env()

defs = dg.Definitions(
    assets=[candles, features, shared_encoder, coin_model, roster, summary],
    # candle_quality is declared on the candles asset itself. These two checks run after coin_model.
    asset_checks=coin_model_checks,
    jobs=[encoder_job, coin_job, publish_job, daily_job],
    schedules=[daily_training_schedule],
    sensors=[run_failure_telegram],
    # Runs launched from an asset's page in the UI use this executor, so such a coin run is one process.
    executor=dg.in_process_executor,
    resources={
        "engine": EngineResource(),
        # Reads TELEGRAM_BOT_TOKEN, TELEGRAM_CHAT_ID and TELEGRAM_API_URL at run time; unset means no messages.
        "telegram": TelegramResource(),
        "frame_io_manager": FrameIOManager(root=str(_settings.cache_root / "assets")),
        "json_io_manager": JsonIOManager(root=str(_settings.cache_root / "assets")),
    },
)
