"""The engine's assets, in pipeline order."""

from engine_assets.assets.candles import candles
from engine_assets.assets.coin_model import coin_model
from engine_assets.assets.features import features
from engine_assets.assets.reports import roster, summary
from engine_assets.assets.shared_encoder import shared_encoder

__all__ = ["candles", "features", "shared_encoder", "coin_model", "roster", "summary"]
