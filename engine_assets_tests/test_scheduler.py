"""Scheduling under real conditions: modes and limits, timeouts, retries, resume after kill -9, duplicates.

Every test runs the installed `engine train` command, which starts the real
Dagster daemon; faults are injected at named failpoints (ENGINE_FAILPOINTS)
inside real coin runs.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from pathlib import Path

import pytest

from engine_assets_tests.conftest import link_samples
from engine_assets_tests.engine_process import (
    ENGINE,
    coin_intervals,
    coin_run_records,
    engine_environment,
    kill_tree,
    max_overlap,
    read_ledger,
    run_engine,
)

pytestmark = pytest.mark.integration

TWELVE = ["AAVE", "ADA", "ARB", "AVAX", "AXS", "BCH", "BNB", "BTC", "DASH", "DOGE", "ENA", "ETH"]


def test_parallel_mode_reaches_limit(tmp_path, sample_dir):
    data_dir = link_samples(sample_dir, tmp_path / "data", TWELVE)
    env = engine_environment(
        tmp_path, data_dir, ENGINE_TRAINING_MODE="parallel", ENGINE_CONCURRENCY="3", ENGINE_FAILPOINTS="*:sleep=8"
    )
    result = run_engine(env, "train")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    intervals = coin_intervals(env)
    assert len(intervals) == 12
    assert max_overlap(intervals) == 3
    ledger = read_ledger(env)
    assert ledger["mode"] == "parallel"
    assert ledger["concurrency"] == 3


def test_sequential_mode_one_at_a_time(tmp_path, sample_dir):
    data_dir = link_samples(sample_dir, tmp_path / "data", ["BTC", "ETH", "SOL"])
    env = engine_environment(tmp_path, data_dir, ENGINE_TRAINING_MODE="sequential", ENGINE_FAILPOINTS="*:sleep=3")
    result = run_engine(env, "train")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert max_overlap(coin_intervals(env)) == 1
    assert read_ledger(env)["concurrency"] == 1


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory, sample_dir):
    """One hybrid run on CPU: a transient error twice, a SIGKILL once, a hang, a sleeper, and a healthy coin."""
    root = tmp_path_factory.mktemp("faults")
    data_dir = link_samples(sample_dir, root / "data", ["BTC", "ETH", "SOL", "ADA", "XRP"])
    env = engine_environment(
        root,
        data_dir,
        ENGINE_COIN_TIMEOUT_SECONDS="25",
        ENGINE_FAILPOINTS="BTCUSDT:error=2,ETHUSDT:kill=1,SOLUSDT:hang,XRPUSDT:sleep=4",
    )
    started = time.monotonic()
    result = run_engine(env, "train")
    return {"env": env, "result": result, "seconds": time.monotonic() - started}


def _attempt_times(entry: dict) -> list[float]:
    return [dt.datetime.fromisoformat(item["started_at"]).timestamp() for item in entry["attempt_log"]]


def test_transient_error_retried_with_backoff(faulty_run):
    entry = read_ledger(faulty_run["env"])["coins"]["BTCUSDT"]
    assert entry["status"] == "succeeded"
    assert entry["attempts"] == 3
    first, second, third = _attempt_times(entry)
    assert second - first >= 2
    assert third - second >= 4
    assert third - second > second - first


def test_killed_worker_retried(faulty_run):
    entry = read_ledger(faulty_run["env"])["coins"]["ETHUSDT"]
    assert entry["status"] == "succeeded"
    assert entry["attempts"] == 2
    assert entry["attempt_log"][0]["outcome"].startswith("crashed")


def test_hanging_coin_timed_out(faulty_run):
    entry = read_ledger(faulty_run["env"])["coins"]["SOLUSDT"]
    assert entry["status"] == "timed_out"
    assert "maximum runtime of 25 seconds" in entry["reason"]
    (interval,) = [item for item in coin_intervals(faulty_run["env"]) if item[2] == "SOLUSDT"]
    start, end, _ = interval
    # The limit plus one monitoring interval (10 s), with a little room for the poll itself.
    assert end - start <= 25 + 10 + 5


def test_other_coins_finish_and_limit_holds(faulty_run):
    coins = read_ledger(faulty_run["env"])["coins"]
    assert coins["ADAUSDT"]["status"] == "succeeded"
    assert coins["XRPUSDT"]["status"] == "succeeded"
    assert faulty_run["result"].returncode == 1
    assert max_overlap(coin_intervals(faulty_run["env"])) <= 2


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _ledger_or_empty(env):
    try:
        return read_ledger(env)
    except (OSError, ValueError, IndexError):
        return {}


KILLED_COINS = ["BTC", "ETH", "SOL", "ADA"]


def _kill_engine_when(env: dict, predicate, what: str) -> None:
    """Start `engine train`, wait until ``predicate(ledger)`` holds, then SIGKILL its whole process tree."""
    process = subprocess.Popen([ENGINE, "train"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: predicate(_ledger_or_empty(env)), 240, what)
    finally:
        # Twice, for processes that were starting while the first tree was read.
        kill_tree(process.pid)
        kill_tree(process.pid)
        process.wait(timeout=30)


def _assert_one_model_each(env: dict, ledger: dict) -> None:
    storage = Path(env["ENGINE_HOME"]) / "storage"
    for base in KILLED_COINS:
        symbol = f"{base}USDT"
        assert ledger["coins"][symbol]["status"] == "succeeded"
        complete = [folder for folder in (storage / "models" / symbol).iterdir() if (folder / "manifest.json").exists()]
        assert len(complete) == 1
        pointer = json.loads((storage / "champions" / f"{symbol}.json").read_text())
        assert pointer["path"] == f"models/{symbol}/{complete[0].name}"


def test_kill_minus_nine_then_resume(tmp_path, sample_dir):
    data_dir = link_samples(sample_dir, tmp_path / "data", KILLED_COINS)
    env = engine_environment(tmp_path, data_dir, ENGINE_ENCODER_EPOCHS="3", ENGINE_FAILPOINTS="*:sleep=2")
    _kill_engine_when(
        env, lambda ledger: ledger.get("encoder", {}).get("last_checkpoint_epoch", 0) >= 1, "the first checkpoint"
    )

    result = run_engine(env, "train")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    ledger = read_ledger(env)
    assert ledger["encoder"]["resumed_from_epoch"] >= 1
    assert "resumed from epoch" in result.stdout
    _assert_one_model_each(env, ledger)


def test_kill_during_coins_then_resume(tmp_path, sample_dir):
    data_dir = link_samples(sample_dir, tmp_path / "data", KILLED_COINS)
    # The sleep keeps each coin waiting before training, so the kill lands before any model is published.
    env = engine_environment(tmp_path, data_dir, ENGINE_FAILPOINTS="*:sleep=6")
    _kill_engine_when(
        env,
        lambda ledger: any(coin.get("status") == "running" for coin in ledger.get("coins", {}).values()),
        "a coin run to start",
    )

    result = run_engine(env, "train")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Coins killed mid-run were trained again: one successful model each for the day.
    _assert_one_model_each(env, read_ledger(env))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_dagster_services(env: dict, webserver_port: int | None = None) -> list[subprocess.Popen]:
    """Start the real daemon (and the webserver when a port is given) on the engine's instance."""
    from engine_assets.scheduling.daemon import WORKSPACE_YAML

    home = Path(env["ENGINE_HOME"])
    workspace = home / "test-workspace.yaml"
    workspace.write_text(WORKSPACE_YAML)
    bin_dir = Path(ENGINE).parent
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    commands = [[str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)]]
    if webserver_port:
        commands.append(
            [str(bin_dir / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(webserver_port)]
        )
    processes = []
    for index, command in enumerate(commands):
        with open(logs / f"service-{index}.log", "ab") as log:
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return processes


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        kill_tree(process.pid)
        process.wait(timeout=30)


def test_backfill_over_graphql_obeys_limit(tmp_path, sample_dir):
    import requests

    failing = ["ADAUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
    data_dir = link_samples(sample_dir, tmp_path / "data", ["BTC", "ADA", "ETH", "SOL", "XRP"])
    env = engine_environment(
        tmp_path, data_dir, ENGINE_COIN_RETRIES="0", ENGINE_FAILPOINTS=",".join(f"{s}:error=9" for s in failing)
    )
    first = run_engine(env, "train")
    assert first.returncode == 1
    assert [s for s, c in read_ledger(env)["coins"].items() if c["status"] == "failed"] == failing

    service_env = {**env, "ENGINE_FAILPOINTS": "*:sleep=5"}
    port = _free_port()
    processes = _start_dagster_services(service_env, port)
    try:
        url = f"http://127.0.0.1:{port}/graphql"
        _wait_for(lambda: _graphql_ready(requests, url), 120, "the Dagster webserver")
        mutation = """
        mutation Backfill($params: LaunchBackfillParams!) {
          launchPartitionBackfill(backfillParams: $params) {
            __typename
            ... on LaunchBackfillSuccess { backfillId }
            ... on PythonError { message }
            ... on PartitionSetNotFoundError { message }
          }
        }"""
        params = {"assetSelection": [{"path": ["coin_model"]}], "partitionNames": failing}
        answer = requests.post(url, json={"query": mutation, "variables": {"params": params}}, timeout=60).json()
        assert answer["data"]["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", answer
        _wait_for(
            lambda: all(read_ledger(env)["coins"][s]["status"] == "succeeded" for s in failing)
            and len([r for r in coin_run_records(env) if "dagster/backfill" in r.dagster_run.tags and r.end_time])
            == len(failing),
            300,
            "the backfill runs to retrain the failed coins and end",
        )
    finally:
        _stop(processes)

    backfill_runs = [
        (record.start_time, record.end_time, record.dagster_run.tags["dagster/partition"])
        for record in coin_run_records(env)
        if "dagster/backfill" in record.dagster_run.tags
    ]
    assert sorted(symbol for _, _, symbol in backfill_runs) == failing
    assert max_overlap(backfill_runs) <= 2
    assert max_overlap(backfill_runs) == 2


def _graphql_ready(requests, url) -> bool:
    try:
        return requests.post(url, json={"query": "{ version }"}, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def test_duplicate_runs_promote_once(tmp_path, sample_dir):
    data_dir = link_samples(sample_dir, tmp_path / "data", ["BTC"])
    env = engine_environment(tmp_path, data_dir, ENGINE_FAILPOINTS="*:sleep=3")
    assert run_engine(env, "train").returncode == 0
    storage = Path(env["ENGINE_HOME"]) / "storage"
    (storage / "champions" / "BTCUSDT.json").unlink()

    processes = _start_dagster_services(env)
    try:
        time.sleep(8)
        both = [
            subprocess.Popen([ENGINE, "train", "--force"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outputs = [process.communicate(timeout=300) for process in both]
    finally:
        _stop(processes)
    assert [process.returncode for process in both] == [0, 0], outputs

    folders = sorted(folder for folder in (storage / "models" / "BTCUSDT").iterdir() if (folder / "manifest.json").exists())
    assert len(folders) == 3
    decisions = [json.loads((folder / "metrics.json").read_text())["decision"] for folder in folders[1:]]
    assert sum(1 for decision in decisions if decision["promote"]) == 1
    pointer = json.loads((storage / "champions" / "BTCUSDT.json").read_text())
    assert pointer["path"] in {f"models/BTCUSDT/{folder.name}" for folder in folders[1:]}
    entry = read_ledger(env)["coins"]["BTCUSDT"]
    assert entry["status"] == "succeeded"
    assert entry["attempts"] == 3
    assert len(entry["attempt_log"]) == 3
