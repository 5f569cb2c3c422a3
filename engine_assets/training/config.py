"""Model settings shared by the encoder run and every coin run.

The encoder and the heads must agree on the label horizon, the purge gap and
the windows, so they come from one place.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pandas as pd

from engine_assets.evaluation.backtest import CostModel
from engine_assets.evaluation.promotion import PromotionRules
from engine_assets.features.build import FeatureConfig
from engine_assets.features.windows import WindowConfig

SEED = 7


@dataclass(frozen=True)
class TrainingConfig:
    """Every knob of one day's training, recorded in each model's metrics."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    costs: CostModel = field(default_factory=CostModel)
    promotion: PromotionRules = field(default_factory=PromotionRules)
    seed: int = SEED

    def __post_init__(self) -> None:
        if self.features.label_horizon != self.windows.label_horizon:
            raise ValueError(
                f"label horizon mismatch: features use {self.features.label_horizon} candles, "
                f"windows purge for {self.windows.label_horizon}; set both to the same value"
            )


def choose_cutoff(last_candles: dict[str, pd.Timestamp], timeframe_seconds: int, now: dt.datetime) -> pd.Timestamp:
    """Return the run's cutoff: the end of the newest closed candle, at most the start of today (UTC).

    One cutoff serves every coin, so champion and challenger are scored on
    the same holdout window. Coins whose data ends earlier simply have fewer
    holdout candles.
    """
    if not last_candles:
        raise ValueError("no coin has candles: cannot choose a cutoff")
    step = pd.Timedelta(seconds=timeframe_seconds)
    newest_end = max(last_candles.values()) + step
    day_start = pd.Timestamp(now).tz_convert("UTC").floor("D")
    cutoff = min(newest_end, day_start)
    return cutoff.floor(step)
