"""Incremental candle downloads from an exchange's REST API through ccxt.

Each coin's Feather file is read, and only candles after its last stored one
are requested (from an earlier day when a stored day is partial), page by
page with ``fetch_ohlcv(since=..., limit=...)``. The new candles go through
the rules of ``merge.py`` and are written atomically. One coin's failure is
recorded in its result and the other coins continue.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlsplit

import ccxt
import pandas as pd

from engine_assets.data.download.merge import (
    CandleDataError,
    DownloadResult,
    candle_file_path,
    clean_fetched,
    days_between,
    epoch_ms,
    find_gaps,
    ohlcv_to_frame,
    partial_state_path,
    read_partial_state,
    read_stored_candles,
    refetch_start,
    store_candles,
    timeframe_ms,
    to_utc_timestamp,
)
from engine_assets.data.loading import CandleFileError
from engine_assets.symbols import pair_to_symbol, symbol_to_pair

logger = logging.getLogger(__name__)

DEFAULT_EXCHANGE = "binance"
# History fetched for a coin with no stored candles when ``since`` is not given:
# a year leaves room for the training, validation and holdout windows.
DEFAULT_HISTORY_DAYS = 365
# Candles per request: Binance spot's maximum (its default is 500).
DEFAULT_LIMIT = 1000
# Attempts per request on network errors, server errors and rate-limit responses (429, 418).
MAX_ATTEMPTS = 5
# First backoff without a Retry-After header, doubled on each retry.
BACKOFF_SECONDS = 1.0
# Maximum wait before one retry. A longer Retry-After (a Binance IP ban lasts
# minutes to days) stops the download instead of sleeping through it.
MAX_RETRY_WAIT_SECONDS = 120.0

ProgressCallback = Callable[["DownloadProgress"], None]


class RateLimitBanError(RuntimeError):
    """The exchange asked to wait longer than ``MAX_RETRY_WAIT_SECONDS`` before the next request."""


@dataclasses.dataclass(frozen=True)
class DownloadProgress:
    """One progress report: ``stage`` is ``start``, ``page``, ``done`` or ``failed``.

    ``position`` counts coins from 1 up to ``total``; ``candles`` is the number
    of candles received for the coin so far.
    """

    symbol: str
    position: int
    total: int
    stage: str
    candles: int = 0
    last_open: pd.Timestamp | None = None
    result: DownloadResult | None = None


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Retry settings for failed requests. ``sleep`` takes seconds, and tests pass a recorder."""

    max_attempts: int = MAX_ATTEMPTS
    backoff_seconds: float = BACKOFF_SECONDS
    max_wait_seconds: float = MAX_RETRY_WAIT_SECONDS
    sleep: Callable[[float], None] = time.sleep


def create_exchange(exchange_id: str = DEFAULT_EXCHANGE, api_url: str | None = None) -> ccxt.Exchange:
    """Create a ccxt exchange with rate limiting on, optionally sending every API request to ``api_url``.

    ``api_url`` (``scheme://host:port``) replaces the scheme and host of every
    URL in ``exchange.urls['api']`` and keeps their paths, for a mirror or a
    local test server.
    """
    if exchange_id not in ccxt.exchanges:
        raise ValueError(f"unknown exchange {exchange_id!r}: expected a ccxt exchange id such as 'binance'")
    options: dict[str, object] = {}
    if exchange_id == "binance":
        # Spot markets only: load_markets then skips the futures exchangeInfo requests.
        options["fetchMarkets"] = {"types": ["spot"]}
    exchange = getattr(ccxt, exchange_id)({"enableRateLimit": True, "options": options})
    if api_url:
        redirect_api_urls(exchange, api_url)
    return exchange


def redirect_api_urls(exchange: ccxt.Exchange, api_url: str) -> None:
    """Replace the scheme and host of every API URL of ``exchange`` with those of ``api_url``."""
    target = urlsplit(api_url)
    if not target.scheme or not target.netloc:
        raise ValueError(
            f"invalid API URL {api_url!r}: expected scheme://host[:port], such as http://127.0.0.1:8080"
        )
    prefix = f"{target.scheme}://{target.netloc}{target.path.rstrip('/')}"

    def redirect(value: object) -> object:
        if isinstance(value, str):
            return prefix + urlsplit(value).path
        if isinstance(value, dict):
            return {key: redirect(item) for key, item in value.items()}
        return value

    exchange.urls["api"] = redirect(exchange.urls["api"])


