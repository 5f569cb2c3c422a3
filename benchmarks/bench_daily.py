"""Time the daily run on the sample candles and split its wall time by what the machine was doing.

Runs ``engine train`` in a fresh ENGINE_HOME, then reads the step start and
end events of every Dagster run from the instance. Each instant of the wall
time is attributed to the steps executing then (split evenly when several
run at once): data (candles and features steps, and the encoder's candle
loading), encoder (the rest of the shared_encoder step), coin training (the
coin_model steps), reports (roster and summary). Instants with no step
running are orchestration overhead: daemon and code server start, run
launch and queueing, process start and imports.

Usage: python benchmarks/bench_daily.py [--data-dir DIR] [--symbols A,B] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

CATEGORY_BY_STEP = {
    "candles": "data",
    "features": "data",
    "shared_encoder": "encoder",
    "coin_model": "coin training",
    "roster": "reports",
    "summary": "reports",
}


def step_intervals(instance) -> list[tuple[float, float, str]]:
    """Return (start, end, category) for every step of every run in the instance."""
    from dagster import DagsterEventType

    intervals = []
    for record in instance.get_run_records():
        starts = {}
        for entry in instance.all_logs(record.dagster_run.run_id):
            event = entry.dagster_event
            if event is None or event.step_key is None:
                continue
            if event.event_type == DagsterEventType.STEP_START:
                starts[event.step_key] = entry.timestamp
            elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                start = starts.pop(event.step_key, None)
                if start is not None:
                    intervals.append((start, entry.timestamp, CATEGORY_BY_STEP.get(event.step_key, "other")))
    return intervals


def split_wall_time(intervals, wall_start: float, wall_end: float) -> dict[str, float]:
    """Attribute each instant of [wall_start, wall_end] to the categories running then."""
    edges = sorted({wall_start, wall_end, *(t for s, e, _ in intervals for t in (s, e))})
    split: dict[str, float] = defaultdict(float)
    for left, right in zip(edges, edges[1:]):
        if right <= wall_start or left >= wall_end:
            continue
        active = [category for start, end, category in intervals if start <= left and end >= right]
        if not active:
            split["orchestration"] += right - left
        for category in active:
            split[category] += (right - left) / len(active)
    return dict(split)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="candle folder (default: ENGINE_DATA_DIR or the sample candles)")
    parser.add_argument("--symbols", default="", help="comma-separated subset (default: every coin)")
    parser.add_argument("--home", help="ENGINE_HOME to use; must not exist (default: a temporary folder)")
    args = parser.parse_args()

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="engine-bench-")) / "home"
    env = dict(os.environ)
    env.update(ENGINE_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    if args.data_dir:
        env["ENGINE_DATA_DIR"] = args.data_dir
    if args.symbols:
        env["ENGINE_SYMBOLS"] = args.symbols
    engine = str(Path(sys.executable).with_name("engine"))

    wall_start = time.time()
    result = subprocess.run([engine, "train"], env=env, capture_output=True, text=True, check=False)
    wall_end = time.time()
    sys.stderr.write(result.stdout[-4000:])
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    from dagster import DagsterInstance

    with DagsterInstance.get() as instance:
        intervals = step_intervals(instance)
        coin_runs = len(instance.get_run_records(__import__("dagster").RunsFilter(job_name="coin_job")))

    # The encoder step loads every coin's candles first: move that share to "data".
    encoder_folders = sorted((home / "storage" / "encoder").glob("*/training.json"))
    load_seconds = json.loads(encoder_folders[-1].read_text()).get("load_seconds", 0.0) if encoder_folders else 0.0
    adjusted = []
    for start, end, category in intervals:
        if category == "encoder" and load_seconds:
            adjusted.append((start, start + load_seconds, "data"))
            adjusted.append((start + load_seconds, end, "encoder"))
        else:
            adjusted.append((start, end, category))
    split = split_wall_time(adjusted, wall_start, wall_end)
    wall = wall_end - wall_start

    print(f"| measure | seconds | share of wall time |")
    print(f"|---|---:|---:|")
    for category in ("data", "encoder", "coin training", "reports", "orchestration"):
        seconds = split.get(category, 0.0)
        print(f"| {category} | {seconds:.1f} | {seconds / wall:.1%} |")
    print(f"| **wall time** | **{wall:.1f}** | 100% |")
    print()
    print(f"exit status {result.returncode}; {coin_runs} coin runs; machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; ENGINE_HOME={home}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
