"""The ``download-data`` command: fresh candles from an exchange API or Binance archives."""

from __future__ import annotations

import argparse
import os
import datetime as dt
import logging
import sys
from pathlib import Path
from typing import TextIO

from engine_assets.data.download.archives import (
    DEFAULT_ARCHIVE_URL,
    ArchiveError,
    ArchiveImportError,
    archive_periods,
    import_archives,
)
from engine_assets.data.download.exchange import (
    DEFAULT_EXCHANGE,
    DEFAULT_HISTORY_DAYS,
    DEFAULT_LIMIT,
    DownloadProgress,
    create_exchange,
    download_candles,
)
from engine_assets.data.download.merge import CandleDataError, DownloadResult, candle_file_path
from engine_assets.data.loading import CandleFileError, find_candle_sources
from engine_assets.settings import TIMEFRAME_SECONDS, EngineSettings
from engine_assets.symbols import InvalidSymbolError, pair_to_symbol

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_COIN_FAILED = 1
EXIT_USAGE = 2


def add_download_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``download-data`` command on an argparse subparsers object and return its parser."""
    parser = subparsers.add_parser(
        "download-data",
        help="download fresh candles into the data folder",
        description=(
            "Download closed candles into freqtrade Feather files ({BASE}_{QUOTE}-{timeframe}.feather), "
            "either from an exchange's REST API through ccxt (only candles after the last stored one) "
            "or from Binance's public-data archive ZIPs (--archives). Exit status 1 when any coin failed."
        ),
    )
    parser.add_argument(
        "--symbols",
        type=_symbol_list,
        help="comma-separated symbols such as BTCUSDT,ETHUSDT (default: ENGINE_SYMBOLS if set, "
        "else every coin with a file of the timeframe in the data folder)",
    )
    parser.add_argument(
        "--timeframe",
        choices=list(TIMEFRAME_SECONDS),
        help="candle timeframe (default: ENGINE_TIMEFRAME, which defaults to 1h)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="folder of the candle files, updated in place (default: ENGINE_DATA_DIR)",
    )

    api = parser.add_argument_group("exchange API")
    api.add_argument(
        "--exchange",
        default=DEFAULT_EXCHANGE,
        help=f"ccxt exchange id to download from (default: {DEFAULT_EXCHANGE})",
    )
    api.add_argument(
        "--since",
        type=_date,
        help="first UTC day (YYYY-MM-DD) to download for a coin without a stored file "
        f"(default: {DEFAULT_HISTORY_DAYS} days ago); a coin with a stored file continues after its last candle",
    )
    api.add_argument(
        "--api-url",
        help="send every exchange API request to this scheme://host[:port], keeping the paths, "
        "for a mirror or a local test server (default: the exchange's own URLs)",
    )
    api.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        help=f"candles per API request (default: {DEFAULT_LIMIT}, Binance spot's maximum)",
    )

    archives = parser.add_argument_group("Binance public-data archives")
    archives.add_argument(
        "--archives",
        action="store_true",
        help="import Binance's monthly and daily kline ZIP archives, each checked against its SHA256 "
        "checksum, instead of using the exchange API; needs --months, --days or --start",
    )
    archives.add_argument(
        "--archive-url",
        default=DEFAULT_ARCHIVE_URL,
        help=f"base URL of the archives (default: {DEFAULT_ARCHIVE_URL})",
    )
    archives.add_argument(
        "--months",
        type=_month_list,
        default=[],
        help="comma-separated months (YYYY-MM) to import as monthly files",
    )
    archives.add_argument(
        "--days",
        type=_day_list,
        default=[],
        help="comma-separated UTC days (YYYY-MM-DD) to import as daily files",
    )
    archives.add_argument(
        "--start",
        type=_date,
        help="first UTC day (YYYY-MM-DD) of a range to import: whole months in the range are read "
        "as monthly files, the other days as daily files",
    )
    archives.add_argument(
        "--end",
        type=_date,
        help="last UTC day (YYYY-MM-DD) of the --start range, included (default: yesterday, UTC)",
    )
    return parser


def run_download(args: argparse.Namespace, settings: EngineSettings, out: TextIO | None = None) -> int:
    """Run ``download-data`` with parsed ``args`` and return the exit status.

    The status is 0 when every coin succeeded, 1 when any coin failed and 2 on
    invalid options. A line per coin and a summary table go to ``out``
    (default: standard output).
    """
    out = out or sys.stdout
    data_dir = Path(args.data_dir or settings.data_dir)
    timeframe = args.timeframe or settings.timeframe
    archive_options = bool(args.months or args.days or args.start or args.end)
    if args.archives and not (args.months or args.days or args.start):
        logger.error("--archives needs --months, --days or --start to know which files to import")
        return EXIT_USAGE
    if archive_options and not args.archives:
        logger.error("--months, --days, --start and --end select archive files: add --archives to import them")
        return EXIT_USAGE

    symbols = _resolve_symbols(args.symbols, settings, data_dir, timeframe)
    if not symbols:
        logger.error(
            "no coin to download: pass --symbols BTCUSDT,... or set ENGINE_SYMBOLS, "
            "or put a %s candle file in %s",
            timeframe,
            data_dir,
        )
        return EXIT_USAGE

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        logger.error("cannot create the data folder %s: %s; pass --data-dir or set ENGINE_DATA_DIR", data_dir, error)
        return EXIT_USAGE
    if not os.access(data_dir, os.W_OK):
        logger.error(
            "the data folder %s is not writable (a read-only sample folder?): pass --data-dir or set ENGINE_DATA_DIR",
            data_dir,
        )
        return EXIT_USAGE

    if args.archives:
        try:
            results = _import_archives(args, data_dir, symbols, timeframe, out)
        except ArchiveError as error:
            logger.error("%s", error)
            return EXIT_USAGE
    else:
        try:
            exchange = create_exchange(args.exchange, api_url=args.api_url)
        except ValueError as error:
            logger.error("%s", error)
            return EXIT_USAGE
        since = dt.datetime.combine(args.since, dt.time(), tzinfo=dt.timezone.utc) if args.since else None
        results = download_candles(
            data_dir,
            symbols,
            timeframe,
            since=since,
            exchange=exchange,
            progress=lambda event: _print_progress(event, out),
            limit=args.limit,
        )

    out.write(format_results(results))
    failed = [symbol for symbol, result in results.items() if result.failed]
    if failed:
        logger.error("download failed for %d of %d coins: %s", len(failed), len(results), ", ".join(failed))
        return EXIT_COIN_FAILED
    return EXIT_OK


def _resolve_symbols(
    requested: list[str] | None, settings: EngineSettings, data_dir: Path, timeframe: str
) -> list[str]:
    if requested:
        return requested
    if settings.symbols:
        return list(settings.symbols)
    if not data_dir.is_dir():
        return []
    return list(find_candle_sources(data_dir, timeframe))


def _import_archives(
    args: argparse.Namespace, data_dir: Path, symbols: list[str], timeframe: str, out: TextIO
) -> dict[str, DownloadResult]:
    months = list(args.months)
    days = [day.isoformat() for day in args.days]
    if args.start:
        end = args.end or dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
        range_months, range_days = archive_periods(args.start, end)
        months += range_months
        days += range_days

    results: dict[str, DownloadResult] = {}
    for position, symbol in enumerate(symbols, start=1):
        try:
            result = import_archives(
                data_dir, symbol, timeframe, base_url=args.archive_url, months=months, days=days
            )
        except (ArchiveImportError, CandleDataError, CandleFileError, OSError) as error:
            result = DownloadResult(
                symbol=symbol,
                timeframe=timeframe,
                status="failed",
                path=candle_file_path(data_dir, symbol, timeframe),
                error=f"{type(error).__name__}: {error}",
            )
            logger.error("%s %s: archive import failed, stored file left unchanged: %s", symbol, timeframe, error)
        results[symbol] = result
        stage = "failed" if result.failed else "done"
        _print_progress(DownloadProgress(symbol, position, len(symbols), stage, result=result), out)
    return results


def _print_progress(event: DownloadProgress, out: TextIO) -> None:
    if event.result is None:
        return
    result = event.result
    if result.failed:
        line = f"failed: {result.error}"
    else:
        line = f"{result.status}, {result.rows_added} added, {result.rows_replaced} replaced"
    out.write(f"[{event.position}/{event.total}] {event.symbol}: {line}\n")
    out.flush()


def format_results(results: dict[str, DownloadResult]) -> str:
    """Format one row per coin: status, candles added and replaced, partial days, gaps, last candle."""
    header = ("symbol", "status", "added", "replaced", "partial days", "gaps", "last candle")
    rows = [header]
    for symbol, result in results.items():
        last = f"{result.last_candle:%Y-%m-%d %H:%M}" if result.last_candle is not None else "-"
        rows.append(
            (
                symbol,
                result.status,
                str(result.rows_added),
                str(result.rows_replaced),
                str(len(result.partial_days)),
                str(sum(gap.count for gap in result.gaps)),
                last,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def _symbol_list(text: str) -> list[str]:
    symbols = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            symbols.append(pair_to_symbol(part.strip()))
        except InvalidSymbolError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    if not symbols:
        raise argparse.ArgumentTypeError("expected at least one symbol, such as BTCUSDT")
    return symbols


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        message = f"invalid date {text!r}: expected YYYY-MM-DD, such as 2024-10-01"
        raise argparse.ArgumentTypeError(message) from None


def _day_list(text: str) -> list[dt.date]:
    return [_date(part) for part in text.split(",") if part.strip()]


def _month_list(text: str) -> list[str]:
    months = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            dt.datetime.strptime(part, "%Y-%m")
        except ValueError:
            message = f"invalid month {part!r}: expected YYYY-MM, such as 2024-10"
            raise argparse.ArgumentTypeError(message) from None
        months.append(part)
    return months

