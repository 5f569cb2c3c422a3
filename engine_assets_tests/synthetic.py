"""Seeded synthetic hourly candles for tests, and a writer to freqtrade's Feather layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from engine_assets.data.loading import write_candles_feather

START = "2024-01-01"


def random_walk_candles(
    rows: int,
    seed: int,
    *,
    start: str | pd.Timestamp = START,
    start_price: float = 100.0,
    volatility: float = 0.01,
    autocorrelation: float = 0.0,
    timeframe: str = "1h",
) -> pd.DataFrame:
    """Build ``rows`` candles whose closes follow a geometric random walk.

    One-candle log returns are AR(1): ``r[t] = autocorrelation * r[t-1] + e[t]``
    with ``e`` normal of standard deviation ``volatility``. A positive
    autocorrelation gives the heads a trend they can learn. Each candle opens at
    the previous close, high and low lie outside the body, and volume is
    lognormal in base-currency units. Columns: date (UTC), open, high, low,
    close, volume.
    """
    rng = np.random.default_rng(seed)
    shocks = rng.normal(0.0, volatility, rows)
    returns = np.empty(rows)
    previous = 0.0
    for i, shock in enumerate(shocks):
        previous = autocorrelation * previous + shock
        returns[i] = previous
    close = start_price * np.exp(np.cumsum(returns))
    open_ = np.concatenate(([start_price], close[:-1]))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, volatility / 3, rows)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, volatility / 3, rows)))
    volume = rng.lognormal(8.0, 0.5, rows)
    dates = pd.date_range(start, periods=rows, freq=pd.Timedelta(timeframe), tz="UTC")
    return pd.DataFrame({"date": dates, "open": open_, "high": high, "low": low, "close": close, "volume": volume})


def feather_name(base: str, timeframe: str = "1h", quote: str = "USDT") -> str:
    """Return freqtrade's file name for a pair, such as ``BTC_USDT-1h.feather``."""
    return f"{base}_{quote}-{timeframe}.feather"


def write_pair(frame: pd.DataFrame, folder: str | Path, base: str, timeframe: str = "1h") -> Path:
    """Write ``frame`` to ``folder/{base}_USDT-{timeframe}.feather`` and return the path."""
    return write_candles_feather(frame, Path(folder) / feather_name(base, timeframe))
