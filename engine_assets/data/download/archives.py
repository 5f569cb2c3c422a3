"""Candle imports from Binance's public-data archives (data.binance.vision).

Monthly and daily spot kline files are ZIPs, each published with a
``.CHECKSUM`` file (``<sha256>  <file name>``):

    {base_url}/data/spot/monthly/klines/{SYMBOL}/{tf}/{SYMBOL}-{tf}-YYYY-MM.zip
    {base_url}/data/spot/daily/klines/{SYMBOL}/{tf}/{SYMBOL}-{tf}-YYYY-MM-DD.zip

Each ZIP's SHA256 is verified before it is opened. The CSV inside has 12
columns, optionally under a header row. Open times are in milliseconds in
files up to 2024 and in microseconds from the 2025 files on, so the unit is
detected per file. An import is all or nothing: when any requested file is
missing, fails its checksum or contains invalid rows, nothing is stored and
``ArchiveImportError`` lists every rejected file.
"""

from __future__ import annotations

import calendar
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import logging
import os
import re
import zipfile
from collections.abc import Iterable

import numpy as np
import pandas as pd
import requests

from engine_assets.data.download.merge import (
    DownloadResult,
    candle_file_path,
    clean_fetched,
    epoch_ms,
    find_gaps,
    read_stored_candles,
    sort_unique,
    store_candles,
    timeframe_ms,
    to_utc_timestamp,
)
from engine_assets.data.loading import BINANCE_KLINE_COLUMNS, MICROSECOND_THRESHOLD
from engine_assets.symbols import validate_symbol

logger = logging.getLogger(__name__)

DEFAULT_ARCHIVE_URL = "https://data.binance.vision"
# Binance opened in July 2017, so an open time outside these bounds comes from
# a unit or parsing error, not from a real candle.
EARLIEST_OPEN = pd.Timestamp("2017-01-01", tz="UTC")
LATEST_OPEN = pd.Timestamp("2100-01-01", tz="UTC")
# A month of 1m klines is about 7 MB of CSV (estimate: 44,640 rows of about 150
# bytes), so a member far above this limit is not a kline file.
MAX_CSV_BYTES = 256 * 1024 * 1024
REQUEST_TIMEOUT_SECONDS = 60
SHA256_LINE = re.compile(r"^(?P<digest>[0-9a-fA-F]{64})\s+\*?(?P<name>\S+)\s*$")
MONTH_TEXT = re.compile(r"^\d{4}-\d{2}$")


class ArchiveError(ValueError):
    """An archive file that cannot be imported, with the file name in the message."""


class ArchiveChecksumError(ArchiveError):
    """A ZIP whose SHA256 differs from its ``.CHECKSUM`` file."""


class ArchiveImportError(ValueError):
    """An import that stored nothing because files were rejected.

    ``failures`` maps each rejected file name to its reason.
    """

    def __init__(self, symbol: str, timeframe: str, failures: dict[str, str], total: int) -> None:
        self.failures = failures
        details = "; ".join(f"{name}: {reason}" for name, reason in failures.items())
        super().__init__(
            f"{symbol} {timeframe}: {len(failures)} of {total} archive files rejected, nothing stored: {details}"
        )


@dataclasses.dataclass(frozen=True)
class ArchiveFile:
    """One archive ZIP: its name, URLs and the candle open times it covers (``end`` exclusive)."""

    name: str
    url: str
    checksum_url: str
    start: pd.Timestamp
    end: pd.Timestamp


def archive_files(
    symbol: str,
    timeframe: str,
    months: Iterable[object] = (),
    days: Iterable[object] = (),
    base_url: str = DEFAULT_ARCHIVE_URL,
) -> list[ArchiveFile]:
    """List the monthly and daily archive files for ``months`` (``YYYY-MM``) and ``days`` (``YYYY-MM-DD``)."""
    validate_symbol(symbol)
    root = base_url.rstrip("/")
    files = []
    for month in sorted({_parse_month(value) for value in months}):
        year, number = month
        label = f"{year:04d}-{number:02d}"
        start = pd.Timestamp(year=year, month=number, day=1, tz="UTC")
        end = start + pd.Timedelta(days=calendar.monthrange(year, number)[1])
        files.append(_archive_file(root, "monthly", symbol, timeframe, label, start, end))
    for day in sorted({_parse_day(value) for value in days}):
        start = pd.Timestamp(day, tz="UTC")
        end = start + pd.Timedelta(days=1)
        files.append(_archive_file(root, "daily", symbol, timeframe, day.isoformat(), start, end))
    return files


