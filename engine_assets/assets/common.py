"""Helpers shared by the assets: the run's day, thread budget and ledger bookkeeping."""

from __future__ import annotations

import contextlib
import os
import traceback

import dagster as dg

from engine_assets.scheduling.ledger import day_key

DAY_TAG = "engine/day"
THREADS_TAG = "engine/threads"
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


@contextlib.contextmanager
def failures_recorded(ledger, symbol: str, attempt: int):
    """Record an exception as the coin's failure in the ledger, then let it propagate."""
    try:
        yield
    except Exception as error:
        ledger.finish_coin(
            symbol,
            "failed",
            error=error_text(error),
            reason=str(error.description if isinstance(error, dg.Failure) else error),
            traceback=traceback.format_exc(limit=8),
            attempts=attempt,
        )
        raise
