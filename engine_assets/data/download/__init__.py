"""Fresh candles: incremental exchange downloads through ccxt and Binance public-data archives.

``download_candles`` fetches the closed candles after each coin's last stored
one; ``import_archives`` imports checksum-verified Binance archive files.
Both merge into freqtrade Feather files by the rules in ``merge.py``.

Names are imported on first use, so importing ``merge`` alone does not load
ccxt and requests.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DEFAULT_ARCHIVE_URL": "archives",
    "ArchiveChecksumError": "archives",
    "ArchiveError": "archives",
    "ArchiveImportError": "archives",
    "import_archives": "archives",
    "add_download_parser": "cli",
    "run_download": "cli",
    "DownloadProgress": "exchange",
    "RateLimitBanError": "exchange",
    "RetryPolicy": "exchange",
    "create_exchange": "exchange",
    "download_candles": "exchange",
    "CandleDataError": "merge",
    "DownloadResult": "merge",
    "Gap": "merge",
    "RejectedCandle": "merge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
