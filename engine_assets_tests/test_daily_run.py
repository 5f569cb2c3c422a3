"""The daily run end to end: `engine train` with the real Dagster daemon, real files and bad inputs.

One module-scoped run trains three real coins beside four broken ones and
the tests read what it left: the ledger, the champions, the manifests, the
Dagster run records and the console output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from engine_assets_tests.conftest import link_samples

pytestmark = pytest.mark.integration

GOOD = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
SHORT_ROWS = 3000
ENGINE = str(Path(sys.executable).with_name("engine"))


def _write_bad_inputs(sample_dir: Path, data_dir: Path) -> None:
    (data_dir / "EMPTY_USDT-1h.feather").write_bytes(b"")
    frame = pd.read_feather(sample_dir / "ADA_USDT-1h.feather")
    frame.rename(columns={"close": "last"}).to_csv(data_dir / "WRONG_USDT-1h.csv", index=False)
    whole = (sample_dir / "AVAX_USDT-1h.feather").read_bytes()
    (data_dir / "TRUNC_USDT-1h.feather").write_bytes(whole[: len(whole) // 2])
    frame.head(SHORT_ROWS).to_feather(data_dir / "SHORT_USDT-1h.feather")


def _engine(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ENGINE, "train", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def daily_run(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("daily")
    data_dir = link_samples(sample_dir, root / "data", ["BTC", "ETH", "SOL"])
    _write_bad_inputs(sample_dir, data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "TELEGRAM_", "DROPBOX_"))}
    env.update(
        ENGINE_HOME=str(root / "home"),
        DAGSTER_HOME=str(root / "home" / "dagster"),
        ENGINE_DATA_DIR=str(data_dir),
        ENGINE_ENCODER_EPOCHS="1",
        ENGINE_COIN_RETRIES="0",
    )
    started = time.monotonic()
    first = _engine(env)
    first_seconds = time.monotonic() - started
    return {"root": root, "env": env, "first": first, "first_seconds": first_seconds}


def _ledger(daily_run) -> dict:
    runs = Path(daily_run["env"]["ENGINE_HOME"]) / "storage" / "runs"
    (day,) = list(runs.iterdir())
    return json.loads((day / "status.json").read_text())


def test_daily_run_exit_status_and_table(daily_run):
    result = daily_run["first"]
    assert result.returncode == 1, result.stderr[-3000:]
    for symbol in GOOD + ["EMPTYUSDT", "WRONGUSDT", "TRUNCUSDT", "SHORTUSDT"]:
        assert symbol in result.stdout
    assert "Sharpe net" in result.stdout
    assert "3 succeeded, 1 skipped, 3 failed" in result.stdout


def test_daily_run_good_coins_have_champions(daily_run):
    storage = Path(daily_run["env"]["ENGINE_HOME"]) / "storage"
    coins = _ledger(daily_run)["coins"]
    for symbol in GOOD:
        assert coins[symbol]["status"] == "succeeded"
        assert coins[symbol]["attempts"] == 1
        pointer = json.loads((storage / "champions" / f"{symbol}.json").read_text())
        assert pointer["path"] == coins[symbol]["artifact"]
        assert pointer["encoder_path"].startswith("encoder/")


def test_daily_run_bad_files_named(daily_run):
    coins = _ledger(daily_run)["coins"]
    assert coins["EMPTYUSDT"]["status"] == "failed"
    assert "EMPTY_USDT-1h.feather" in coins["EMPTYUSDT"]["reason"]
    assert "empty" in coins["EMPTYUSDT"]["reason"]
    assert coins["WRONGUSDT"]["status"] == "failed"
    assert "WRONG_USDT-1h.csv" in coins["WRONGUSDT"]["reason"]
    assert "close" in coins["WRONGUSDT"]["reason"]
    assert coins["TRUNCUSDT"]["status"] == "failed"
    assert "TRUNC_USDT-1h.feather" in coins["TRUNCUSDT"]["reason"]
    assert "Feather" in coins["TRUNCUSDT"]["reason"]


def test_daily_run_short_history_skipped(daily_run):
    entry = _ledger(daily_run)["coins"]["SHORTUSDT"]
    assert entry["status"] == "skipped"
    assert entry["reason"].startswith(f"insufficient history: {SHORT_ROWS} candles, need ")


def test_daily_run_manifests_verify(daily_run):
    from engine_assets.storage.local import LocalArtifactStore
    from engine_assets.storage.verify import verify_store

    store = LocalArtifactStore(Path(daily_run["env"]["ENGINE_HOME"]) / "storage")
    report = verify_store(store)
    assert report.ok, report.problems
    assert len(report.folders_checked) >= len(GOOD) + 1


def test_daily_run_reports_written(daily_run):
    storage = Path(daily_run["env"]["ENGINE_HOME"]) / "storage"
    roster = json.loads((storage / "champions" / "roster.json").read_text())
    assert sorted(roster["coins"]) == sorted(GOOD + ["EMPTYUSDT", "WRONGUSDT", "TRUNCUSDT", "SHORTUSDT"])
    assert roster["coins"]["EMPTYUSDT"]["champion"] is None
    (summary_path,) = list((storage / "summary").glob("*/engine_summary.json"))
    summary = json.loads(summary_path.read_text())
    assert summary["counts"] == {"succeeded": 3, "skipped": 1, "failed": 3, "timed_out": 0}


def test_daily_run_one_run_per_coin_at_most_two(daily_run):
    from dagster import DagsterInstance, RunsFilter

    os.environ["DAGSTER_HOME"] = daily_run["env"]["DAGSTER_HOME"]
    with DagsterInstance.get() as instance:
        records = instance.get_run_records(RunsFilter(job_name="coin_job"))
    partitions = sorted(record.dagster_run.tags["dagster/partition"] for record in records)
    assert partitions == sorted(GOOD + ["EMPTYUSDT", "WRONGUSDT", "TRUNCUSDT", "SHORTUSDT"])
    intervals = [(record.start_time, record.end_time) for record in records]
    assert all(start and end for start, end in intervals)
    overlap = max(sum(1 for start, end in intervals if start <= moment < end) for moment, _ in intervals)
    assert overlap <= 2


def test_daily_run_second_run_trains_nothing(daily_run):
    env = daily_run["env"]
    started = time.monotonic()
    second = _engine(env, "--symbols", ",".join(GOOD + ["SHORTUSDT"]))
    seconds = time.monotonic() - started
    assert second.returncode == 0, second.stderr[-3000:]
    assert "nothing to train" in second.stdout
    assert seconds < daily_run["first_seconds"] / 3
