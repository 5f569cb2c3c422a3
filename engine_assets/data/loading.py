"""Candle files: find them in a data folder, read them into one frame layout, write them.

Two layouts are read:

- freqtrade's ``{BASE}_{QUOTE}-{timeframe}.{feather|json|json.gz|csv}``, one file
  per pair, such as ``BTC_USDT-1h.feather`` for symbol ``BTCUSDT``;
- Binance public-data kline CSVs ``{SYMBOL}-{timeframe}-YYYY-MM.csv`` (monthly) or
  ``...-YYYY-MM-DD.csv`` (daily); all files of one symbol form one source.

Every reader returns the same frame: ``date`` (datetime64[ns, UTC], the candle's
open time) and ``open, high, low, close, volume`` (float64), in file order.
Sorting, duplicates and bad values are the job of ``validation.py``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather

from engine_assets.symbols import InvalidSymbolError, validate_symbol

logger = logging.getLogger(__name__)

CANDLE_COLUMNS = ("date", "open", "high", "low", "close", "volume")
PRICE_VOLUME_COLUMNS = CANDLE_COLUMNS[1:]

# When one symbol has files in several formats, the first format of this list is
# read and the others are ignored and logged. Feather comes first because it stores
# float64 prices and timestamps exactly and reads fastest. Binance CSVs come last
# because they are a series of monthly or daily files that may overlap.
FORMAT_PRIORITY = ("feather", "json", "json.gz", "csv", "binance_csv")

# freqtrade's candle file name. A suffix such as -futures, -mark, -index,
# -premiumIndex or -funding_rate marks a futures candle type, which is ignored.
FREQTRADE_NAME = re.compile(
    r"^(?P<base>[^_\-]+)_(?P<quote>[^_\-]+)-(?P<timeframe>[0-9]+[a-zA-Z]+)"
    r"(?P<candle_type>-[A-Za-z_]+)?\.(?P<extension>feather|json\.gz|json|csv)$"
)
# Binance public-data kline file name, as unzipped from data.binance.vision.
BINANCE_NAME = re.compile(
    r"^(?P<symbol>[A-Za-z0-9]+)-(?P<timeframe>[0-9]+[a-zA-Z]+)"
    r"-(?P<year>[0-9]{4})-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2}))?\.(?P<extension>csv|zip)$"
)

# Binance kline CSV columns. Files up to 2024 have no header row, and newer files
# start with a header row of these names.
BINANCE_KLINE_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
# Open times up to 2024 are in milliseconds (about 1.7e12 in 2024) and from the
# 2025 archives on in microseconds (about 1.7e15). 1e14 splits the two: as
# milliseconds it is the year 5138, as microseconds it is 1973.
MICROSECOND_THRESHOLD = 10**14
# Plausible epoch milliseconds: from 2000-01-01 up to 2100-01-01 (exclusive).
MIN_EPOCH_MS = 946_684_800_000
MAX_EPOCH_MS = 4_102_444_800_000


class CandleFileError(ValueError):
    """A candle file that cannot be read: empty, truncated, wrong columns or bad values."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"cannot read candle file {self.path.name}: {problem} (path: {self.path})")


class CandleSourceNotFoundError(FileNotFoundError):
    """No candle file for a requested symbol and timeframe."""


@dataclasses.dataclass(frozen=True)
class CandleSource:
    """The candle files of one symbol and timeframe, in one format.

    ``paths`` has one file for the freqtrade formats and one or more files, in
    date order, for ``binance_csv``.
    """

    symbol: str
    timeframe: str
    paths: tuple[Path, ...]
    format: str

    @property
    def name(self) -> str:
        """File name, or first and last file names for a multi-file source, for reports."""
        if len(self.paths) == 1:
            return self.paths[0].name
        return f"{self.paths[0].name} .. {self.paths[-1].name} ({len(self.paths)} files)"


