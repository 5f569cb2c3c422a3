"""Helpers shared by the assets: the run's day, thread budget and ledger bookkeeping."""

from __future__ import annotations

import contextlib
import os
import traceback

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError

from engine_assets.scheduling.ledger import day_key

DAY_TAG = "engine/day"
THREADS_TAG = "engine/threads"
# Set on a daily_job run to retrain coins that already succeeded that day.
FORCE_TAG = "engine/force"


def run_day(context) -> str:
    """Return the ledger day of this run: its ``engine/day`` tag, else today (UTC)."""
    return context.run.tags.get(DAY_TAG) or day_key()


def thread_budget(context) -> int:
    """Return how many threads this run may use: its ``engine/threads`` tag, else one."""
    raw = context.run.tags.get(THREADS_TAG, "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return 1 if context.has_partition_key else (os.cpu_count() or 1)


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def begin_coin_step(context, ledger) -> int:
    """Count this run (and step retry) as an attempt of the coin; return the attempt number."""
    return ledger.begin_attempt(context.partition_key, context.run.run_id, context.retry_number)


@contextlib.contextmanager
def failures_recorded(ledger, symbol: str):
    """Record an exception as the coin's failure in the ledger, then let it propagate."""
    try:
        yield
    except DagsterExecutionInterruptedError:
        # A terminated run (timeout, cancel) must end here: a step retry would keep the
        # worker running after Dagster has marked the run as over.
        ledger.note_attempt_end(symbol, "interrupted")
        raise dg.Failure(description=f"{symbol}: run interrupted (timeout or cancel)", allow_retries=False) from None
    except Exception as error:
        reason = str(error.description if isinstance(error, dg.Failure) else error)
        ledger.note_attempt_end(symbol, f"failed: {reason}"[:300])
        ledger.finish_coin(
            symbol,
            "failed",
            error=error_text(error),
            reason=reason,
            traceback=traceback.format_exc(limit=8),
        )
        raise
