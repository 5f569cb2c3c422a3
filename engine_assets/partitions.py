"""The coin partitions: one per symbol found in ENGINE_DATA_DIR for the timeframe."""

from __future__ import annotations

import logging

import dagster as dg

from engine_assets.settings import EngineSettings

logger = logging.getLogger(__name__)


def universe_symbols(settings: EngineSettings) -> list[str]:
    """Return the symbols to partition by; an unreadable data folder gives none and a log line."""
    from engine_assets.data.universe import discover_universe

    try:
        return discover_universe(settings.data_dir, settings.timeframe, settings.symbols)
    except (OSError, ValueError) as error:
        logger.error("no coin partitions: %s", error)
        return []


coin_partitions = dg.StaticPartitionsDefinition(universe_symbols(EngineSettings.from_env()))
