"""The daily run's first step: fresh candles from the exchange named by ENGINE_DOWNLOAD_EXCHANGE."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from engine_assets.settings import EngineSettings

logger = logging.getLogger(__name__)


def refresh_candles(settings: EngineSettings, symbols: Sequence[str], console) -> dict | None:
    """Download each coin's closed candles after its last stored one; return the results by symbol.

    Returns None, and downloads nothing, when ``settings.download_exchange`` is
    empty. A coin whose download fails keeps its stored file and still trains.
    When the refresh fails as a whole (unknown exchange, invalid API URL), the
    console shows why and training goes on with the stored candles.
    """
    if not settings.download_exchange or not symbols:
        return None
    console.line(f"candles: refreshing {len(symbols)} coin(s) from {settings.download_exchange}")
    try:
        from engine_assets.data.download import create_exchange, download_candles

        exchange = create_exchange(settings.download_exchange, api_url=settings.download_api_url or None)
        results = download_candles(
            settings.data_dir,
            symbols,
            settings.timeframe,
            exchange=exchange,
            progress=lambda event: _report_progress(event, console),
        )
    except Exception as error:  # stored candles can still be trained on, so no refresh error stops the day
        logger.exception("candle refresh from %s failed", settings.download_exchange)
        console.line(f"candles: refresh failed, training on the stored candles: {type(error).__name__}: {error}")
        return None

    counts = Counter(result.status for result in results.values())
    totals = [f"{count} {status.replace('_', ' ')}" for status, count in sorted(counts.items())]
    console.line("candles: " + ", ".join(totals))
    return results


def _report_progress(event, console) -> None:
    if event.result is None:
        return
    result = event.result
    if result.failed:
        text = f"download failed, training on the stored candles: {result.error}"
    else:
        text = f"{result.status.replace('_', ' ')}, {result.rows_added} added, {result.rows_replaced} replaced"
    console.line(f"candles [{event.position}/{event.total}] {event.symbol}: {text}")
