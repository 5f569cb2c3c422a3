"""Asset checks: candle quality per coin, champion freshness, and the newest model's manifest.

- ``candle_quality`` (on ``candles``, blocking): passes when the candles
  needed no repair, warns when rows were sorted, dropped or widened, and
  fails with ERROR when the data is unusable. The ``candles`` asset emits it,
  because only the asset has the validation report. On unusable data the
  asset emits the ERROR result and then fails, so ``features`` and
  ``coin_model`` do not run.
- ``champion_freshness`` (on ``coin_model``): warns when the coin has no
  champion, or when its champion was promoted longer ago than the configured
  age, so no challenger has beaten it since.
- ``manifest_integrity`` (on ``coin_model``): verifies every file of the
  coin's newest model folder against its manifest's SHA256 values.

Every check is partitioned by coin like the asset it checks, so each coin
keeps its own result in the UI.
"""

import contextlib
import datetime as dt
import logging
import re
import warnings
from collections.abc import Iterator, Mapping

import dagster as dg
from pydantic import Field

from engine_assets.partitions import coin_partitions
from engine_assets.resources import EngineResource
from engine_assets.storage.base import ArtifactStore, IntegrityError
from engine_assets.storage.manifest import MANIFEST_NAME, read_json, sha256_hex, verify_folder

logger = logging.getLogger(__name__)

CANDLES_KEY = dg.AssetKey("candles")
COIN_MODEL_KEY = dg.AssetKey("coin_model")
CANDLE_QUALITY = "candle_quality"
# Two weeks of daily runs without a challenger beating the champion is worth a look.
DEFAULT_CHAMPION_MAX_AGE_HOURS = 14 * 24.0
# A model folder name: the UTC time it was written, YYYYMMDD_HHMMSSZ.
MODEL_FOLDER_PATTERN = re.compile(r"^\d{8}_\d{6}Z$")


@contextlib.contextmanager
def _partitioned_check_definitions() -> Iterator[None]:
    # NOTE: a partitions_def on an asset check is a preview API in Dagster 1.13, which
    # warns each time one is defined, and this block silences that warning. Without it a
    # check keeps one result for all coins, so one coin's pass would hide another
    # coin's failure. pyproject.toml pins dagster exactly, so the API changes only
    # with a deliberate upgrade.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        yield


with _partitioned_check_definitions():
    candle_quality_spec = dg.AssetCheckSpec(
        CANDLE_QUALITY,
        asset=CANDLES_KEY,
        blocking=True,
        partitions_def=coin_partitions,
        description=(
            "Candle validation of the coin: passes when no row needed a repair (gaps are listed, not repaired), "
            "WARN when rows were sorted, dropped or widened, ERROR when the data is unusable. "
            "An ERROR blocks the coin's features and model in the same run."
        ),
    )


def _findings_markdown(findings: list[str]) -> dg.MarkdownMetadataValue:
    return dg.MetadataValue.md("\n".join(f"- {line}" for line in findings) or "none")


def candle_quality_result(report: Mapping) -> dg.AssetCheckResult:
    """Return the ``candle_quality`` result for a coin's candle report (``CandleReport.to_dict()``)."""
    from engine_assets.reporting.tables import candle_findings_table

    severity = report.get("severity", "ok")
    repairs = [line for line in report.get("findings", []) if not line.startswith(("gap:", "..."))]
    metadata = {
        "severity": severity,
        "rows_read": int(report.get("rows_read", 0)),
        "rows_valid": int(report.get("rows_valid", 0)),
        "gaps": int(report.get("gap_count", len(report.get("gaps", [])))),
        "missing_candles": int(report.get("missing_candles", 0)),
        "checks": candle_findings_table(report),
        "findings": _findings_markdown(list(report.get("findings", []))),
    }
    if severity == "ok":
        return dg.AssetCheckResult(
            check_name=CANDLE_QUALITY,
            asset_key=CANDLES_KEY,
            passed=True,
            metadata=metadata,
            description="no row needed a repair",
        )
    return dg.AssetCheckResult(
        check_name=CANDLE_QUALITY,
        asset_key=CANDLES_KEY,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=f"repaired: {'; '.join(repairs) or severity}",
    )


def candle_quality_error(error: BaseException) -> dg.AssetCheckResult:
    """Return the ERROR ``candle_quality`` result for candles that are unusable.

    The spec is blocking, so this result alone would stop the coin's features
    and model in the run. The candles asset also fails, naming the file.
    """
    return dg.AssetCheckResult(
        check_name=CANDLE_QUALITY,
        asset_key=CANDLES_KEY,
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"reason": str(error), "error": type(error).__name__},
        description=f"unusable candles: {error}",
    )


