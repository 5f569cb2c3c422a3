"""Per-coin model training engine for hourly crypto candles, as a Dagster code location."""

__version__ = "0.1.0"
