"""The run failure sensor: a Telegram message when an encoder, report or daily run fails.

Coin runs are not watched here: the daily run reports each coin that failed
for good, after its retries, with its attempts and reason.
"""

from __future__ import annotations

import dagster as dg

from engine_assets.jobs import daily_job, encoder_job, publish_job
from engine_assets.notify.events import job_failed_message
from engine_assets.notify.resources import TelegramResource

# Maximum length of the error text taken from one failed step, in characters.
_ERROR_CHARACTERS = 500


def failure_reason(context: dg.RunFailureSensorContext) -> str:
    """Return the first failed step's error message, else the run failure message.

    A ``dg.Failure`` gives its description. Dagster wraps any other exception
    raised in a step, and the innermost cause is the one the step raised.
    """
    for event in context.get_step_failure_events():
        data = event.event_specific_data
        user_failure = getattr(data, "user_failure_data", None)
        if user_failure is not None and user_failure.description:
            return user_failure.description.strip()[:_ERROR_CHARACTERS]
        error = getattr(data, "error", None)
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None and error.message.strip():
            return error.message.strip().splitlines()[0][:_ERROR_CHARACTERS]
    return (context.failure_event.message or "").strip()[:_ERROR_CHARACTERS]


@dg.run_failure_sensor(
    name="run_failure_telegram",
    monitored_jobs=[encoder_job, publish_job, daily_job],
    # Running from the start: without a token it sends nothing, and a daemon
    # that runs unattended must report failures without a person turning it on.
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Sends a Telegram message naming the job, the run id and the error "
        "when an encoder, report or daily run fails."
    ),
)
def run_failure_telegram(context: dg.RunFailureSensorContext, telegram: TelegramResource) -> None:
    run = context.dagster_run
    notifier = telegram.notifier(logger=context.log)
    report = notifier.send(job_failed_message(run.job_name, run.run_id, failure_reason(context)))
    if report.enabled and not report.ok:
        context.log.warning("failure of run %s not reported on Telegram: %s", run.run_id, report.reason)
