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

from engine_assets.assets.common import DAY_TAG, FORCE_TAG, THREADS_TAG
from engine_assets.console import Console, summary_table
from engine_assets.scheduling.daemon import running_daemon
from engine_assets.scheduling.instance import check_instance_config, write_instance_config
from engine_assets.scheduling.launcher import (
    WatchedRun,
    create_job_run,
    open_workspace,
    run_failure_message,
    submit_job_run,
    watch_runs,
)
from engine_assets.scheduling.ledger import DONE_STATUSES, Ledger, day_key, iso_now
from engine_assets.scheduling.modes import plan_concurrency
from engine_assets.settings import EngineSettings
from engine_assets.training.reports import read_summary

logger = logging.getLogger(__name__)


@dataclass
class DailyOptions:
    """What ``engine train`` was asked to do."""

    symbols: tuple[str, ...] = ()
    force: bool = False
    day: str | None = None


def prepare_instance(settings: EngineSettings, console: Console):
    """Write and check ``dagster.yaml`` for the mode's limit; return (instance, plan)."""
    plan = plan_concurrency(settings)
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    path = write_instance_config(settings, plan.limit)
    check_instance_config(path, plan.limit)
    console.line(f"mode {plan.mode}: {plan.limit} coin run(s) at a time on {plan.device} ({plan.reason})")
    return DagsterInstance.get(), plan


def run_daily(settings: EngineSettings, options: DailyOptions, console: Console | None = None) -> int:
    """Run the day's training and return the exit status: 0 when every coin succeeded or was skipped."""
    from engine_assets.data.universe import discover_universe
    from engine_assets.storage.factory import build_store

    console = console or Console()
    day = options.day or day_key()
    store = build_store(settings, _secrets())
    ledger = Ledger(store, day, settings.home / "locks")
    universe = discover_universe(settings.data_dir, settings.timeframe, settings.symbols)
    wanted = list(options.symbols) if options.symbols else universe
    unknown = sorted(set(wanted) - set(universe))
    if unknown:
        raise ValueError(
            f"unknown symbols {', '.join(unknown)}: not in the universe of {settings.data_dir} "
            f"({len(universe)} coins for {settings.timeframe})"
        )
    to_train, done = ledger.coins_to_train(wanted, force=options.force)
    console.line(f"day {day}: {len(wanted)} coins, {len(to_train)} to train, {len(done)} already done today")
    if not to_train:
        console.line("nothing to train: every coin already succeeded or was skipped today (use --force to retrain)")
        summary = read_summary(store, day)
        if summary:
            console.stream.write("\n" + summary_table(summary) + "\n")
        return _exit_status(ledger.read(), wanted)

    instance, plan = prepare_instance(settings, console)
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
    if options.force:
        base_tags[FORCE_TAG] = "true"
    with running_daemon(instance, settings.home, settings.home / "logs" / "daemon.log") as daemon:
        console.line("starting the Dagster daemon" if daemon.started_here else "using the running Dagster daemon")
        with open_workspace(instance) as workspace:
            encoder_run = _start_encoder(instance, workspace, ledger, base_tags, options.force, console)
            # Coin runs are created while the encoder trains and queued once it has succeeded,
            # so creating them (an execution plan each) costs no wall time of its own.
            coin_tags = {**base_tags, THREADS_TAG: str(threads)}
            created = {
                symbol: create_job_run(instance, workspace, "coin_job", tags={**coin_tags, "dagster/partition": symbol})
                for symbol in to_train
            }
            if _finish_encoder(instance, ledger, encoder_run, console, daemon.check):
                _run_coins(instance, workspace, ledger, created, console, daemon.check)
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
    return _exit_status(ledger.read(), wanted)


def _secrets() -> dict[str, str]:
    from engine_assets.resources import SECRET_VARIABLES

    return {name: os.environ[name] for name in SECRET_VARIABLES if os.environ.get(name)}


def _exit_status(document: dict, symbols: list[str]) -> int:
    coins = document.get("coins", {})
    bad = [s for s in symbols if coins.get(s, {}).get("status") not in DONE_STATUSES]
    return 1 if bad else 0


def _start_encoder(instance, workspace, ledger, tags, force, console) -> WatchedRun | None:
    """Queue the encoder run, or return None when today's encoder already succeeded."""
    entry = ledger.read().get("encoder", {})
    if entry.get("status") == "succeeded" and not force:
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


def _run_coins(instance, workspace, ledger, created: dict[str, str], console, health_check) -> None:
    runs = []
    for symbol, run_id in created.items():
        instance.submit_run(run_id, workspace)
        runs.append(WatchedRun(run_id=run_id, label=symbol, submitted_at=time.monotonic()))
    console.line(f"queued {len(runs)} coin runs")
    finished = 0

    def changed(watched: WatchedRun) -> None:
        nonlocal finished
        if watched.status == DagsterRunStatus.STARTED:
            console.line(f"{watched.label}: training")
            return
        if watched.ended_at is None:
            return
        finished += 1
        entry = ledger.read().get("coins", {}).get(watched.label, {})
        if watched.status != DagsterRunStatus.SUCCESS and entry.get("status") in (None, "pending", "running"):
            # The run ended without its steps recording why (killed worker, timeout, cancel).
            message = run_failure_message(instance, watched.run_id)
            status = "timed_out" if "max runtime" in message.lower() or "timed out" in message.lower() else "failed"
            entry = ledger.finish_coin(watched.label, status, error=message, reason=message)
        took = watched.ended_at - (watched.started_at or watched.submitted_at)
        console.line(f"[{finished:>3}/{len(runs)}] {watched.label}: {_describe(entry)} ({took:.1f}s)")

    watch_runs(instance, runs, changed, health_check=health_check)


def _describe(entry: dict) -> str:
    status = entry.get("status", "?")
    if status == "succeeded":
        metrics = entry.get("metrics") or {}
        sharpe = metrics.get("sharpe_net")
        champion = "new champion" if entry.get("champion_changed") else "champion kept"
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
