"""Jobs: the encoder run, one run per coin, the report run, and the daily run that launches them.

Every job uses the in-process executor: a coin's run pays for one process
(the run worker), not one per step, and imports only what its steps use.
"""

from __future__ import annotations

from collections import Counter

import dagster as dg

from engine_assets.assets import candles, coin_model, features, roster, shared_encoder, summary
from engine_assets.assets.common import FORCE_TAG, run_day
from engine_assets.notify.resources import TelegramResource
from engine_assets.partitions import coin_partitions
from engine_assets.resources import EngineResource
from engine_assets.settings import EngineSettings

_settings = EngineSettings.from_env()

# Runs without a dagster/max_runtime tag get the coin timeout from run monitoring's default
# (see scheduling/instance.py), so jobs that may run longer than one coin carry their own.
ENCODER_TIMEOUT_SECONDS = 4 * _settings.coin_timeout_seconds
DAILY_TIMEOUT_SECONDS = 24 * 3600

encoder_job = dg.define_asset_job(
    "encoder_job",
    selection=[shared_encoder],
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": str(ENCODER_TIMEOUT_SECONDS)},
    description="Train today's shared encoder (or reuse or resume it).",
)

coin_job = dg.define_asset_job(
    "coin_job",
    selection=[candles, features, coin_model],
    partitions_def=coin_partitions,
    executor_def=dg.in_process_executor,
    # Dagster's run monitoring ends a coin run after this many seconds.
    tags={"dagster/max_runtime": str(_settings.coin_timeout_seconds)},
    description="Train one coin: candles, features and its model, as one run in one process.",
)

publish_job = dg.define_asset_job(
    "publish_job",
    selection=[roster, summary],
    executor_def=dg.in_process_executor,
    description="Publish the roster of champions and the day's summary.",
)


class _RunLogStream:
    """A text stream for ``Console`` that sends each write, without its final newline, to the run's log."""

    def __init__(self, log) -> None:
        self._log = log

    def write(self, text: str) -> None:
        text = text.rstrip("\n")
        if text.strip():
            self._log.info(text)

    def flush(self) -> None:
        pass


@dg.op(out=dg.Out(dg.Nothing))
def daily_run(context, engine: EngineResource, telegram: TelegramResource) -> dg.Output:
    """Run the day's training as ``engine train`` does: encoder run, one run per coin, report run.

    The day is the run's ``engine/day`` tag (set by the schedule), else today
    in UTC, and ``engine/force=true`` retrains coins that already succeeded.
    The op fails when any coin failed or timed out, and lists those coins.
    """
    from engine_assets.console import Console
    from engine_assets.scheduling.daily import DailyOptions, run_daily
    from engine_assets.scheduling.ledger import DONE_STATUSES

    day = run_day(context)
    options = DailyOptions(day=day, force=context.run.tags.get(FORCE_TAG) == "true")
    status = run_daily(
        engine.settings, options, console=Console(_RunLogStream(context.log)), notifier=telegram.notifier()
    )
    coins = engine.ledger(day).read().get("coins", {})
    counts = Counter(entry.get("status", "pending") for entry in coins.values())
    metadata = {"day": day, **{f"count_{name}": count for name, count in sorted(counts.items())}}
    if status == 0:
        return dg.Output(None, metadata=metadata)
    # Reasons of coins that neither succeeded nor were skipped: failed, timed out or never finished.
    failed = {
        symbol: entry.get("reason") or entry.get("error") or entry.get("status", "pending")
        for symbol, entry in sorted(coins.items())
        if entry.get("status") not in DONE_STATUSES
    }
    raise dg.Failure(
        description=f"{len(failed)} of {len(coins)} coin(s) failed on {day}: {', '.join(failed) or 'see the ledger'}",
        metadata={**metadata, "failed_coins": dg.MetadataValue.json(failed)},
    )


@dg.job(
    executor_def=dg.in_process_executor,
    tags={"dagster/max_runtime": str(DAILY_TIMEOUT_SECONDS)},
    description=(
        "The whole day without a person: refresh candles (when a download source is set), the encoder run, "
        "one run per coin under the queue's limits, and the report run. The daily schedule launches it."
    ),
)
def daily_job() -> None:
    daily_run()
