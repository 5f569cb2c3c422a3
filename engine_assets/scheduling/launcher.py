"""Submitting runs to the Dagster instance's queue, the way ``dagster job launch`` does.

Runs go through the QueuedRunCoordinator, so the daemon starts them under
the instance's tag concurrency limits; this module only creates, submits
and watches them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from dagster import DagsterRunStatus

logger = logging.getLogger(__name__)

LOCATION_NAME = "engine_assets"
MODULE_NAME = "engine_assets.definitions"
TERMINAL_STATUSES = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


@dataclass
class WatchedRun:
    """A submitted run and the last status seen."""

    run_id: str
    label: str
    status: DagsterRunStatus | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None


@contextlib.contextmanager
def open_workspace(instance) -> Iterator[object]:
    """Load the engine's code location (in a code server process) for creating runs."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget

    target = ModuleTarget(
        module_name=MODULE_NAME, attribute=None, working_directory=None, location_name=LOCATION_NAME
    )
    with WorkspaceProcessContext(instance, target, code_server_log_level="WARNING") as process_context:
        workspace = process_context.create_request_context()
        if workspace.has_code_location_error(LOCATION_NAME):
            raise RuntimeError(
                f"cannot load code location {LOCATION_NAME}: {workspace.get_code_location_error(LOCATION_NAME)}"
            )
        yield workspace


def submit_job_run(
    instance,
    workspace,
    job_name: str,
    tags: Mapping[str, str] | None = None,
    run_config: Mapping | None = None,
) -> str:
    """Create a run of ``job_name`` and put it on the queue; returns its run id."""
    run_id = create_job_run(instance, workspace, job_name, tags, run_config)
    instance.submit_run(run_id, workspace)
    return run_id


def create_job_run(
    instance,
    workspace,
    job_name: str,
    tags: Mapping[str, str] | None = None,
    run_config: Mapping | None = None,
) -> str:
    """Create a run of ``job_name`` without queueing it (``instance.submit_run`` queues it later)."""
    from dagster._core.definitions.selector import JobSubsetSelector

    location = workspace.get_code_location(LOCATION_NAME)
    repository = next(iter(location.get_repositories().values()))
    selector = JobSubsetSelector(
        location_name=LOCATION_NAME, repository_name=repository.name, job_name=job_name, op_selection=None
    )
    remote_job = location.get_job(selector)
    run_config = dict(run_config or {})
    all_tags = {**remote_job.tags, **(tags or {})}
    plan = location.get_execution_plan(remote_job, run_config, step_keys_to_execute=None, known_state=None, instance=instance)
    snapshot = plan.execution_plan_snapshot
    run = instance.create_run(
        job_name=job_name,
        run_id=None,
        run_config=run_config,
        resolved_op_selection=remote_job.resolved_op_selection,
        step_keys_to_execute=snapshot.step_keys_to_execute,
        op_selection=None,
        status=None,
        root_run_id=None,
        parent_run_id=None,
        tags=all_tags,
        job_snapshot=remote_job.job_snapshot,
        execution_plan_snapshot=snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_selection=None,
        asset_check_selection=None,
        asset_graph=repository.asset_graph,
    )
    return run.run_id


def watch_runs(
    instance,
    runs: list[WatchedRun],
    on_change: Callable[[WatchedRun], None] | None = None,
    poll_seconds: float = 0.5,
    health_check: Callable[[], None] | None = None,
) -> list[WatchedRun]:
    """Poll until every run has ended, calling ``on_change`` on each status change.

    ``health_check`` runs on every poll and may raise, for example when the
    daemon that would start the queued runs has exited.
    """
    pending = {run.run_id: run for run in runs}
    while pending:
        if health_check:
            health_check()
        for watched in watch_step(instance, list(pending.values())):
            if watched.ended_at is not None:
                pending.pop(watched.run_id)
            if on_change:
                on_change(watched)
        if pending:
            time.sleep(poll_seconds)
    return runs


def watch_step(instance, runs: list[WatchedRun]) -> list[WatchedRun]:
    """Read the runs' statuses once; return those whose status changed (ended ones have ``ended_at``)."""
    by_id = {run.run_id: run for run in runs}
    changed = []
    for record in instance.get_runs(filters=_filter(list(by_id))):
        watched = by_id[record.run_id]
        if record.status == watched.status:
            continue
        watched.status = record.status
        if record.status == DagsterRunStatus.STARTED and watched.started_at is None:
            watched.started_at = time.monotonic()
        if record.status in TERMINAL_STATUSES:
            watched.ended_at = time.monotonic()
        changed.append(watched)
    return changed


def _filter(run_ids: list[str]):
    from dagster import RunsFilter

    return RunsFilter(run_ids=run_ids)


def run_failure_message(instance, run_id: str) -> str:
    """Return the first step failure (or run failure) message of a run, for the ledger."""
    from dagster import DagsterEventType

    for event_type in (DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE):
        records = instance.get_records_for_run(run_id, of_type=event_type).records
        for record in records:
            event = record.event_log_entry.dagster_event
            data = getattr(event, "event_specific_data", None)
            error = getattr(data, "error", None)
            if error is not None:
                return error.message.strip().splitlines()[0][:500]
            if event is not None and event.message:
                return event.message[:500]
    return "run failed without a step error; see the run's logs in the Dagster UI"


def exceeded_max_runtime(instance, run_id: str) -> str | None:
    """Return Dagster's "maximum runtime" message when run monitoring ended the run for its timeout."""
    from dagster import DagsterEventType

    for event_type in (DagsterEventType.RUN_CANCELING, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED):
        for record in instance.get_records_for_run(run_id, of_type=event_type).records:
            message = record.event_log_entry.message or ""
            if "maximum runtime" in message.lower():
                return message
    return None
