"""Rules that turn freshly fetched candles into the stored candle file.

The rules, each a pure function below, applied by ``clean_fetched`` and
``store_candles``:

- A candle still open at the fetch time (open time + timeframe > ``now``) is
  dropped: its close, high, low and volume are not final yet.
- A candle whose open time is not on the timeframe boundary is rejected, not
  snapped: snapping would invent a candle for a boundary the exchange never
  reported. Each rejected row is logged with the file, symbol and row.
- Merging never duplicates a candle and never reorders rows. A fetched candle
  for an open time already stored replaces the stored one only when its UTC
  day is marked partial. Otherwise the stored candle is kept and the fetched
  one is counted as ignored, so a later download cannot rewrite final history.
- A closed UTC day with fewer candles than the timeframe gives
  (``86400 / timeframe`` seconds) is marked partial in a sidecar state file
  next to the data, ``.{BASE}_{QUOTE}-{timeframe}.partial.json``. The next
  download starts from the earliest partial day again, up to
  ``MAX_PARTIAL_REFETCHES`` times per day. After that the day stays listed as
  partial (never final) but no longer moves the download start, because an
  exchange outage or a listing day never fills up.
- Missing candles inside the fetched range are reported as gaps.
- Files are written atomically (temporary file in the same folder, then
  ``os.replace``), so a crash leaves the previous file intact.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from engine_assets.data.loading import CANDLE_COLUMNS, CandleSource, read_candles, write_candles_feather
from engine_assets.settings import TIMEFRAME_SECONDS
from engine_assets.symbols import symbol_to_pair, validate_symbol

logger = logging.getLogger(__name__)

PRICE_VOLUME_COLUMNS = CANDLE_COLUMNS[1:]
DAY_MS = 86_400_000
# A partial day moves the next download's start back to it this many times at most.
MAX_PARTIAL_REFETCHES = 3
# Rejected rows logged one by one per call; the rest are counted in one line.
MAX_REJECTED_LOG_LINES = 5
STATE_VERSION = 1


class CandleDataError(ValueError):
    """Stored or fetched candles that break a storage rule (order, timeframe, state file)."""


@dataclasses.dataclass(frozen=True)
class Gap:
    """Missing candles: ``count`` open times from ``start`` to ``end``, both included."""

    start: pd.Timestamp
    end: pd.Timestamp
    count: int

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC ({self.count} candles)"


@dataclasses.dataclass(frozen=True)
class RejectedCandle:
    """A fetched candle rejected because its open time is off the timeframe boundary."""

    row: int
    date: pd.Timestamp
    reason: str


@dataclasses.dataclass(frozen=True)
class MergeResult:
    """Merged candles and what the merge did with the fetched ones."""

    frame: pd.DataFrame
    added: int
    replaced: int
    ignored: int


@dataclasses.dataclass
class DownloadResult:
    """Outcome of one coin's download or archive import.

    ``status`` is ``updated`` (new or replaced candles stored), ``up_to_date``
    (nothing new) or ``failed``, with the reason in ``error`` and the stored
    file unchanged.
    """

    symbol: str
    timeframe: str
    status: str = "up_to_date"
    path: Path | None = None
    rows_added: int = 0
    rows_replaced: int = 0
    rows_ignored: int = 0
    dropped_open: int = 0
    rejected: list[RejectedCandle] = dataclasses.field(default_factory=list)
    gaps: list[Gap] = dataclasses.field(default_factory=list)
    partial_days: list[dt.date] = dataclasses.field(default_factory=list)
    first_new: pd.Timestamp | None = None
    last_candle: pd.Timestamp | None = None
    requests: int = 0
    retries: int = 0
    files: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclasses.dataclass(frozen=True)
class PartialDay:
    """A closed UTC day stored with fewer candles than expected."""

    candles: int
    expected: int
    refetches: int = 0


# Paths and timeframes.


def candle_file_path(data_dir: str | os.PathLike, symbol: str, timeframe: str) -> Path:
    """Return freqtrade's Feather path for a symbol: ``BTCUSDT`` -> ``BTC_USDT-1h.feather``."""
    base, quote = symbol_to_pair(validate_symbol(symbol)).split("/")
    return Path(data_dir) / f"{base}_{quote}-{timeframe}.feather"


def partial_state_path(candle_path: Path) -> Path:
    """Return the sidecar state file of a candle file: ``.BTC_USDT-1h.partial.json``."""
    stem = candle_path.name.removesuffix(".feather")
    return candle_path.with_name(f".{stem}.partial.json")


