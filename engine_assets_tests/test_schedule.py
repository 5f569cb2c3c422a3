"""Tests of the daily schedule: its settings, its run requests, the candle refresh, and the real daemon ticking it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from engine_assets.console import Console
from engine_assets.notify.messages import summary_message
from engine_assets.scheduling.daemon import WORKSPACE_YAML
from engine_assets.scheduling.refresh import refresh_candles
from engine_assets.schedules import SCHEDULE_NAME, build_daily_schedule
from engine_assets.settings import EngineSettings, SettingsError
from engine_assets_tests.conftest import link_samples
from engine_assets_tests.telegram_server import FakeTelegramServer

BIN = Path(sys.executable).parent
TOKEN = "123456789:AAHfakeTokenForTests_only-0123456789ab"
CHAT_ID = "424242"
# The tick comes within a minute of the daemon's start; the chain of two coins takes about a minute.
DAEMON_WAIT_SECONDS = 240


class Lines:
    """A text stream that keeps what a Console wrote."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def make_settings(tmp_path: Path, **changes) -> EngineSettings:
    return EngineSettings(home=tmp_path / "home", data_dir=tmp_path / "data").with_overrides(**changes)


# Settings.


def test_settings_schedule_defaults(tmp_path):
    settings = EngineSettings.from_env({"ENGINE_HOME": str(tmp_path)})

    assert settings.daily_cron == "15 0 * * *"
    assert settings.daily_schedule == "stopped"
    assert settings.download_exchange == ""
    assert settings.download_api_url == ""
    assert settings.notify_max_wait_seconds == 30


def test_settings_schedule_values(tmp_path):
    settings = EngineSettings.from_env(
        {
            "ENGINE_HOME": str(tmp_path),
            "ENGINE_DAILY_CRON": " 30  2 * * 1-5 ",
            "ENGINE_DAILY_SCHEDULE": "Running",
            "ENGINE_DOWNLOAD_EXCHANGE": "Binance",
            "ENGINE_DOWNLOAD_API_URL": "http://127.0.0.1:9",
            "ENGINE_NOTIFY_MAX_WAIT_SECONDS": "5",
        }
    )

    assert settings.daily_cron == "30 2 * * 1-5"
    assert settings.daily_schedule == "running"
    assert settings.download_exchange == "binance"
    assert settings.download_api_url == "http://127.0.0.1:9"
    assert settings.notify_max_wait_seconds == 5


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ENGINE_DAILY_CRON", "61 0 * * *", r"invalid ENGINE_DAILY_CRON='61 0 \* \* \*': expected a cron expression"),
        ("ENGINE_DAILY_CRON", "0 0 * * * *", r"invalid ENGINE_DAILY_CRON='0 0 \* \* \* \*'"),
        ("ENGINE_DAILY_SCHEDULE", "on", r"invalid ENGINE_DAILY_SCHEDULE='on': expected one of stopped, running"),
        ("ENGINE_NOTIFY_MAX_WAIT_SECONDS", "0", r"invalid ENGINE_NOTIFY_MAX_WAIT_SECONDS=0: expected at least 1"),
    ],
    ids=["minute out of range", "six fields", "unknown status", "zero wait"],
)
def test_settings_schedule_invalid(tmp_path, name, value, message):
    with pytest.raises(SettingsError, match=message):
        EngineSettings.from_env({"ENGINE_HOME": str(tmp_path), name: value})


# The schedule's definition and its run requests.


def test_schedule_definition_default(tmp_path):
    schedule = build_daily_schedule(make_settings(tmp_path))

    assert schedule.name == SCHEDULE_NAME
    assert schedule.job_name == "daily_job"
    assert schedule.cron_schedule == "15 0 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED


def test_schedule_definition_settings(tmp_path):
    schedule = build_daily_schedule(make_settings(tmp_path, daily_cron="30 2 * * 1-5", daily_schedule="running"))

    assert schedule.cron_schedule == "30 2 * * 1-5"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        (dt.datetime(2026, 12, 4, 0, 15, tzinfo=dt.timezone.utc), "20261204Z"),
        (dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.timezone.utc), "20261231Z"),
        # 00:15 in UTC+02:00 is still the previous day in UTC.
        (dt.datetime(2027, 1, 1, 0, 15, tzinfo=dt.timezone(dt.timedelta(hours=2))), "20261231Z"),
    ],
    ids=["at 00:15", "end of year", "other time zone"],
)
def test_schedule_run_request(tmp_path, moment, day):
    schedule = build_daily_schedule(make_settings(tmp_path))

    # The schedule reads earlier runs, so it needs an instance on disk (an ephemeral one has no reference).
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=moment) as context:
            request = schedule(context)
            data = schedule.evaluate_tick(context)

    assert isinstance(request, dg.RunRequest)
    assert request.run_key == day
    assert request.tags == {"engine/day": day}
    assert request.job_name is None
    assert [item.run_key for item in data.run_requests] == [day]


