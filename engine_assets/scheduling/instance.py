"""The Dagster instance the engine runs in: ``$DAGSTER_HOME/dagster.yaml``.

Concurrency is enforced by the QueuedRunCoordinator, so the limit holds for
every run however it was launched (command line, schedule, backfill, UI).
The limit is a tag concurrency limit on ``dagster/partition``: every coin run
materializes one partition of the per-coin assets and Dagster tags it with
that key, while the encoder and report runs are unpartitioned and not limited.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from engine_assets.settings import EngineSettings

logger = logging.getLogger(__name__)

COIN_RUN_TAG = "dagster/partition"
# How often the daemon looks at the run queue; Dagster's default is 5 s, which
# adds up to seconds of idle time per coin on a short run.
DEQUEUE_INTERVAL_SECONDS = 1
MONITORING_INTERVAL_SECONDS = 10


class InstanceConfigError(RuntimeError):
    """A Dagster instance configuration that would not enforce the engine's limits."""


def instance_config(settings: EngineSettings, coin_limit: int) -> dict:
    """Return the ``dagster.yaml`` content for ``coin_limit`` coin runs at a time."""
    storage = settings.dagster_home / "storage"
    return {
        "storage": {"sqlite": {"base_dir": str(storage)}},
        "local_artifact_storage": {
            "module": "dagster._core.storage.root",
            "class": "LocalArtifactStorage",
            "config": {"base_dir": str(settings.dagster_home)},
        },
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {
                # Room for the encoder and report runs beside the coin runs.
                "max_concurrent_runs": coin_limit + 2,
                "tag_concurrency_limits": [{"key": COIN_RUN_TAG, "limit": coin_limit}],
                "dequeue_interval_seconds": DEQUEUE_INTERVAL_SECONDS,
                # Launching a run takes the daemon a second or more; with one launch at a
                # time, short coin runs would never overlap, whatever the limit is.
                "dequeue_use_threads": True,
                "dequeue_num_workers": coin_limit + 1,
            },
        },
        "run_monitoring": {
            "enabled": True,
            "poll_interval_seconds": MONITORING_INTERVAL_SECONDS,
            "start_timeout_seconds": 300,
            "max_resume_run_attempts": 0,
            # The default for runs without a dagster/max_runtime tag, such as a coin
            # retrained from its asset page; jobs that need longer carry their own tag.
            "max_runtime_seconds": settings.coin_timeout_seconds,
        },
        # Crashed coin runs are retried by the engine (with backoff, counted in the ledger),
        # so Dagster's own run retries stay off and never retry a timeout or a cancel.
        "run_retries": {"enabled": False},
        "telemetry": {"enabled": False},
        "nux": {"enabled": False},
    }


def write_instance_config(settings: EngineSettings, coin_limit: int) -> Path:
    """Write ``dagster.yaml`` under ``settings.dagster_home`` and return its path."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    content = yaml.safe_dump(instance_config(settings, coin_limit), sort_keys=True)
    if not path.exists() or path.read_text() != content:
        temporary = path.with_suffix(".yaml.tmp")
        temporary.write_text(content)
        temporary.replace(path)
        logger.info("wrote %s with %d coin runs at a time", path, coin_limit)
    return path


def check_instance_config(path: Path, coin_limit: int) -> None:
    """Raise ``InstanceConfigError`` unless ``path`` enforces ``coin_limit`` and run monitoring."""
    config = yaml.safe_load(path.read_text()) or {}
    coordinator = config.get("run_coordinator", {})
    if coordinator.get("class") != "QueuedRunCoordinator":
        raise InstanceConfigError(f"{path}: run_coordinator must be QueuedRunCoordinator to enforce coin limits")
    limits = coordinator.get("config", {}).get("tag_concurrency_limits", [])
    if {"key": COIN_RUN_TAG, "limit": coin_limit} not in limits:
        raise InstanceConfigError(f"{path}: expected a tag concurrency limit {COIN_RUN_TAG}={coin_limit}, found {limits}")
    if not config.get("run_monitoring", {}).get("enabled"):
        raise InstanceConfigError(
            f"{path}: run_monitoring is off, so Dagster would silently ignore the per-coin timeout tag"
        )