def _archive_file(
    root: str, period: str, symbol: str, timeframe: str, label: str, start: pd.Timestamp, end: pd.Timestamp
) -> ArchiveFile:
    if start < EARLIEST_OPEN or end > LATEST_OPEN:
        raise ArchiveError(
            f"{symbol}-{timeframe}-{label}: outside the supported range "
            f"{EARLIEST_OPEN:%Y-%m-%d} to {LATEST_OPEN:%Y-%m-%d}; Binance archives start in 2017"
        )
    name = f"{symbol}-{timeframe}-{label}.zip"
    url = f"{root}/data/spot/{period}/klines/{symbol}/{timeframe}/{name}"
    return ArchiveFile(name=name, url=url, checksum_url=f"{url}.CHECKSUM", start=start, end=end)


def _parse_month(value: object) -> tuple[int, int]:
    if isinstance(value, (dt.date, pd.Timestamp)):
        return value.year, value.month
    text = str(value).strip()
    if not MONTH_TEXT.match(text) or not 1 <= int(text[5:]) <= 12:
        raise ArchiveError(f"invalid month {value!r}: expected YYYY-MM, such as 2024-10")
    return int(text[:4]), int(text[5:])


def _parse_day(value: object) -> dt.date:
    if isinstance(value, pd.Timestamp):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise ArchiveError(f"invalid day {value!r}: expected YYYY-MM-DD, such as 2025-01-31") from None


def archive_periods(first: dt.date, last: dt.date) -> tuple[list[str], list[str]]:
    """Split the days ``first`` to ``last`` (both included) into whole months and the remaining days.

    Returns (months as ``YYYY-MM``, days as ``YYYY-MM-DD``): a month lying
    entirely in the range is one monthly file, the other days are daily files.
    """
    if last < first:
        raise ArchiveError(f"invalid date range {first} to {last}: the end is before the start")
    months: list[str] = []
    days: list[str] = []
    day = first
    while day <= last:
        month_end = day.replace(day=calendar.monthrange(day.year, day.month)[1])
        if day.day == 1 and month_end <= last:
            months.append(f"{day.year:04d}-{day.month:02d}")
            day = month_end + dt.timedelta(days=1)
        else:
            days.append(day.isoformat())
            day += dt.timedelta(days=1)
    return months, days


def parse_checksum(text: str, expected_name: str) -> str:
    """Return the SHA256 hex digest from a ``.CHECKSUM`` file naming ``expected_name``."""
    match = SHA256_LINE.match(text.strip())
    if not match:
        raise ArchiveError(
            f"{expected_name}.CHECKSUM: expected one line '<sha256>  <file name>', found {text.strip()[:120]!r}"
        )
    if match["name"] != expected_name:
        raise ArchiveError(f"{expected_name}.CHECKSUM: names {match['name']!r} instead of {expected_name!r}")
    return match["digest"].lower()


def verify_checksum(payload: bytes, expected_digest: str, name: str) -> None:
    """Raise ArchiveChecksumError unless ``payload`` has the SHA256 ``expected_digest``."""
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected_digest:
        raise ArchiveChecksumError(
            f"{name}: SHA256 mismatch (expected {expected_digest}, downloaded file has {actual}). "
            "The download is incomplete or altered, so it was not opened: download it again"
        )


def read_archive_zip(payload: bytes, name: str) -> bytes:
    """Return the CSV bytes inside a verified archive ZIP, which must contain exactly that one CSV."""
    expected_member = name.removesuffix(".zip") + ".csv"
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            members = archive.infolist()
            if len(members) != 1 or members[0].filename != expected_member:
                found = ", ".join(member.filename for member in members) or "nothing"
                raise ArchiveError(f"{name}: expected one file {expected_member}, found {found}")
            if members[0].file_size > MAX_CSV_BYTES:
                raise ArchiveError(
                    f"{name}: {expected_member} unpacks to {members[0].file_size} bytes, "
                    f"more than the {MAX_CSV_BYTES} bytes a kline file can have"
                )
            return archive.read(members[0])
    except zipfile.BadZipFile as error:
        raise ArchiveError(f"{name}: not a valid ZIP file: {error}") from None


