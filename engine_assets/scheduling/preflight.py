"""Checks and clean-up before a daily run launches anything.

Dagster silently ignores a ``dagster/max_runtime`` tag when run monitoring
is off or the value is not a number, so the engine refuses to start in
either case. Runs left behind by a command that was killed are cleared, so
a new daemon does not start them beside the new command's own runs.
"""

from __future__ import annotations

import logging

from dagster import DagsterRunStatus, RunsFilter

from engine_assets.assets.common import DAY_TAG
from engine_assets.scheduling.launcher import LOCATION_NAME

logger = logging.getLogger(__name__)

MAX_RUNTIME_TAG = "dagster/max_runtime"


class PreflightError(RuntimeError):
    """A setting that would make Dagster ignore the engine's limits."""


def check_coin_timeout(instance, workspace, job_name: str = "coin_job") -> float:
    """Return the coin runs' timeout in seconds; raise ``PreflightError`` if Dagster would ignore it."""
    if not instance.run_monitoring_enabled:
        raise PreflightError(
            "run monitoring is off in dagster.yaml, so Dagster would ignore the per-coin timeout "
            f"({MAX_RUNTIME_TAG}); set run_monitoring.enabled: true or run `engine init-instance`"
        )
    location = workspace.get_code_location(LOCATION_NAME)
    repository = next(iter(location.get_repositories().values()))
    tags = repository.get_full_job(job_name).tags
    raw = tags.get(MAX_RUNTIME_TAG)
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        raise PreflightError(
            f"{job_name} has {MAX_RUNTIME_TAG}={raw!r}, which is not a number of seconds, so Dagster would "
            "ignore it; set ENGINE_COIN_TIMEOUT_SECONDS to a whole number"
        ) from None
    if seconds <= 0:
        raise PreflightError(f"{job_name} has {MAX_RUNTIME_TAG}={raw!r}: expected a positive number of seconds")
    return seconds


def clear_abandoned_runs(instance, day: str, daemon_was_running: bool) -> list[str]:
    """End the day's runs that a killed command left behind; return their run ids.

    Only when no daemon is alive: then the command that created these runs
    died with its process tree. With a live daemon another engine command may
    be running, and its runs are left alone. Runs created but never queued
    are deleted, queued ones cancelled and started ones marked failed.
    """
    cleared: list[str] = []
    if daemon_was_running:
        return cleared
    records = instance.get_run_records(RunsFilter(tags={DAY_TAG: day}))
    for record in records:
        run = record.dagster_run
        if run.status == DagsterRunStatus.NOT_STARTED:
            instance.delete_run(run.run_id)
        elif run.status == DagsterRunStatus.QUEUED:
            instance.report_run_canceled(run, message="cancelled: left queued by an engine train that stopped")
        elif run.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED):
            instance.report_run_failed(run, "interrupted: the engine process tree stopped before this run ended")
        else:
            continue
        cleared.append(run.run_id)
        logger.warning("cleared run %s (%s, %s) left by a stopped engine train", run.run_id, run.job_name, run.status)
    return cleared