def find_candle_sources(data_dir: str | os.PathLike, timeframe: str) -> dict[str, CandleSource]:
    """Find the candle files of ``timeframe`` in ``data_dir``, one source per symbol.

    Only the folder itself is searched, not its subfolders (freqtrade keeps
    futures candles in a ``futures/`` subfolder). Files of other timeframes,
    freqtrade futures files and unrelated files are ignored. A file whose name
    gives an invalid symbol is skipped with a warning. Returns symbols in sorted order.
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"candle data folder not found: {folder}; "
            "set ENGINE_DATA_DIR to the folder that contains the candle files"
        )

    # symbol -> format -> list of (sort key, path)
    candidates: dict[str, dict[str, list[tuple[tuple[int, ...], Path]]]] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        found = _parse_file_name(path, timeframe)
        if found is None:
            continue
        symbol, file_format, sort_key = found
        candidates.setdefault(symbol, {}).setdefault(file_format, []).append((sort_key, path))

    sources = {}
    for symbol in sorted(candidates):
        by_format = candidates[symbol]
        chosen = next(file_format for file_format in FORMAT_PRIORITY if file_format in by_format)
        paths = tuple(path for _, path in sorted(by_format[chosen]))
        sources[symbol] = CandleSource(symbol=symbol, timeframe=timeframe, paths=paths, format=chosen)
        ignored = [
            path.name
            for file_format, entries in by_format.items()
            if file_format != chosen
            for _, path in entries
        ]
        if ignored:
            logger.info(
                "%s %s: reading %s (%s); ignoring %s, a format of lower priority",
                symbol,
                timeframe,
                sources[symbol].name,
                chosen,
                ", ".join(sorted(ignored)),
            )
    return sources


def _parse_file_name(path: Path, timeframe: str) -> tuple[str, str, tuple[int, ...]] | None:
    """Return (symbol, format, sort key) for a candle file of ``timeframe``, else None."""
    name = path.name
    match = FREQTRADE_NAME.match(name)
    if match:
        if match["timeframe"] != timeframe:
            return None
        if match["candle_type"]:
            logger.debug("ignoring %s: freqtrade futures candle type %s", path, match["candle_type"])
            return None
        symbol = _checked_symbol(match["base"] + match["quote"], path)
        if symbol is None:
            return None
        return symbol, match["extension"], ()

    match = BINANCE_NAME.match(name)
    if match:
        if match["timeframe"] != timeframe:
            return None
        if match["extension"] == "zip":
            logger.warning("not reading Binance archive %s: unzip it into %s to use it", path, path.parent)
            return None
        symbol = _checked_symbol(match["symbol"], path)
        if symbol is None:
            return None
        # Monthly files sort before the daily files of the same month.
        sort_key = (int(match["year"]), int(match["month"]), int(match["day"] or 0))
        return symbol, "binance_csv", sort_key

    return None


def _checked_symbol(symbol: str, path: Path) -> str | None:
    try:
        return validate_symbol(symbol)
    except InvalidSymbolError as error:
        logger.warning(
            "skipping candle file %s: %s; rename it to the BASE_QUOTE-timeframe layout", path, error
        )
        return None


def read_candles(source: CandleSource) -> pd.DataFrame:
    """Read a source's files into one frame: date (UTC) and float64 prices and volume.

    Rows stay in file order, files in ``source.paths`` order; nothing is sorted,
    deduplicated or dropped. Raises CandleFileError naming the file and the problem.
    """
    readers = {
        "feather": _read_feather,
        "json": _read_json,
        "json.gz": _read_json,
        "csv": _read_freqtrade_csv,
        "binance_csv": _read_binance_csv,
    }
    if source.format not in readers:
        raise ValueError(f"unknown candle format {source.format!r}: expected one of {', '.join(readers)}")
    if not source.paths:
        raise ValueError(f"candle source {source.symbol} {source.timeframe} has no files")

    frames = []
    for path in source.paths:
        if path.stat().st_size == 0:
            raise CandleFileError(path, "empty file")
        frame = readers[source.format](path)
        if frame.empty:
            raise CandleFileError(path, "no rows")
        frames.append(frame)
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def _read_feather(path: Path) -> pd.DataFrame:
    try:
        table = feather.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise CandleFileError(path, f"unreadable Feather file (truncated or corrupt): {error}") from None
    _check_columns(path, table.column_names)
    try:
        frame = table.select(list(CANDLE_COLUMNS)).to_pandas()
    except (pa.ArrowException, ValueError) as error:
        raise CandleFileError(path, f"unreadable Feather file (truncated or corrupt): {error}") from None
    return _to_candle_frame(path, frame)


def _read_json(path: Path) -> pd.DataFrame:
    """Read freqtrade's JSON: a list of ``[open time in ms, open, high, low, close, volume]``."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                text = handle.read()
        else:
            text = path.read_text(encoding="utf-8")
    except (OSError, EOFError, zlib.error) as error:
        raise CandleFileError(path, f"unreadable gzip file (truncated or corrupt): {error}") from None
    except UnicodeDecodeError as error:
        raise CandleFileError(path, f"not UTF-8 text: {error}") from None
    if not text.strip():
        raise CandleFileError(path, "empty file")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise CandleFileError(path, f"invalid JSON (truncated or corrupt): {error}") from None

    expected = "a JSON list of [open time in ms, open, high, low, close, volume] rows"
    if not isinstance(rows, list):
        raise CandleFileError(path, f"expected {expected}, found a {type(rows).__name__}")
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(CANDLE_COLUMNS):
            raise CandleFileError(path, f"expected {expected}; row {index + 1} is {str(row)[:80]}")
    frame = pd.DataFrame(rows, columns=list(CANDLE_COLUMNS))
    return _to_candle_frame(path, frame)


