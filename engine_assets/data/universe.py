"""The universe: the symbols the engine trains, found from the candle files on disk."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from engine_assets.data.loading import CandleSourceNotFoundError, find_candle_sources
from engine_assets.symbols import validate_symbol


def discover_universe(data_dir: str | os.PathLike, timeframe: str, symbols: Iterable[str] = ()) -> list[str]:
    """Return the sorted symbols that have candle files of ``timeframe`` in ``data_dir``.

    When ``symbols`` is given (such as ``ENGINE_SYMBOLS``), return that subset,
    sorted and without repeats. Raises CandleSourceNotFoundError when a requested
    symbol has no file, and FileNotFoundError when ``data_dir`` does not exist.
    """
    found = sorted(find_candle_sources(data_dir, timeframe))
    requested = sorted({validate_symbol(symbol) for symbol in symbols})
    if not requested:
        return found

    missing = [symbol for symbol in requested if symbol not in found]
    if missing:
        available = ", ".join(found) if found else "none"
        raise CandleSourceNotFoundError(
            f"no candle file of timeframe {timeframe} in {Path(data_dir)} for requested symbols "
            f"{', '.join(missing)}; symbols found: {available}. "
            "Add their files or remove them from ENGINE_SYMBOLS."
        )
    return requested