class ChampionFreshnessConfig(dg.Config):
    """Launchpad settings of the champion freshness check."""

    max_age_hours: float = Field(
        default=DEFAULT_CHAMPION_MAX_AGE_HOURS,
        gt=0,
        description="Age in hours after which the check warns, because no challenger has beaten the champion since.",
    )


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _folder_time(path: str) -> dt.datetime | None:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if not MODEL_FOLDER_PATTERN.match(name):
        return None
    return dt.datetime.strptime(name, "%Y%m%d_%H%M%SZ").replace(tzinfo=dt.timezone.utc)


def evaluate_champion_freshness(
    store: ArtifactStore, symbol: str, max_age_hours: float, now: dt.datetime | None = None
) -> dg.AssetCheckResult:
    """Return the ``champion_freshness`` result of ``symbol``'s champion pointer at ``now``.

    The champion's age counts from ``promoted_at`` in its pointer, or from its
    model folder's time when the pointer has none.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    pointer = read_json(store, f"champions/{symbol}.json")
    base = {"max_age_hours": float(max_age_hours)}
    if not pointer:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={**base, "champion": "none"},
            description=f"{symbol} has no champion: no model has passed the promotion rules yet",
        )
    path = str(pointer.get("path", ""))
    promoted = _parse_time(pointer.get("promoted_at")) or _folder_time(path)
    if promoted is None:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={**base, "champion": path},
            description=f"champions/{symbol}.json has no promoted_at and its path {path!r} has no time: age unknown",
        )
    age_hours = (now - promoted).total_seconds() / 3600
    metadata = {
        **base,
        "champion": path,
        "promoted_at": promoted.isoformat(timespec="seconds"),
        "age_hours": round(age_hours, 2),
    }
    if age_hours <= max_age_hours:
        return dg.AssetCheckResult(
            passed=True, metadata=metadata, description=f"champion promoted {age_hours / 24:.1f} days ago"
        )
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=(
            f"champion {path} was promoted {age_hours / 24:.1f} days ago, more than {max_age_hours / 24:.1f} days: "
            "no challenger has beaten it since; look at the coin's recent decisions and its candles"
        ),
    )


def newest_model_folder(store: ArtifactStore, symbol: str) -> str | None:
    """Return the key of ``symbol``'s newest model folder, ``models/{SYMBOL}/YYYYMMDD_HHMMSSZ``, if any."""
    names = [name for name in store.list_folders(f"models/{symbol}") if MODEL_FOLDER_PATTERN.match(name)]
    return f"models/{symbol}/{max(names)}" if names else None


def evaluate_manifest_integrity(store: ArtifactStore, symbol: str) -> dg.AssetCheckResult:
    """Return the ``manifest_integrity`` result of ``symbol``'s newest model folder.

    A folder without a manifest (an upload cut short) is a WARN, because
    readers never load it. A listed file that is missing, or whose size or
    SHA256 differs, is an ERROR.
    """
    folder = newest_model_folder(store, symbol)
    if folder is None:
        return dg.AssetCheckResult(
            passed=True, metadata={"folder": "none"}, description=f"{symbol} has no model folder yet: nothing to verify"
        )
    if not store.exists(f"{folder}/{MANIFEST_NAME}"):
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"folder": folder},
            description=f"{folder} has no {MANIFEST_NAME}: an incomplete upload, never loaded; delete it or retrain",
        )
    try:
        files = verify_folder(store, folder)
    except IntegrityError as error:
        logger.error("%s: manifest check failed: %s", symbol, error)
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"folder": folder, "error": str(error)},
            description=f"{folder} does not match its manifest: {error}",
        )
    manifest_bytes = store.read_bytes(f"{folder}/{MANIFEST_NAME}")
    return dg.AssetCheckResult(
        passed=True,
        metadata={
            "folder": folder,
            "files": len(files),
            "bytes": sum(len(data) for data in files.values()),
            "manifest_sha256": sha256_hex(manifest_bytes),
        },
        description=f"{len(files)} files of {folder} match their SHA256",
    )


with _partitioned_check_definitions():

    @dg.asset_check(asset=COIN_MODEL_KEY, partitions_def=coin_partitions, name="champion_freshness")
    def champion_freshness(
        context: dg.AssetCheckExecutionContext, config: ChampionFreshnessConfig, engine: EngineResource
    ) -> dg.AssetCheckResult:
        """WARN when the coin has no champion, or its champion is older than max_age_hours (default 14 days)."""
        return evaluate_champion_freshness(engine.store(), context.partition_key, config.max_age_hours)

    @dg.asset_check(asset=COIN_MODEL_KEY, partitions_def=coin_partitions, name="manifest_integrity")
    def manifest_integrity(context: dg.AssetCheckExecutionContext, engine: EngineResource) -> dg.AssetCheckResult:
        """ERROR when a file of the coin's newest model folder is missing or differs from its manifest SHA256."""
        return evaluate_manifest_integrity(engine.store(), context.partition_key)


coin_model_checks = [champion_freshness, manifest_integrity]