def timeframe_ms(timeframe: str) -> int:
    """Return the length of a timeframe in milliseconds, for timeframes of one day or less."""
    if timeframe not in TIMEFRAME_SECONDS:
        raise CandleDataError(
            f"unsupported timeframe {timeframe!r}: expected one of {', '.join(TIMEFRAME_SECONDS)}"
        )
    return TIMEFRAME_SECONDS[timeframe] * 1000


def candles_per_day(timeframe: str) -> int:
    return DAY_MS // timeframe_ms(timeframe)


def to_utc_timestamp(value: object) -> pd.Timestamp:
    """Convert a datetime, date, ISO string or Timestamp to a UTC Timestamp (naive values are UTC)."""
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        return stamp.tz_localize("UTC")
    return stamp.tz_convert("UTC")


def epoch_ms(stamp: pd.Timestamp) -> int:
    return int(to_utc_timestamp(stamp).value // 1_000_000)


# Frames.


def empty_candles() -> pd.DataFrame:
    frame = pd.DataFrame({"date": pd.Series([], dtype="datetime64[ns, UTC]")})
    for column in PRICE_VOLUME_COLUMNS:
        frame[column] = pd.Series([], dtype=np.float64)
    return frame


def ohlcv_to_frame(rows: Sequence[Sequence[float]]) -> pd.DataFrame:
    """Convert ccxt OHLCV rows (``[open time in ms, open, high, low, close, volume]``) to a candle frame."""
    if not rows:
        return empty_candles()
    array = np.asarray([row[:6] for row in rows], dtype=object)
    frame = pd.DataFrame({"date": pd.to_datetime(array[:, 0].astype(np.int64), unit="ms", utc=True)})
    for index, column in enumerate(PRICE_VOLUME_COLUMNS, start=1):
        frame[column] = pd.to_numeric(pd.Series(array[:, index]), errors="coerce").astype(np.float64)
    frame["date"] = frame["date"].astype("datetime64[ns, UTC]")
    return frame


def _open_ms(frame: pd.DataFrame) -> np.ndarray:
    return frame["date"].astype("datetime64[ns, UTC]").astype("int64").to_numpy() // 1_000_000


def drop_open_candles(frame: pd.DataFrame, timeframe: str, now: pd.Timestamp) -> tuple[pd.DataFrame, int]:
    """Drop candles not closed at ``now`` (open time + timeframe > now); return the rest and the count dropped."""
    closed = _open_ms(frame) + timeframe_ms(timeframe) <= epoch_ms(now)
    return frame.loc[closed].reset_index(drop=True), int((~closed).sum())


def reject_misaligned(
    frame: pd.DataFrame, timeframe: str, source: str
) -> tuple[pd.DataFrame, list[RejectedCandle]]:
    """Drop candles whose open time is not a multiple of the timeframe since the epoch.

    ``source`` names the file or symbol in the log lines. Row numbers count from
    1 in the order the candles were received.
    """
    step = timeframe_ms(timeframe)
    offsets = _open_ms(frame) % step
    bad_rows = np.flatnonzero(offsets != 0)
    rejected = [
        RejectedCandle(
            row=int(row) + 1,
            date=frame["date"].iloc[row],
            reason=f"open time {frame['date'].iloc[row]:%Y-%m-%d %H:%M:%S.%f} is "
            f"{int(offsets[row]) / 1000:g} s past a {timeframe} boundary",
        )
        for row in bad_rows
    ]
    for candle in rejected[:MAX_REJECTED_LOG_LINES]:
        logger.warning("%s: rejected row %d: %s", source, candle.row, candle.reason)
    if len(rejected) > MAX_REJECTED_LOG_LINES:
        logger.warning(
            "%s: rejected %d more rows off the %s boundary", source, len(rejected) - MAX_REJECTED_LOG_LINES, timeframe
        )
    keep = offsets == 0
    return frame.loc[keep].reset_index(drop=True), rejected


def sort_unique(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Sort fetched candles by open time and keep the last copy of a repeated open time."""
    ordered = frame.sort_values("date", kind="stable")
    unique = ordered.drop_duplicates("date", keep="last").reset_index(drop=True)
    if len(unique) < len(frame):
        logger.warning("%s: dropped %d repeated open times in the fetched candles", source, len(frame) - len(unique))
    return unique


def check_strictly_increasing(frame: pd.DataFrame, source: str) -> None:
    """Raise CandleDataError unless open times strictly increase, naming the first bad row."""
    steps = np.diff(_open_ms(frame))
    bad = np.flatnonzero(steps <= 0)
    if len(bad):
        row = int(bad[0]) + 1
        raise CandleDataError(
            f"{source}: open times do not strictly increase at row {row + 1} "
            f"({frame['date'].iloc[row - 1]} then {frame['date'].iloc[row]}). "
            "The downloader does not rewrite such a file: repair or remove it, then download again"
        )


def find_gaps(
    dates: pd.Series, timeframe: str, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None
) -> list[Gap]:
    """Find missing open times between sorted ``dates``.

    With ``start``, open times from ``start`` up to the first date count too;
    with ``end`` (exclusive), open times after the last date up to ``end``.
    """
    step = timeframe_ms(timeframe)
    open_ms = _open_ms(pd.DataFrame({"date": dates}))
    if start is not None:
        open_ms = np.concatenate([[epoch_ms(start) - step], open_ms])
    if end is not None:
        open_ms = np.concatenate([open_ms, [epoch_ms(end)]])
    if len(open_ms) < 2:
        return []
    steps = np.diff(open_ms)
    gaps = []
    for index in np.flatnonzero(steps > step):
        first_missing = int(open_ms[index]) + step
        last_missing = int(open_ms[index + 1]) - step
        gaps.append(
            Gap(
                start=pd.Timestamp(first_missing, unit="ms", tz="UTC"),
                end=pd.Timestamp(last_missing, unit="ms", tz="UTC"),
                count=(last_missing - first_missing) // step + 1,
            )
        )
    return gaps


def count_candles_by_day(frame: pd.DataFrame) -> dict[dt.date, int]:
    days = (_open_ms(frame) // DAY_MS) * DAY_MS
    values, counts = np.unique(days, return_counts=True)
    return {pd.Timestamp(int(day), unit="ms", tz="UTC").date(): int(count) for day, count in zip(values, counts)}


def closed_days(days: Iterable[dt.date], now: pd.Timestamp) -> list[dt.date]:
    """Keep the UTC days that have ended at ``now``."""
    today = to_utc_timestamp(now).date()
    return sorted(day for day in days if day < today)


def find_partial_days(
    frame: pd.DataFrame, timeframe: str, days: Iterable[dt.date], now: pd.Timestamp
) -> dict[dt.date, int]:
    """Return the closed days among ``days`` holding fewer candles than a full day, with their counts.

    A day with no candle at all is not listed: it is a gap, reported as such.
    """
    expected = candles_per_day(timeframe)
    counts = count_candles_by_day(frame)
    return {
        day: counts[day] for day in closed_days(days, now) if 0 < counts.get(day, 0) < expected
    }


def merge_candles(
    stored: pd.DataFrame, fetched: pd.DataFrame, replaceable_days: Iterable[dt.date]
) -> MergeResult:
    """Merge sorted, unique ``fetched`` candles into sorted, unique ``stored`` candles.

    An open time already stored keeps the stored candle, unless its UTC day is
    in ``replaceable_days`` (a day stored partial), where the fetched candle
    replaces it. Rows are returned sorted by open time, with no open time twice.
    """
    replaceable = {pd.Timestamp(day, tz="UTC").value // 1_000_000 for day in replaceable_days}
    fetched_ms = _open_ms(fetched)
    already_stored = np.isin(fetched_ms, _open_ms(stored))
    in_replaceable_day = np.isin((fetched_ms // DAY_MS) * DAY_MS, list(replaceable))
    replace = already_stored & in_replaceable_day
    ignore = already_stored & ~in_replaceable_day

    merged = stored.set_index("date")
    if replace.any():
        replacements = fetched.loc[replace].set_index("date")
        merged.loc[replacements.index, list(PRICE_VOLUME_COLUMNS)] = replacements[list(PRICE_VOLUME_COLUMNS)]
    added = fetched.loc[~already_stored]
    frame = pd.concat([merged.reset_index(), added], ignore_index=True)
    frame = frame.sort_values("date", kind="stable").reset_index(drop=True)
    frame = frame.loc[:, list(CANDLE_COLUMNS)]
    return MergeResult(frame=frame, added=int(len(added)), replaced=int(replace.sum()), ignored=int(ignore.sum()))


# Stored files.


def read_stored_candles(path: Path, symbol: str, timeframe: str) -> pd.DataFrame:
    """Read the stored Feather file, or return no candles when it does not exist."""
    if not path.exists():
        return empty_candles()
    source = CandleSource(symbol=symbol, timeframe=timeframe, paths=(path,), format="feather")
    frame = read_candles(source)
    check_strictly_increasing(frame, path.name)
    return frame


def read_partial_state(path: Path) -> dict[dt.date, PartialDay]:
    """Read the partial days of a sidecar state file; a missing file means none."""
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        days = {
            dt.date.fromisoformat(day): PartialDay(
                candles=int(entry["candles"]),
                expected=int(entry["expected"]),
                refetches=int(entry.get("refetches", 0)),
            )
            for day, entry in document["partial_days"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CandleDataError(
            f"invalid partial-day state file {path}: {error}; delete it to treat every stored day as final"
        ) from None
    return days


def write_partial_state(path: Path, symbol: str, timeframe: str, days: dict[dt.date, PartialDay]) -> None:
    """Write the partial days atomically; with no partial day left, remove the file."""
    if not days:
        path.unlink(missing_ok=True)
        return
    document = {
        "version": STATE_VERSION,
        "symbol": symbol,
        "timeframe": timeframe,
        "partial_days": {day.isoformat(): dataclasses.asdict(days[day]) for day in sorted(days)},
    }
    _write_text_atomically(path, json.dumps(document, indent=2) + "\n")


def _write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temporary = Path(temporary_name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def refetch_start(state: dict[dt.date, PartialDay]) -> pd.Timestamp | None:
    """Return the start of the earliest partial day still due a refetch, if any."""
    due = [day for day, entry in state.items() if entry.refetches < MAX_PARTIAL_REFETCHES]
    if not due:
        return None
    return pd.Timestamp(min(due), tz="UTC")


def days_between(start: pd.Timestamp, end: pd.Timestamp) -> list[dt.date]:
    """Return the UTC days from ``start``'s day up to ``end``'s day, both included."""
    first = to_utc_timestamp(start).normalize()
    last = to_utc_timestamp(end).normalize()
    if last < first:
        return []
    return [stamp.date() for stamp in pd.date_range(first, last, freq="D")]


def clean_fetched(
    fetched: pd.DataFrame, timeframe: str, now: pd.Timestamp, source: str, result: DownloadResult
) -> pd.DataFrame:
    """Drop open candles, reject misaligned ones and sort; add the counts to ``result``."""
    fetched, dropped = drop_open_candles(fetched, timeframe, now)
    fetched, rejected = reject_misaligned(fetched, timeframe, source)
    result.dropped_open += dropped
    result.rejected.extend(rejected)
    return sort_unique(fetched, source)


def store_candles(
    path: Path,
    symbol: str,
    timeframe: str,
    fetched: pd.DataFrame,
    now: pd.Timestamp,
    requested_days: Iterable[dt.date],
    result: DownloadResult,
    stored: pd.DataFrame | None = None,
) -> DownloadResult:
    """Merge cleaned ``fetched`` candles into ``path`` and update the partial-day state.

    ``fetched`` must have passed ``clean_fetched``. ``requested_days`` are the
    UTC days the fetch covered: their partial-day state is updated even when
    the response held no candle for them. ``result`` is updated in place and
    returned.
    """
    state_path = partial_state_path(path)
    state = read_partial_state(state_path)
    if stored is None:
        stored = read_stored_candles(path, symbol, timeframe)

    merged = merge_candles(stored, fetched, state.keys())
    result.rows_added += merged.added
    result.rows_replaced += merged.replaced
    result.rows_ignored += merged.ignored

    # Days to re-check: every requested day and every day a fetched candle fell on.
    checked = set(requested_days) | set(count_candles_by_day(fetched))
    partial_now = find_partial_days(merged.frame, timeframe, checked, now)
    expected = candles_per_day(timeframe)
    new_state = {day: entry for day, entry in state.items() if day not in checked}
    for day, count in partial_now.items():
        refetches = state[day].refetches + 1 if day in state else 0
        new_state[day] = PartialDay(candles=count, expected=expected, refetches=refetches)
    resolved = sorted(day for day in state if day in checked and day not in partial_now)

    # Crash safety: the state first lists the old and the new partial days, so a
    # crash before the data write never leaves a partial day looking final. Days
    # that this merge completed are removed only after the data is in place.
    changed = merged.added > 0 or merged.replaced > 0
    if changed:
        write_partial_state(state_path, symbol, timeframe, {**state, **new_state})
        write_candles_feather(merged.frame, path)
    write_partial_state(state_path, symbol, timeframe, new_state)

    for day in resolved:
        logger.info("%s %s: day %s is complete now, no longer partial", symbol, timeframe, day)
    for day, count in sorted(partial_now.items()):
        logger.warning(
            "%s %s: day %s has %d of %d candles; marked partial in %s",
            symbol,
            timeframe,
            day,
            count,
            expected,
            state_path.name,
        )

    result.path = path
    result.partial_days = sorted(partial_now)
    result.status = "updated" if changed else "up_to_date"
    if merged.added:
        result.first_new = fetched["date"][~fetched["date"].isin(stored["date"])].min()
    if len(merged.frame):
        result.last_candle = merged.frame["date"].iloc[-1]
    return result
