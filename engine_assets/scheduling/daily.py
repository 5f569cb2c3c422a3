"""The daily run as ``engine train`` drives it: encoder, every coin, then the reports.

Every step is a Dagster run on the instance's queue, so the same limits,
ledger and champion rules apply as for runs launched from the UI or a
schedule. This module decides what to launch, watches it and reports.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from dagster import DagsterInstance, DagsterRunStatus

from engine_assets.assets.common import DAY_TAG, THREADS_TAG
from engine_assets.console import Console, summary_table
from engine_assets.notify import events
from engine_assets.scheduling.daemon import daemon_running, running_daemon
from engine_assets.scheduling.preflight import check_coin_timeout, clear_abandoned_runs
from engine_assets.scheduling.instance import check_instance_config, write_instance_config
from engine_assets.scheduling.launcher import (
    WatchedRun,
    create_job_run,
    exceeded_max_runtime,
    open_workspace,
    run_failure_message,
    submit_job_run,
    watch_runs,
    watch_step,
)
from engine_assets.scheduling.ledger import DONE_STATUSES, Ledger, day_key, iso_now
from engine_assets.scheduling.modes import plan_concurrency
from engine_assets.scheduling.refresh import refresh_candles
from engine_assets.settings import EngineSettings
from engine_assets.training.reports import read_summary

logger = logging.getLogger(__name__)

# Waits before retrying a crashed coin run: 2 s, then 4 s, then 8 s.
RETRY_BASE_SECONDS = 2.0


@dataclass
class DailyOptions:
    """The options of one ``engine train`` call."""

    symbols: tuple[str, ...] = ()
    force: bool = False
    day: str | None = None
    # Download fresh candles first; only done when ENGINE_DOWNLOAD_EXCHANGE names a source.
    refresh: bool = True


def prepare_instance(settings: EngineSettings, console: Console):
    """Write and check ``dagster.yaml`` for the mode's limit; return (instance, plan)."""
    plan = plan_concurrency(settings)
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    path = write_instance_config(settings, plan.limit)
    check_instance_config(path, plan.limit)
    console.line(f"mode {plan.mode}: {plan.limit} coin run(s) at a time on {plan.device} ({plan.reason})")
    return DagsterInstance.get(), plan


