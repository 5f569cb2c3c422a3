"""The daily schedule: one ``daily_job`` run per UTC day, at ENGINE_DAILY_CRON (default 00:15 UTC)."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from engine_assets.assets.common import DAY_TAG
from engine_assets.jobs import daily_job
from engine_assets.scheduling.ledger import day_key
from engine_assets.settings import EngineSettings

SCHEDULE_NAME = "daily_training_schedule"


def build_daily_schedule(settings: EngineSettings) -> dg.ScheduleDefinition:
    """Return the schedule for ``settings.daily_cron`` in UTC, on from the start if ENGINE_DAILY_SCHEDULE=running."""
    status = dg.DefaultScheduleStatus.STOPPED
    if settings.daily_schedule == "running":
        status = dg.DefaultScheduleStatus.RUNNING

    @dg.schedule(
        name=SCHEDULE_NAME,
        job=daily_job,
        cron_schedule=settings.daily_cron,
        execution_timezone="UTC",
        default_status=status,
        description=(
            f"Runs daily_job at '{settings.daily_cron}' (UTC): candles, encoder, every coin, roster and summary. "
            "A tick skips a UTC day that already has a daily_job run."
        ),
    )
    def daily_training_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        moment = context.scheduled_execution_time or dt.datetime.now(dt.timezone.utc)
        day = day_key(moment)
        # NOTE: a daemon that `engine train` starts also ticks this schedule while it lives. With the schedule
        # on, a tick can then start daily_job beside that command, and both train the day's pending coins.

        # Dagster deduplicates a schedule's run keys within one tick only, so a cron
        # that fires more than once a day would launch the day again without this check.
        earlier = context.instance.get_runs(
            filters=dg.RunsFilter(job_name=daily_job.name, tags={DAY_TAG: day}), limit=1
        )
        if earlier:
            return dg.SkipReason(
                f"daily_job already ran for {day}: run {earlier[0].run_id} is {earlier[0].status.value}; "
                "launch it again from the UI or run `engine train` to retrain"
            )
        return dg.RunRequest(run_key=day, tags={DAY_TAG: day})

    return daily_training_schedule


daily_training_schedule = build_daily_schedule(EngineSettings.from_env())