def test_schedule_skips_day_with_run(tmp_path):
    from engine_assets.jobs import daily_job

    schedule = build_daily_schedule(make_settings(tmp_path))
    moment = dt.datetime(2026, 12, 4, 0, 15, tzinfo=dt.timezone.utc)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        other_day = instance.create_run_for_job(job_def=daily_job, tags={"engine/day": "20261203Z"})
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=moment) as context:
            first = schedule(context)
        run = instance.create_run_for_job(job_def=daily_job, tags={"engine/day": "20261204Z"})
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=moment) as context:
            second = schedule(context)

    assert other_day.run_id != run.run_id
    assert isinstance(first, dg.RunRequest)
    assert isinstance(second, dg.SkipReason)
    assert second.skip_message.startswith(f"daily_job already ran for 20261204Z: run {run.run_id} is NOT_STARTED")


def test_definitions_wire_schedule():
    from engine_assets.definitions import defs

    repository = defs.get_repository_def()

    assert repository.get_schedule_def(SCHEDULE_NAME).job_name == "daily_job"
    assert repository.get_sensor_def("run_failure_telegram").default_status == dg.DefaultSensorStatus.RUNNING
    assert "daily_job" in repository.job_names


# The candle refresh at the start of the daily run.


def test_refresh_off_without_exchange(tmp_path):
    lines = Lines()

    assert refresh_candles(make_settings(tmp_path), ["BTCUSDT"], Console(lines)) is None
    assert lines.text == ""


def test_refresh_updates_and_continues(tmp_path, sample_dir):
    from engine_assets.data.loading import write_candles_feather
    from engine_assets_tests.binance_server import FakeBinance

    served = pd.read_feather(sample_dir / "BTC_USDT-1h.feather").iloc[:1200].reset_index(drop=True)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_candles_feather(served.iloc[:1000], data_dir / "BTC_USDT-1h.feather")
    # The server lists no XRP market, so ccxt rejects that coin at once.
    write_candles_feather(served.iloc[:1000], data_dir / "XRP_USDT-1h.feather")
    lines = Lines()
    with FakeBinance({"BTCUSDT": served}) as fake:
        settings = make_settings(tmp_path, download_exchange="binance", download_api_url=fake.url)
        results = refresh_candles(settings, ["BTCUSDT", "XRPUSDT"], Console(lines))

    assert results["BTCUSDT"].status == "updated"
    # The refresh decides which candles are closed by the real clock, years after the sample's end.
    assert results["BTCUSDT"].rows_added == 200
    assert len(pd.read_feather(data_dir / "BTC_USDT-1h.feather")) == 1200
    assert results["XRPUSDT"].status == "failed"
    assert len(pd.read_feather(data_dir / "XRP_USDT-1h.feather")) == 1000
    assert "candles: refreshing 2 coin(s) from binance" in lines.text
    assert "candles [1/2] BTCUSDT: updated, 200 added, 0 replaced" in lines.text
    assert "candles [2/2] XRPUSDT: download failed, training on the stored candles: BadSymbol" in lines.text
    assert lines.text.rstrip().endswith("candles: 1 failed, 1 updated")


def test_refresh_unknown_exchange(tmp_path):
    lines = Lines()
    settings = make_settings(tmp_path, download_exchange="nosuchexchange")

    assert refresh_candles(settings, ["BTCUSDT"], Console(lines)) is None
    expected = "candles: refresh failed, training on the stored candles: ValueError: unknown exchange 'nosuchexchange'"
    assert expected in lines.text


# The real daemon ticks the schedule and the daily job runs the whole chain.