def _read_freqtrade_csv(path: Path) -> pd.DataFrame:
    """Read a CSV with a header row: ``date`` (ISO 8601 or epoch ms) and the price columns."""
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise CandleFileError(path, "empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise CandleFileError(path, f"unparsable CSV: {error}") from None
    _check_columns(path, list(frame.columns))
    return _to_candle_frame(path, frame.loc[:, list(CANDLE_COLUMNS)])


def _read_binance_csv(path: Path) -> pd.DataFrame:
    """Read one Binance kline CSV, with or without its header row."""
    try:
        with path.open("r", encoding="utf-8") as handle:
            first_line = handle.readline().strip()
    except UnicodeDecodeError as error:
        raise CandleFileError(path, f"not UTF-8 text: {error}") from None
    if not first_line:
        raise CandleFileError(path, "empty file")
    has_header = not first_line[0].isdigit()

    try:
        raw = pd.read_csv(path, header=0 if has_header else None, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise CandleFileError(path, "empty file") from None
    except (pd.errors.ParserError, ValueError) as error:
        raise CandleFileError(path, f"unparsable CSV: {error}") from None
    if raw.shape[1] != len(BINANCE_KLINE_COLUMNS):
        raise CandleFileError(
            path,
            f"expected the {len(BINANCE_KLINE_COLUMNS)} Binance kline columns "
            f"({', '.join(BINANCE_KLINE_COLUMNS)}), found {raw.shape[1]}",
        )
    raw.columns = list(BINANCE_KLINE_COLUMNS)
    if raw.empty:
        return pd.DataFrame(columns=list(CANDLE_COLUMNS))

    open_time = _parse_numbers(path, raw["open_time"], "open_time")
    if not np.all(np.isfinite(open_time)):
        row = int(np.flatnonzero(~np.isfinite(open_time))[0])
        raise CandleFileError(path, f"missing open_time at data row {row + 1}")
    open_time = open_time.astype(np.int64)
    is_microseconds = open_time >= MICROSECOND_THRESHOLD
    if is_microseconds.any() and not is_microseconds.all():
        raise CandleFileError(
            path,
            f"open_time mixes milliseconds ({int((~is_microseconds).sum())} rows) and microseconds "
            f"({int(is_microseconds.sum())} rows); each Binance file must use one unit",
        )
    epoch_ms = open_time // 1000 if is_microseconds.all() else open_time

    frame = raw.loc[:, ["open", "high", "low", "close", "volume"]].copy()
    frame.insert(0, "date", epoch_ms)
    return _to_candle_frame(path, frame)


def _check_columns(path: Path, found: Sequence[str]) -> None:
    missing = [column for column in CANDLE_COLUMNS if column not in found]
    if missing:
        raise CandleFileError(
            path, f"missing columns {missing} (found: {list(found)}); expected {list(CANDLE_COLUMNS)}"
        )


def _to_candle_frame(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Convert the six columns to the engine's dtypes, raising on values that do not parse."""
    result = pd.DataFrame({"date": _parse_dates(path, frame["date"])})
    for column in PRICE_VOLUME_COLUMNS:
        result[column] = _parse_numbers(path, frame[column], column)
    return result.reset_index(drop=True)


def _parse_numbers(path: Path, values: pd.Series, column: str) -> np.ndarray:
    """Return float64 values; empty cells and nulls become NaN, other text raises."""
    if pd.api.types.is_bool_dtype(values):
        raise CandleFileError(path, f"column {column!r} contains true/false values, expected numbers")
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    parsed = pd.to_numeric(values, errors="coerce")
    blank = values.isna() | values.astype(str).str.strip().isin(["", "NaN", "nan", "null", "None"])
    bad = parsed.isna() & ~blank
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CandleFileError(
            path,
            f"unparsable value {values.iloc[row]!r} in column {column!r} at data row {row + 1} "
            f"({int(bad.sum())} such values)",
        )
    return parsed.to_numpy(dtype=np.float64, na_value=np.nan)


def _parse_dates(path: Path, values: pd.Series) -> pd.Series:
    """Convert open times to datetime64[ns, UTC].

    Numbers are epoch milliseconds (freqtrade's JSON and CSV), text is ISO 8601,
    and timestamps without a time zone are taken as UTC.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        dates = values
        if dates.dt.tz is None:
            dates = dates.dt.tz_localize("UTC")
        dates = dates.dt.tz_convert("UTC")
    elif _looks_numeric(values):
        numbers = _parse_numbers(path, values, "date")
        if np.isnan(numbers).any():
            row = int(np.flatnonzero(np.isnan(numbers))[0])
            raise CandleFileError(path, f"missing date at data row {row + 1}")
        out_of_range = ~((numbers >= MIN_EPOCH_MS) & (numbers < MAX_EPOCH_MS))
        if out_of_range.any():
            row = int(np.flatnonzero(out_of_range)[0])
            raise CandleFileError(
                path,
                f"date {values.iloc[row]!r} at data row {row + 1} is not epoch milliseconds "
                "between 2000 and 2100",
            )
        dates = pd.to_datetime(numbers.astype(np.int64), unit="ms", utc=True)
        dates = pd.Series(dates, index=values.index)
    else:
        text = values.astype("string")
        dates = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        bad = dates.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise CandleFileError(
                path,
                f"unparsable date {values.iloc[row]!r} at data row {row + 1}: "
                "expected ISO 8601 or epoch milliseconds",
            )
    if dates.isna().any():
        row = int(np.flatnonzero(dates.isna().to_numpy())[0])
        raise CandleFileError(path, f"missing date at data row {row + 1}")
    return dates.astype("datetime64[ns, UTC]")


def _looks_numeric(values: pd.Series) -> bool:
    """Return whether a date column contains epoch numbers rather than ISO text.

    A text column counts as numbers when any of its first 100 cells parses, so a
    few bad cells are reported as unparsable numbers, not as bad ISO dates.
    """
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_numeric_dtype(values):
        return True
    return bool(pd.to_numeric(values.head(100), errors="coerce").notna().any())


def write_candles_feather(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write candles to ``path`` in freqtrade's Feather layout, atomically.

    The frame is written to a temporary file in the same folder and moved into
    place with ``os.replace``, so a reader sees either the old file or the
    complete new one, never a partial write. Returns the path written.
    """
    target = Path(path)
    missing = [column for column in CANDLE_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(
            f"cannot write {target.name}: missing columns {missing} (found: {list(frame.columns)})"
        )
    out = frame.loc[:, list(CANDLE_COLUMNS)].reset_index(drop=True).copy()
    out["date"] = pd.to_datetime(out["date"], utc=True).astype("datetime64[ns, UTC]")
    for column in PRICE_VOLUME_COLUMNS:
        out[column] = out[column].astype(np.float64)

    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    temporary = Path(temporary_name)
    try:
        with os.fdopen(handle, "wb") as stream:
            feather.write_feather(out, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target