def download_candles(
    data_dir: str | os.PathLike,
    symbols: Iterable[str],
    timeframe: str,
    exchange_id: str = DEFAULT_EXCHANGE,
    since: object = None,
    now: object = None,
    exchange: ccxt.Exchange | None = None,
    progress: ProgressCallback | None = None,
    *,
    limit: int = DEFAULT_LIMIT,
    retry: RetryPolicy | None = None,
) -> dict[str, DownloadResult]:
    """Download the closed candles after each coin's last stored one and merge them into its file.

    ``symbols`` are symbols (``BTCUSDT``) or ccxt pairs (``BTC/USDT``); results
    are keyed by symbol. ``since`` (datetime, date or ISO text, UTC) is the
    first candle for a coin with no stored file, by default
    ``DEFAULT_HISTORY_DAYS`` before ``now``. A coin with a stored file continues
    after its last candle and ignores ``since``. ``now`` (default: the clock)
    decides which candles are closed. ``exchange`` replaces the one
    ``create_exchange(exchange_id)`` would build. A coin that fails keeps its
    file unchanged and gets status ``failed`` with the error.
    """
    step_ms = timeframe_ms(timeframe)
    now_stamp = pd.Timestamp.now(tz="UTC") if now is None else to_utc_timestamp(now)
    if since is None:
        since_stamp = now_stamp - pd.Timedelta(days=DEFAULT_HISTORY_DAYS)
    else:
        since_stamp = to_utc_timestamp(since)
    # Round up to a boundary, so the first candle does not open before ``since``.
    since_ms = -(-epoch_ms(since_stamp) // step_ms) * step_ms
    if limit < 1:
        raise ValueError(f"invalid limit {limit}: expected at least 1 candle per request")
    retry = retry or RetryPolicy()

    keys = list(dict.fromkeys(_to_symbol(item) for item in symbols))
    pairs = {symbol: symbol_to_pair(symbol) for symbol in keys}
    if exchange is None:
        exchange = create_exchange(exchange_id)
    elif not exchange.enableRateLimit:
        logger.info("turning on ccxt rate limiting for %s", exchange.id)
        exchange.enableRateLimit = True
    if exchange.timeframes and timeframe not in exchange.timeframes:
        raise ValueError(
            f"{exchange.id} has no {timeframe} candles: expected one of {', '.join(exchange.timeframes)}"
        )

    results: dict[str, DownloadResult] = {}
    ban: RateLimitBanError | None = None
    for position, symbol in enumerate(keys, start=1):
        path = candle_file_path(data_dir, symbol, timeframe)
        result = DownloadResult(symbol=symbol, timeframe=timeframe, path=path)
        results[symbol] = result
        if ban is not None:
            result.status = "failed"
            result.error = f"not attempted: {ban}"
            logger.error("%s: %s", symbol, result.error)
            _report(progress, DownloadProgress(symbol, position, len(keys), "failed", result=result))
            continue

        _report(progress, DownloadProgress(symbol, position, len(keys), "start"))
        job = _CoinDownload(
            exchange=exchange,
            symbol=symbol,
            pair=pairs[symbol],
            timeframe=timeframe,
            since_ms=since_ms,
            now=now_stamp,
            limit=limit,
            retry=retry,
            result=result,
            report_page=lambda candles, last_open, symbol=symbol, position=position: _report(
                progress, DownloadProgress(symbol, position, len(keys), "page", candles, last_open)
            ),
        )
        try:
            job.run()
        except RateLimitBanError as error:
            ban = error
            _fail(result, error)
        except (ccxt.BaseError, CandleDataError, CandleFileError, OSError) as error:
            _fail(result, error)
        stage = "failed" if result.failed else "done"
        _report(progress, DownloadProgress(symbol, position, len(keys), stage, result=result))
    return results


def _to_symbol(item: str) -> str:
    """Accept ``BTCUSDT`` as well as ``BTC/USDT``, ``BTC_USDT`` or ``btc-usdt``."""
    return pair_to_symbol(item.strip())


def _fail(result: DownloadResult, error: Exception) -> None:
    result.status = "failed"
    result.error = f"{type(error).__name__}: {error}"
    logger.error(
        "%s %s: download failed, stored file left unchanged: %s", result.symbol, result.timeframe, result.error
    )


def _report(progress: ProgressCallback | None, event: DownloadProgress) -> None:
    if progress is not None:
        progress(event)


@dataclasses.dataclass
class _CoinDownload:
    """The download of one coin: plan the range, fetch the pages, store the result."""

    exchange: ccxt.Exchange
    symbol: str
    pair: str
    timeframe: str
    since_ms: int
    now: pd.Timestamp
    limit: int
    retry: RetryPolicy
    result: DownloadResult
    report_page: Callable[[int, pd.Timestamp | None], None]

    def run(self) -> None:
        path = self.result.path
        step_ms = timeframe_ms(self.timeframe)
        # NOTE: only the Feather file counts as stored. A coin kept only as
        # freqtrade JSON or CSV gets a new Feather file from ``since``, and the
        # loader then prefers it over the older file.
        stored = read_stored_candles(path, self.symbol, self.timeframe)
        start_ms = self._start_ms(stored, step_ms)
        start = pd.Timestamp(start_ms, unit="ms", tz="UTC")
        now_ms = epoch_ms(self.now)

        if start_ms + step_ms > now_ms:
            logger.info(
                "%s %s: up to date, no candle from %s UTC on is closed yet",
                self.symbol,
                self.timeframe,
                f"{start:%Y-%m-%d %H:%M}",
            )
            self.result.status = "up_to_date"
            self.result.last_candle = stored["date"].iloc[-1] if len(stored) else None
            return

        logger.info(
            "%s %s: downloading from %s to %s UTC",
            self.symbol,
            self.timeframe,
            f"{start:%Y-%m-%d %H:%M}",
            f"{self.now:%Y-%m-%d %H:%M}",
        )
        rows = self._fetch_pages(start_ms, now_ms, step_ms)
        source = f"{self.symbol} ({path.name})"
        fetched = clean_fetched(ohlcv_to_frame(rows), self.timeframe, self.now, source, self.result)
        if fetched.empty:
            logger.warning(
                "%s %s: the exchange returned no closed candle from %s UTC on",
                self.symbol,
                self.timeframe,
                f"{start:%Y-%m-%d %H:%M}",
            )
        # Missing open times count from ``start`` only when stored candles come
        # before it; for a new coin the first candle returned is its listing.
        self.result.gaps = find_gaps(fetched["date"], self.timeframe, start=start if len(stored) else None)
        for gap in self.result.gaps:
            logger.warning("%s %s: missing candles in the response: %s", self.symbol, self.timeframe, gap)

        store_candles(
            path,
            self.symbol,
            self.timeframe,
            fetched,
            self.now,
            days_between(start, self.now),
            self.result,
            stored=stored,
        )
        logger.info(
            "%s %s: %s, %d candles added, %d replaced, %d already stored, last candle %s",
            self.symbol,
            self.timeframe,
            self.result.status,
            self.result.rows_added,
            self.result.rows_replaced,
            self.result.rows_ignored,
            self.result.last_candle,
        )

    def _start_ms(self, stored: pd.DataFrame, step_ms: int) -> int:
        if stored.empty:
            return self.since_ms
        start_ms = epoch_ms(stored["date"].iloc[-1]) + step_ms
        refetch = refetch_start(read_partial_state(partial_state_path(self.result.path)))
        if refetch is not None and epoch_ms(refetch) < start_ms:
            logger.info(
                "%s %s: fetching again from %s, a day stored partial", self.symbol, self.timeframe, refetch.date()
            )
            start_ms = epoch_ms(refetch)
        return start_ms

    def _fetch_pages(self, start_ms: int, now_ms: int, step_ms: int) -> list[Sequence[float]]:
        """Request pages of ``limit`` candles from ``start_ms`` until the next candle would still be open."""
        rows: list[Sequence[float]] = []
        cursor = start_ms
        while cursor + step_ms <= now_ms:
            page = self._request_page(cursor)
            page = [row for row in page if row[0] >= cursor]
            if not page:
                break
            rows.extend(page)
            last_open = max(int(row[0]) for row in page)
            # Continue at the boundary after the last candle, also when that
            # candle's open time is off the boundary (it is rejected later).
            cursor = (last_open // step_ms) * step_ms + step_ms
            self.report_page(len(rows), pd.Timestamp(last_open, unit="ms", tz="UTC"))
            logger.debug("%s %s: %d candles so far, up to %d", self.symbol, self.timeframe, len(rows), last_open)
        return rows

    def _request_page(self, cursor: int) -> list[Sequence[float]]:
        for attempt in range(1, self.retry.max_attempts + 1):
            self.result.requests += 1
            try:
                return self.exchange.fetch_ohlcv(self.pair, self.timeframe, since=cursor, limit=self.limit)
            except ccxt.OperationFailed as error:
                # ccxt's retryable errors: NetworkError with DDoSProtection and
                # RateLimitExceeded (HTTP 418 and 429), timeouts and 5xx responses,
                # and OperationFailed itself (Binance's -1001 "internal error").
                wait = self._retry_after(error)
                if wait is not None and wait > self.retry.max_wait_seconds:
                    raise RateLimitBanError(
                        f"{self.exchange.id} asked to wait {wait:.0f} s (Retry-After) before the next request, "
                        f"more than the {self.retry.max_wait_seconds:.0f} s limit; download again after that time"
                    ) from error
                if attempt == self.retry.max_attempts:
                    raise
                if wait is None:
                    wait = min(self.retry.backoff_seconds * 2 ** (attempt - 1), self.retry.max_wait_seconds)
                logger.warning(
                    "%s %s: request failed (attempt %d of %d), retrying in %.1f s: %s: %s",
                    self.symbol,
                    self.timeframe,
                    attempt,
                    self.retry.max_attempts,
                    wait,
                    type(error).__name__,
                    str(error)[:200],
                )
                self.result.retries += 1
                self.retry.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry_after(self, error: ccxt.OperationFailed) -> float | None:
        """Return the Retry-After wait in seconds of a rate-limit response, or None without one."""
        if not isinstance(error, ccxt.DDoSProtection):
            return None
        # ccxt's errors carry no headers. ccxt 4.5 stores the failed response's
        # headers in last_response_headers before it raises.
        headers = getattr(self.exchange, "last_response_headers", None) or {}
        return parse_retry_after(headers.get("Retry-After"))


def parse_retry_after(value: str | None, clock: Callable[[], float] = time.time) -> float | None:
    """Parse a Retry-After header (seconds, or an HTTP date) into seconds from now; None when absent or invalid."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        logger.warning("ignoring invalid Retry-After header %r", text)
        return None
    return max(0.0, when.timestamp() - clock())
