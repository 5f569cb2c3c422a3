"""The ``engine_assets`` code location: assets, jobs and resources, wired together."""

from __future__ import annotations

import dagster as dg

from engine_assets.assets import candles, coin_model, features, roster, shared_encoder, summary
from engine_assets.io_managers import FrameIOManager, JsonIOManager
from engine_assets.jobs import coin_job, encoder_job, publish_job
from engine_assets.resources import EngineResource
from engine_assets.settings import EngineSettings

_settings = EngineSettings.from_env()

defs = dg.Definitions(
    assets=[candles, features, shared_encoder, coin_model, roster, summary],
    jobs=[encoder_job, coin_job, publish_job],
    resources={
        "engine": EngineResource(),
        "frame_io_manager": FrameIOManager(root=str(_settings.cache_root / "assets")),
        "json_io_manager": JsonIOManager(root=str(_settings.cache_root / "assets")),
    },
)
