"""Helpers for tests that run the installed ``engine`` command and read the Dagster instance it used."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ENGINE = str(Path(sys.executable).with_name("engine"))


def engine_environment(root: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    """Return an environment with a fresh ENGINE_HOME under ``root`` and one epoch of encoder training."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "TELEGRAM_", "DROPBOX_"))}
    env.update(
        ENGINE_HOME=str(root / "home"),
        DAGSTER_HOME=str(root / "home" / "dagster"),
        ENGINE_DATA_DIR=str(data_dir),
        ENGINE_ENCODER_EPOCHS="1",
    )
    env.update(extra)
    return env


def run_engine(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([ENGINE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def read_ledger(env: dict) -> dict:
    runs = Path(env["ENGINE_HOME"]) / "storage" / "runs"
    days = sorted(runs.iterdir())
    return json.loads((days[-1] / "status.json").read_text())


def coin_run_records(env: dict):
    """Return the run records of every coin run (any run of one partition) in the engine's Dagster instance."""
    from dagster import DagsterInstance

    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        with DagsterInstance.get() as instance:
            return [r for r in instance.get_run_records() if "dagster/partition" in r.dagster_run.tags]
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


def coin_intervals(env: dict) -> list[tuple[float, float, str]]:
    """Return (start, end, symbol) of every coin run that started."""
    intervals = []
    for record in coin_run_records(env):
        symbol = record.dagster_run.tags.get("dagster/partition")
        if symbol and record.start_time:
            intervals.append((record.start_time, record.end_time or time.time(), symbol))
    return intervals


def max_overlap(intervals) -> int:
    """Return the largest number of intervals open at one instant."""
    events = sorted([(start, 1) for start, _, _ in intervals] + [(end, -1) for _, end, _ in intervals])
    open_now = highest = 0
    for _, change in events:
        open_now += change
        highest = max(highest, open_now)
    return highest


def process_tree(root_pid: int) -> list[int]:
    """Return ``root_pid`` and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, stack = [], [root_pid]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def kill_tree(root_pid: int) -> int:
    """Send SIGKILL to ``root_pid`` and every descendant; return how many processes were signalled."""
    pids = process_tree(root_pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)