def run_daily(settings: EngineSettings, options: DailyOptions, console: Console | None = None, notifier=None) -> int:
    """Run the day's training and return the exit status: 0 when every coin succeeded or was skipped.

    ``notifier`` (a ``TelegramNotifier``) defaults to one built from the ``TELEGRAM_*`` variables.
    """
    from engine_assets.data.universe import discover_universe
    from engine_assets.storage.factory import build_store

    console = console or Console()
    day = options.day or day_key()
    store = build_store(settings, _secrets())
    ledger = Ledger(store, day, settings.home / "locks")
    universe = discover_universe(settings.data_dir, settings.timeframe, settings.symbols)
    requested = list(options.symbols) if options.symbols else universe
    unknown = sorted(set(requested) - set(universe))
    if unknown:
        raise ValueError(
            f"unknown symbols {', '.join(unknown)}: not in the universe of {settings.data_dir} "
            f"({len(universe)} coins for {settings.timeframe})"
        )
    to_train, done = ledger.coins_to_train(requested, force=options.force)
    console.line(f"day {day}: {len(requested)} coins, {len(to_train)} to train, {len(done)} already done today")
    if not to_train:
        console.line("nothing to train: every coin already succeeded or was skipped today (use --force to retrain)")
        summary = read_summary(store, day)
        if summary:
            console.stream.write("\n" + summary_table(summary) + "\n")
        return _exit_status(ledger.read(), requested)

    if options.refresh:
        refresh_candles(settings, universe, console)
    instance, plan = prepare_instance(settings, console)
    notifications = events.start_notifications(settings, console, notifier)
    events.notify_run_started(notifications, day, to_train, plan)
    threads = max(1, (os.cpu_count() or 1) // plan.limit)
    ledger.update_run(
        mode=plan.mode,
        concurrency=plan.limit,
        device=plan.device,
        detection=plan.reason,
        timeout_seconds=settings.coin_timeout_seconds,
        retries=settings.coin_retries,
        started_at=ledger.read().get("started_at") or iso_now(),
        universe=universe,
    )
    for symbol in to_train:
        ledger.update_coin(symbol, status="pending")

    base_tags = {DAY_TAG: day}
    cleared = clear_abandoned_runs(instance, day, daemon_running(instance, settings.home / "daemon.pid"))
    if cleared:
        console.line(f"cleared {len(cleared)} run(s) left by an engine train that stopped; resuming")
    with running_daemon(instance, settings.home, settings.home / "logs" / "daemon.log") as daemon:
        console.line("starting the Dagster daemon" if daemon.started_here else "using the running Dagster daemon")
        with open_workspace(instance) as workspace:
            check_coin_timeout(instance, workspace)
            # --force retrains coins; today's encoder is reused, so every coin of the day shares it.
            encoder_run = _start_encoder(instance, workspace, ledger, base_tags, console)
            # Coin runs are created while the encoder trains and queued once it has succeeded,
            # so creating them (an execution plan each) costs no wall time of its own.
            coin_tags = {**base_tags, THREADS_TAG: str(threads)}
            created = {
                symbol: create_job_run(instance, workspace, "coin_job", tags={**coin_tags, "dagster/partition": symbol})
                for symbol in to_train
            }
            if _finish_encoder(instance, ledger, encoder_run, console, daemon.check):
                _run_coins(
                    instance, workspace, ledger, created, console, daemon.check, settings.coin_retries, notifications
                )
            else:
                for run_id in created.values():
                    instance.delete_run(run_id)
                reason = ledger.read().get("encoder", {}).get("error") or "the shared encoder failed"
                for symbol in to_train:
                    ledger.finish_coin(symbol, "failed", reason=f"encoder failed: {reason}", error=reason)
            _run_publish(instance, workspace, base_tags, console, daemon.check)

    summary = read_summary(store, day)
    if summary:
        console.stream.write("\n" + summary_table(summary) + "\n")
        console.line(f"summary: {store.describe()}/summary/{day}/engine_summary.json")
    events.notify_run_finished(notifications, day, summary)
    return _exit_status(ledger.read(), requested)


def _secrets() -> dict[str, str]:
    from engine_assets.resources import SECRET_VARIABLES

    return {name: os.environ[name] for name in SECRET_VARIABLES if os.environ.get(name)}


def _exit_status(document: dict, symbols: list[str]) -> int:
    coins = document.get("coins", {})
    bad = [s for s in symbols if coins.get(s, {}).get("status") not in DONE_STATUSES]
    return 1 if bad else 0


def _start_encoder(instance, workspace, ledger, tags, console) -> WatchedRun | None:
    """Queue the encoder run, or return None when today's encoder already succeeded."""
    entry = ledger.read().get("encoder", {})
    if entry.get("status") == "succeeded":
        console.line(f"encoder: today's {entry.get('path')} already succeeded")
        return None
    run_id = submit_job_run(instance, workspace, "encoder_job", tags=tags)
    console.line(f"encoder: run {run_id[:8]} queued")
    return WatchedRun(run_id=run_id, label="encoder", submitted_at=time.monotonic())


def _finish_encoder(instance, ledger, run: WatchedRun | None, console, health_check) -> bool:
    """Wait for the encoder run; return whether coins can train."""
    if run is None:
        return True

    def changed(watched: WatchedRun) -> None:
        if watched.status == DagsterRunStatus.STARTED:
            console.line("encoder: training")

    watch_runs(instance, [run], changed, health_check=health_check)
    entry = ledger.read().get("encoder", {})
    if run.status == DagsterRunStatus.SUCCESS:
        resumed = entry.get("resumed_from_epoch")
        note = f", resumed from epoch {resumed}" if resumed is not None else ""
        console.line(f"encoder: {entry.get('path')} ready ({entry.get('epochs', '?')} epochs{note})")
        return True
    message = run_failure_message(instance, run.run_id)
    ledger.update_encoder(status="failed", error=entry.get("error") or message)
    console.line(f"encoder: FAILED: {message}")
    return False


def classify_failure(run, message: str) -> tuple[str, bool]:
    """Return (ledger status, whether the engine retries) for a coin run that did not succeed.

    A run over its ``dagster/max_runtime`` is ``timed_out`` and not retried.
    Neither is a run cancelled by a person, nor one whose step failed, because
    that step was retried inside the run already or failed on bad data. A run whose
    worker died (SIGKILL, out of memory) is retried.
    """
    if "maximum runtime" in message.lower():
        return "timed_out", False
    if run.status == DagsterRunStatus.CANCELED:
        return "failed", False
    reason = run.tags.get("dagster/failure_reason", "")
    if reason == "STEP_FAILURE":
        return "failed", False
    return "failed", True


def retry_delay_seconds(attempt: int, base: float = RETRY_BASE_SECONDS) -> float:
    """Return the wait before retry number ``attempt`` (1-based): base, 2 x base, 4 x base, ..."""
    return base * (2 ** (attempt - 1))


def _run_coins(
    instance, workspace, ledger, created: dict[str, str], console, health_check, retries: int, notifications=None
) -> None:
    """Queue the coin runs and watch them, retrying runs whose worker crashed, until every coin has ended."""
    watched: dict[str, WatchedRun] = {}
    for symbol, run_id in created.items():
        instance.submit_run(run_id, workspace)
        watched[run_id] = WatchedRun(run_id=run_id, label=symbol, submitted_at=time.monotonic())
    console.line(f"queued {len(watched)} coin runs")
    total, finished = len(created), 0
    waiting: list[tuple[float, str, str]] = []  # (due time, symbol, parent run id)

    def changed(run: WatchedRun) -> None:
        nonlocal finished
        if run.status == DagsterRunStatus.STARTED:
            console.line(f"{run.label}: training")
            return
        if run.ended_at is None:
            return
        entry = ledger.read().get("coins", {}).get(run.label, {})
        if run.status != DagsterRunStatus.SUCCESS:
            record = instance.get_run_by_id(run.run_id)
            message = exceeded_max_runtime(instance, run.run_id) or run_failure_message(instance, run.run_id)
            if run.status == DagsterRunStatus.CANCELED and "maximum runtime" not in message.lower():
                message = f"cancelled: {message}"
            status, retry = classify_failure(record, message)
            attempts = int(entry.get("attempts", 0))
            if retry and attempts < retries + 1:
                delay = retry_delay_seconds(attempts)
                ledger.note_attempt_end(run.label, f"crashed: {message}"[:300])
                ledger.update_coin(run.label, status="pending", error=message, next_retry_in_seconds=delay)
                console.line(f"{run.label}: run crashed ({message}); retry {attempts} of {retries} in {delay:.0f}s")
                waiting.append((time.monotonic() + delay, run.label, run.run_id))
                return
            if entry.get("status") in (None, "pending", "running") or status == "timed_out":
                # The run ended without its steps recording why (killed worker, timeout, cancel).
                entry = ledger.finish_coin(run.label, status, error=message, reason=message)
        finished += 1
        took = run.ended_at - (run.started_at or run.submitted_at)
        console.line(f"[{finished:>3}/{total}] {run.label}: {_describe(entry)} ({took:.1f}s)")
        events.notify_coin_finished(notifications, run.label, entry)

    pending = dict(watched)
    while pending or waiting:
        health_check()
        for due, symbol, parent in [item for item in waiting if item[0] <= time.monotonic()]:
            waiting.remove((due, symbol, parent))
            tags = {**instance.get_run_by_id(parent).tags, "engine/retry_of": parent}
            run_id = create_job_run(instance, workspace, "coin_job", tags=_user_tags(tags))
            instance.submit_run(run_id, workspace)
            pending[run_id] = WatchedRun(run_id=run_id, label=symbol, submitted_at=time.monotonic())
        if pending:
            for run in watch_step(instance, list(pending.values())):
                if run.ended_at is not None:
                    pending.pop(run.run_id, None)
                changed(run)
        time.sleep(0.5)


def _user_tags(tags: dict) -> dict:
    """Return the tags a new run may copy: the engine's and the partition, not Dagster's run bookkeeping."""
    return {key: value for key, value in tags.items() if not key.startswith("dagster/") or key == "dagster/partition"}


def _describe(entry: dict) -> str:
    status = entry.get("status", "?")
    if status == "succeeded":
        metrics = entry.get("metrics") or {}
        sharpe = metrics.get("sharpe_net")
        if entry.get("champion_changed"):
            champion = "new champion"
        elif entry.get("champion"):
            champion = "champion kept"
        else:
            champion = "no champion (guards not met)"
        sharpe_text = f"net Sharpe {sharpe:+.2f}" if sharpe is not None else "no Sharpe"
        return f"succeeded, {metrics.get('head')}, {sharpe_text}, {champion}"
    return f"{status}: {entry.get('reason') or entry.get('error') or ''}"


def _run_publish(instance, workspace, tags, console, health_check) -> None:
    run_id = submit_job_run(instance, workspace, "publish_job", tags=tags)
    run = WatchedRun(run_id=run_id, label="reports", submitted_at=time.monotonic())
    watch_runs(instance, [run], health_check=health_check)
    if run.status == DagsterRunStatus.SUCCESS:
        console.line("roster and summary published")
    else:
        console.line(f"reports: FAILED: {run_failure_message(instance, run_id)}")