def _stop_group(process: subprocess.Popen) -> None:
    """Stop a process started in its own session and everything it started, then check none is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"processes of the daemon's group {process.pid} were still running 30 s after it stopped")


def _wait_for_daily_run(instance, daemon: subprocess.Popen, log_path: Path):
    deadline = time.monotonic() + DAEMON_WAIT_SECONDS
    while time.monotonic() < deadline:
        assert daemon.poll() is None, f"the daemon exited with {daemon.returncode}: {log_path.read_text()[-3000:]}"
        runs = instance.get_runs(dg.RunsFilter(job_name="daily_job"))
        if runs and all(run.is_finished for run in runs):
            return runs
        time.sleep(2)
    raise AssertionError(f"no finished daily_job run within {DAEMON_WAIT_SECONDS} s: {log_path.read_text()[-3000:]}")


def _wait_for_skipped_tick(instance) -> list[str]:
    """Return the skip messages of the schedule's ticks, waiting up to a minute and a half for one."""
    from dagster._core.scheduler.instigation import TickStatus

    deadline = time.monotonic() + 90
    while True:
        messages = []
        for state in instance.all_instigator_state():
            if state.name == SCHEDULE_NAME:
                ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
                messages += [tick.skip_reason or "" for tick in ticks if tick.status == TickStatus.SKIPPED]
        if messages or time.monotonic() > deadline:
            return messages
        time.sleep(2)


@pytest.mark.integration
def test_daemon_ticks_schedule(tmp_path, sample_dir):
    data_dir = link_samples(sample_dir, tmp_path / "data", ["BTC", "ETH"])
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "TELEGRAM_", "DROPBOX_"))}
    env.update(
        ENGINE_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster"),
        ENGINE_DATA_DIR=str(data_dir),
        ENGINE_ENCODER_EPOCHS="1",
        ENGINE_COIN_RETRIES="0",
        ENGINE_DAILY_CRON="* * * * *",
        ENGINE_DAILY_SCHEDULE="running",
        ENGINE_NOTIFY_MAX_WAIT_SECONDS="20",
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_CHAT_ID=CHAT_ID,
    )
    init = subprocess.run([str(BIN / "engine"), "init-instance"], env=env, capture_output=True, text=True, check=False)
    assert init.returncode == 0, init.stderr
    workspace = home / "workspace.yaml"
    workspace.write_text(WORKSPACE_YAML)
    log_path = home / "logs" / "daemon.log"
    log_path.parent.mkdir(parents=True)

    with FakeTelegramServer(TOKEN, CHAT_ID) as telegram:
        env["TELEGRAM_API_URL"] = telegram.url
        with open(log_path, "wb") as log_stream:
            daemon = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
                env=env,
                stdout=log_stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
                daily_runs = _wait_for_daily_run(instance, daemon, log_path)
                skipped = _wait_for_skipped_tick(instance)
                runs = {
                    job: instance.get_runs(dg.RunsFilter(job_name=job))
                    for job in ("encoder_job", "coin_job", "publish_job")
                }
                logged = {
                    run.run_id: [entry.user_message for entry in instance.all_logs(run.run_id)] for run in daily_runs
                }
        finally:
            _stop_group(daemon)
        texts = telegram.rendered_texts()

    # Later ticks of the every-minute cron skip the day that already has a run.
    assert len(daily_runs) == 1
    daily = daily_runs[0]
    messages = logged[daily.run_id]
    day = daily.tags["engine/day"]
    assert skipped
    assert skipped[0].startswith(f"daily_job already ran for {day}: run {daily.run_id}")
    assert daily.status == dg.DagsterRunStatus.SUCCESS, "\n".join(messages[-30:])
    assert daily.tags["dagster/schedule_name"] == SCHEDULE_NAME
    assert day == dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dZ")
    # The run found the daemon that launched it instead of starting another.
    assert any(message.endswith("using the running Dagster daemon") for message in messages)
    assert not (home / "daemon.pid").exists()

    for job in ("encoder_job", "publish_job"):
        assert [run.status for run in runs[job]] == [dg.DagsterRunStatus.SUCCESS]
        assert runs[job][0].tags["engine/day"] == day
    coins = sorted(run.tags["dagster/partition"] for run in runs["coin_job"])
    assert coins == ["BTCUSDT", "ETHUSDT"]
    assert {run.status for run in runs["coin_job"]} == {dg.DagsterRunStatus.SUCCESS}

    storage = home / "storage"
    ledger = json.loads((storage / "runs" / day / "status.json").read_text())
    assert {symbol: entry["status"] for symbol, entry in ledger["coins"].items()} == {
        "BTCUSDT": "succeeded",
        "ETHUSDT": "succeeded",
    }
    summary = json.loads((storage / "summary" / day / "engine_summary.json").read_text())
    assert summary["counts"]["succeeded"] == 2

    assert texts[0].startswith(f"Engine run {day} started\nCoins: 2\nBTCUSDT, ETHUSDT\n")
    assert "\n".join(texts[1:]) == summary_message(summary)
    secret = TOKEN.split(":", 1)[1].encode()
    assert [path for path in home.rglob("*") if path.is_file() and secret in path.read_bytes()] == []