def parse_kline_csv(data: bytes, name: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Parse a Binance kline CSV into a candle frame, checking units and the file's period.

    Open times are milliseconds or microseconds, one unit per file (a file
    mixing them is rejected). Every open time must lie in ``[start, end)``,
    the file's month or day, and between 2017 and 2100.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ArchiveError(f"{name}: not UTF-8 text: {error}") from None
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if rows and not rows[0][0].strip().lstrip("-").isdigit():
        rows = rows[1:]  # The header row of the newer files: open_time, open, ...
    if not rows:
        raise ArchiveError(f"{name}: no kline rows")

    open_times = np.empty(len(rows), dtype=np.int64)
    values = np.empty((len(rows), 5), dtype=np.float64)
    for index, row in enumerate(rows):
        line = index + 1
        if len(row) != len(BINANCE_KLINE_COLUMNS):
            raise ArchiveError(
                f"{name}: data row {line} has {len(row)} columns, expected {len(BINANCE_KLINE_COLUMNS)} "
                f"({', '.join(BINANCE_KLINE_COLUMNS)}); the file may be truncated"
            )
        try:
            open_times[index] = int(row[0])
            values[index] = [float(cell) for cell in row[1:6]]
        except ValueError:
            raise ArchiveError(f"{name}: data row {line} has an unparsable number: {','.join(row[:6])}") from None

    open_ms = _to_milliseconds(open_times, name)
    dates = pd.to_datetime(open_ms, unit="ms", utc=True)
    _check_range(dates, name, EARLIEST_OPEN, LATEST_OPEN, "between 2017 and 2100")
    last_day = end - pd.Timedelta(days=1)
    _check_range(dates, name, start, end, f"in the file's period {start:%Y-%m-%d} to {last_day:%Y-%m-%d}")

    frame = pd.DataFrame({"date": dates.astype("datetime64[ns, UTC]")})
    for position, column in enumerate(("open", "high", "low", "close", "volume")):
        frame[column] = values[:, position]
    return frame


def _to_milliseconds(open_times: np.ndarray, name: str) -> np.ndarray:
    is_microseconds = open_times >= MICROSECOND_THRESHOLD
    if is_microseconds.any() and not is_microseconds.all():
        first_ms = int(np.flatnonzero(~is_microseconds)[0]) + 1
        first_us = int(np.flatnonzero(is_microseconds)[0]) + 1
        raise ArchiveError(
            f"{name}: open_time mixes milliseconds ({int((~is_microseconds).sum())} rows, first at data row "
            f"{first_ms}) and microseconds ({int(is_microseconds.sum())} rows, first at data row {first_us}); "
            "a Binance file uses one unit, so this file is corrupt"
        )
    if is_microseconds.all():
        return open_times // 1000
    return open_times


def _check_range(
    dates: pd.DatetimeIndex, name: str, low: pd.Timestamp, high: pd.Timestamp, wording: str
) -> None:
    outside = (dates < low) | (dates >= high)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise ArchiveError(
            f"{name}: data row {row + 1} opens at {dates[row]}, not {wording} ({int(outside.sum())} such rows)"
        )


def fetch_archive(session: requests.Session, archive: ArchiveFile, timeout: float) -> bytes:
    """Download one archive and its checksum, verify the ZIP and return the CSV inside."""
    checksum = _get(session, archive.checksum_url, f"{archive.name}.CHECKSUM", timeout)
    digest = parse_checksum(checksum.decode("utf-8", "replace"), archive.name)
    payload = _get(session, archive.url, archive.name, timeout)
    # Verify before opening: the ZIP and CSV parsers never see unverified bytes.
    verify_checksum(payload, digest, archive.name)
    return read_archive_zip(payload, archive.name)


def _get(session: requests.Session, url: str, name: str, timeout: float) -> bytes:
    # NOTE: no retry here. A failed file fails the import, and running it again
    # downloads every file again.
    try:
        response = session.get(url, timeout=timeout)
    except requests.RequestException as error:
        raise ArchiveError(f"{name}: download failed: {type(error).__name__}: {error}") from None
    if response.status_code == 404:
        raise ArchiveError(
            f"{name}: not found at {url}; Binance publishes a daily file the next day and a monthly "
            "file in the first days of the next month, so check the date and the symbol"
        )
    if response.status_code != 200:
        raise ArchiveError(f"{name}: download failed with HTTP {response.status_code} from {url}")
    return response.content


def import_archives(
    data_dir: str | os.PathLike,
    symbol: str,
    timeframe: str,
    base_url: str = DEFAULT_ARCHIVE_URL,
    months: Iterable[object] = (),
    days: Iterable[object] = (),
    session: requests.Session | None = None,
    *,
    now: object = None,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
) -> DownloadResult:
    """Download, verify and merge monthly and daily archive files into the coin's Feather file.

    All files are fetched and checked first; if any is rejected, nothing is
    stored and ArchiveImportError names each rejected file with its reason.
    The candles then follow the same rules as API downloads (see ``merge.py``):
    stored candles win over archive candles except on days stored partial, and
    a day with fewer candles than a full day is marked partial.
    """
    validate_symbol(symbol)
    step_ms = timeframe_ms(timeframe)
    now_stamp = pd.Timestamp.now(tz="UTC") if now is None else to_utc_timestamp(now)
    files = archive_files(symbol, timeframe, months, days, base_url)
    if not files:
        raise ArchiveError(
            f"{symbol} {timeframe}: no archive file requested: pass months (YYYY-MM) or days (YYYY-MM-DD)"
        )
    path = candle_file_path(data_dir, symbol, timeframe)
    result = DownloadResult(symbol=symbol, timeframe=timeframe, path=path)
    own_session = session is None
    http = session or requests.Session()

    parsed: list[tuple[ArchiveFile, pd.DataFrame]] = []
    failures: dict[str, str] = {}
    try:
        for archive in files:
            logger.info("%s %s: fetching %s", symbol, timeframe, archive.url)
            try:
                csv_bytes = fetch_archive(http, archive, timeout)
                frame = parse_kline_csv(csv_bytes, archive.name, archive.start, archive.end)
            except ArchiveError as error:
                logger.error("%s %s: rejected %s", symbol, timeframe, error)
                failures[archive.name] = str(error).removeprefix(f"{archive.name}: ")
                continue
            parsed.append((archive, frame))
    finally:
        if own_session:
            http.close()
    if failures:
        raise ArchiveImportError(symbol, timeframe, failures, len(files))

    stored = read_stored_candles(path, symbol, timeframe)
    cleaned_frames = []
    requested_days = []
    for archive, frame in parsed:
        cleaned = clean_fetched(frame, timeframe, now_stamp, f"{symbol} ({archive.name})", result)
        closed_end = pd.Timestamp((epoch_ms(now_stamp) // step_ms) * step_ms, unit="ms", tz="UTC")
        gaps = find_gaps(cleaned["date"], timeframe, start=archive.start, end=min(archive.end, closed_end))
        for gap in gaps:
            logger.warning("%s %s: %s lacks candles %s", symbol, timeframe, archive.name, gap)
        result.gaps.extend(gaps)
        result.files.append(archive.name)
        cleaned_frames.append(cleaned)
        covered = pd.date_range(archive.start, archive.end, freq="D", inclusive="left")
        requested_days.extend(stamp.date() for stamp in covered)

    # A monthly and a daily file may cover the same candles: keep one of each open time.
    combined = sort_unique(pd.concat(cleaned_frames, ignore_index=True), f"{symbol} ({path.name})")
    store_candles(path, symbol, timeframe, combined, now_stamp, requested_days, result, stored=stored)
    logger.info(
        "%s %s: imported %d archive files, %d candles added, %d replaced, %d already stored",
        symbol,
        timeframe,
        len(parsed),
        result.rows_added,
        result.rows_replaced,
        result.rows_ignored,
    )
    return result

