"""The engine's settings, read once from the environment.

Every ``ENGINE_*`` variable is read here and nowhere else, so a reader can see
all knobs in one place and tests can build settings from a plain dict.
Secrets (S3 keys, Dropbox and Telegram tokens) are not kept here: they reach
the code through Dagster ``EnvVar`` resources, resolved at run time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from engine_assets.symbols import validate_symbol

TRAINING_MODES = ("sequential", "parallel", "hybrid")
STORAGE_BACKENDS = ("local", "s3", "dropbox")
# Initial state of the daily schedule, as Dagster's DefaultScheduleStatus names it.
SCHEDULE_STATUSES = ("stopped", "running")
DEFAULT_DAILY_CRON = "15 0 * * *"
TIMEFRAME_SECONDS = {
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "6h": 21600,
    "8h": 28800,
    "12h": 43200,
    "1d": 86400,
}
# Concurrency of the hybrid mode: a GPU serves many small coin runs at once,
# while on a CPU each run already uses a core for its tree heads.
HYBRID_GPU_CONCURRENCY = 12
HYBRID_CPU_CONCURRENCY = 2

CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """An environment variable with an invalid value."""


def _default_data_dir() -> Path:
    shared = CHECKOUT_ROOT.parent / "shared" / "data" / "ohlcv" / "binance"
    if shared.is_dir():
        return shared
    return CHECKOUT_ROOT / "data" / "ohlcv" / "binance"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"invalid {name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise SettingsError(f"invalid {name}={value}: expected at least {minimum}")
    return value


def _cron(env: Mapping[str, str], name: str, default: str) -> str:
    value = " ".join(env.get(name, "").split()) or default
    if value == default:
        return value
    # Dagster's own parser, imported only here so that reading settings stays cheap.
    from dagster._utils.schedules import is_valid_cron_string

    if not is_valid_cron_string(value):
        raise SettingsError(
            f"invalid {name}={value!r}: expected a cron expression of 5 fields "
            f"(minute hour day month weekday), such as {default!r}"
        )
    return value


def _failpoints(env: Mapping[str, str]) -> str:
    from engine_assets.scheduling.failpoints import parse_failpoints

    value = env.get("ENGINE_FAILPOINTS", "").strip()
    try:
        parse_failpoints(value)
    except ValueError as error:
        raise SettingsError(str(error)) from None
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"invalid {name}={value!r}: expected one of {', '.join(choices)}")
    return value


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """All engine settings; see the README's settings table for each variable."""

    home: Path
    data_dir: Path
    timeframe: str = "1h"
    symbols: tuple[str, ...] = ()
    training_mode: str = "hybrid"
    concurrency: int = 2
    coin_timeout_seconds: int = 2700
    coin_retries: int = 2
    storage: str = "local"
    s3_bucket: str = ""
    s3_prefix: str = ""
    dropbox_root: str = "/engine"
    encoder_epochs: int = 6
    failpoints: str = ""
    daily_cron: str = DEFAULT_DAILY_CRON
    daily_schedule: str = "stopped"
    download_exchange: str = ""
    download_api_url: str = ""
    notify_max_wait_seconds: int = 30

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def storage_root(self) -> Path:
        return self.home / "storage"

    @property
    def cache_root(self) -> Path:
        """Local folder for intermediate data (cleaned candles, features)."""
        return self.home / "cache"

    @property
    def timeframe_seconds(self) -> int:
        return TIMEFRAME_SECONDS[self.timeframe]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "EngineSettings":
        """Build settings from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        home = Path(env.get("ENGINE_HOME") or CHECKOUT_ROOT / ".engine").expanduser().resolve()
        data_dir = Path(env.get("ENGINE_DATA_DIR") or _default_data_dir()).expanduser().resolve()
        timeframe = env.get("ENGINE_TIMEFRAME", "").strip() or "1h"
        if timeframe not in TIMEFRAME_SECONDS:
            raise SettingsError(
                f"invalid ENGINE_TIMEFRAME={timeframe!r}: expected one of {', '.join(TIMEFRAME_SECONDS)}"
            )
        symbols = tuple(
            validate_symbol(part.strip().upper())
            for part in env.get("ENGINE_SYMBOLS", "").split(",")
            if part.strip()
        )
        return cls(
            home=home,
            data_dir=data_dir,
            timeframe=timeframe,
            symbols=symbols,
            training_mode=_choice(env, "ENGINE_TRAINING_MODE", "hybrid", TRAINING_MODES),
            concurrency=_int(env, "ENGINE_CONCURRENCY", os.cpu_count() or 1, 1),
            coin_timeout_seconds=_int(env, "ENGINE_COIN_TIMEOUT_SECONDS", 2700, 1),
            coin_retries=_int(env, "ENGINE_COIN_RETRIES", 2, 0),
            storage=_choice(env, "ENGINE_STORAGE", "local", STORAGE_BACKENDS),
            s3_bucket=env.get("ENGINE_S3_BUCKET", "").strip(),
            s3_prefix=env.get("ENGINE_S3_PREFIX", "").strip().strip("/"),
            dropbox_root=env.get("ENGINE_DROPBOX_ROOT", "").strip() or "/engine",
            encoder_epochs=_int(env, "ENGINE_ENCODER_EPOCHS", 6, 1),
            failpoints=_failpoints(env),
            daily_cron=_cron(env, "ENGINE_DAILY_CRON", DEFAULT_DAILY_CRON),
            daily_schedule=_choice(env, "ENGINE_DAILY_SCHEDULE", "stopped", SCHEDULE_STATUSES),
            download_exchange=env.get("ENGINE_DOWNLOAD_EXCHANGE", "").strip().lower(),
            download_api_url=env.get("ENGINE_DOWNLOAD_API_URL", "").strip(),
            notify_max_wait_seconds=_int(env, "ENGINE_NOTIFY_MAX_WAIT_SECONDS", 30, 1),
        )

    def with_overrides(self, **changes) -> "EngineSettings":
        return dataclasses.replace(self, **changes)
