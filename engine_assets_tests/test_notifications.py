"""Tests of the daily run's Telegram notifications against a local fake Bot API.

They cover the queue, the resource, the failure sensor, the daily op, and
`engine train` end to end with the fake server up and down.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from engine_assets.console import Console
from engine_assets.notify import events
from engine_assets.notify.messages import coin_failed_message, summary_message
from engine_assets.notify.resources import TelegramResource, build_notifier
from engine_assets.notify.telegram import TelegramNotifier
from engine_assets.settings import EngineSettings
from engine_assets_tests.conftest import link_samples
from engine_assets_tests.telegram_server import FakeTelegramServer

TOKEN = "123456789:AAHfakeTokenForTests_only-0123456789ab"
SECRET = TOKEN.split(":", 1)[1]
CHAT_ID = "424242"
ENGINE = str(Path(sys.executable).with_name("engine"))


class Lines:
    """A text stream that keeps what a Console wrote."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


@pytest.fixture
def telegram():
    with FakeTelegramServer(TOKEN, CHAT_ID) as server:
        yield server


def make_notifier(server: FakeTelegramServer, **options) -> TelegramNotifier:
    settings = {"timeout": 5, "max_total_wait": 10, "min_interval": 0}
    settings.update(options)
    return TelegramNotifier(TOKEN, CHAT_ID, server.url, **settings)


def settings_for(tmp_path: Path, max_wait: int = 5) -> EngineSettings:
    return EngineSettings(home=tmp_path / "home", data_dir=tmp_path / "data", notify_max_wait_seconds=max_wait)


class Plan:
    mode = "hybrid"
    limit = 2


# The notification queue and its helpers.


def test_queue_sends_in_order(tmp_path, telegram):
    lines = Lines()
    notifications = events.start_notifications(settings_for(tmp_path), Console(lines), make_notifier(telegram))
    summary = {"date": "20261204Z", "coins": [{"symbol": "BTCUSDT", "status": "succeeded", "sharpe_net": 1.2}]}

    events.notify_run_started(notifications, "20261204Z", ["BTCUSDT", "ETHUSDT"], Plan())
    events.notify_coin_finished(notifications, "BTCUSDT", {"status": "succeeded", "attempts": 1})
    timed_out = {"status": "timed_out", "attempts": 3, "reason": "over 2700 s"}
    events.notify_coin_finished(notifications, "ETHUSDT", timed_out)
    events.notify_coin_finished(notifications, "XRPUSDT", {"status": "skipped", "reason": "insufficient history"})
    reports = events.notify_run_finished(notifications, "20261204Z", summary)

    texts = telegram.rendered_texts()
    assert len(texts) == 3
    assert texts[0].startswith("Engine run 20261204Z started\nCoins: 2\nBTCUSDT, ETHUSDT\n")
    assert texts[0].endswith("Mode: hybrid, up to 2 coin(s) at a time")
    assert texts[1] == coin_failed_message("ETHUSDT", "timed_out", 3, "over 2700 s")
    assert texts[2] == summary_message(summary)
    assert telegram.messages[2].text.startswith("<pre>")
    assert [report.ok for report in reports] == [True, True, True]
    assert "Telegram notifications on" in lines.text
    assert "not delivered" not in lines.text


def test_queue_no_summary_note(tmp_path, telegram):
    notifications = events.start_notifications(settings_for(tmp_path), None, make_notifier(telegram))

    events.notify_run_finished(notifications, "20261204Z", None)

    assert telegram.rendered_texts() == [
        "Engine run 20261204Z finished without a summary: the report run failed. "
        "See the publish_job run in the Dagster UI."
    ]


def test_queue_disabled_one_line(tmp_path, telegram, caplog):
    caplog.set_level(logging.DEBUG)
    lines = Lines()
    notifier = TelegramNotifier(None, CHAT_ID, telegram.url)

    notifications = events.start_notifications(settings_for(tmp_path), Console(lines), notifier)
    events.notify_run_started(notifications, "20261204Z", ["BTCUSDT"], Plan())
    events.notify_coin_finished(notifications, "BTCUSDT", {"status": "failed", "attempts": 1, "reason": "bad file"})
    reports = events.notify_run_finished(notifications, "20261204Z", None)

    assert reports == []
    assert telegram.requests == []
    assert lines.text.count("\n") == 1
    assert lines.text.endswith(f"{events.NOTIFICATIONS_OFF}\n")
    assert "Telegram" not in caplog.text


def test_queue_close_bounded(tmp_path):
    # A socket that accepts connections but never responds: every request waits for its timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        lines = Lines()
        notifier = build_notifier(TOKEN, CHAT_ID, url, max_wait_seconds=1)
        notifications = events.start_notifications(settings_for(tmp_path, max_wait=1), Console(lines), notifier)

        for index in range(3):
            notifications.post(f"message {index}")
        reports = notifications.close()

    # Each message needs its whole 1 s bound, and close waits 1 s in all.
    assert len(reports) <= 1
    assert all(not report.ok for report in reports)
    assert "Telegram: 3 of 3 message(s) not delivered" in lines.text
    assert "still queued after waiting 1 s" in lines.text
    assert SECRET not in lines.text


def test_queue_server_down_reason(tmp_path, telegram, caplog):
    caplog.set_level(logging.DEBUG)
    telegram.down = True
    lines = Lines()
    notifier = build_notifier(TOKEN, CHAT_ID, telegram.url, max_wait_seconds=1)
    notifications = events.start_notifications(settings_for(tmp_path, max_wait=1), Console(lines), notifier)

    notifications.post("first")
    reports = notifications.close()

    assert [report.ok for report in reports] == [False]
    assert "Telegram: 1 of 1 message(s) not delivered: HTTP 502: response is not Bot API JSON" in lines.text
    assert len(telegram.requests) == 1
    assert telegram.messages == []
    assert SECRET not in caplog.text


# The Dagster resource and the failure sensor.


def test_resource_unset_disabled(monkeypatch):
    for name in ("TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "TELEGRAM_API_URL"):
        monkeypatch.delenv(name, raising=False)

    notifier = TelegramResource().notifier()

    assert not notifier.enabled
    assert notifier.send("nothing").enabled is False


def test_resource_reads_variables(monkeypatch, telegram):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT_ID)
    monkeypatch.setenv("TELEGRAM_API_URL", telegram.url)
    resource = TelegramResource(max_wait_seconds=5)

    notifier = resource.notifier()

    assert notifier.enabled
    assert notifier.send("from the resource").ok
    assert telegram.rendered_texts() == ["from the resource"]
    # What the launchpad and the UI show is the variable's name, never its value.
    assert resource.bot_token_variable == "TELEGRAM_BOT_TOKEN"
    assert SECRET not in repr(resource)
    assert SECRET not in repr(notifier)


@dg.op
def broken_step():
    raise RuntimeError("encoder checkpoint epoch_003.pt is truncated")


@dg.op
def failing_step():
    raise dg.Failure(description="2 of 26 coin(s) failed on 20261204Z: BTCUSDT, ETHUSDT")


@dg.job
def broken_job():
    broken_step()


@dg.job
def failing_job():
    failing_step()


@pytest.mark.parametrize(
    ("job", "error"),
    [
        (broken_job, "RuntimeError: encoder checkpoint epoch_003.pt is truncated"),
        (failing_job, "2 of 26 coin(s) failed on 20261204Z: BTCUSDT, ETHUSDT"),
    ],
    ids=["exception", "dagster failure"],
)
def test_failure_sensor_message(monkeypatch, telegram, job, error):
    from engine_assets.sensors import run_failure_telegram

    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", CHAT_ID)
    monkeypatch.setenv("TELEGRAM_API_URL", telegram.url)
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_telegram",
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            dagster_event=result.get_run_failure_event(),
            resources={"telegram": TelegramResource(max_wait_seconds=5)},
        ).for_run_failure()

        with context:
            run_failure_telegram(context)

    assert telegram.rendered_texts() == [f"Engine job {job.name} failed\nRun: {result.run_id}\nError: {error}"]


def test_failure_sensor_running_default():
    from engine_assets.sensors import run_failure_telegram

    assert run_failure_telegram.default_status == dg.DefaultSensorStatus.RUNNING
    assert run_failure_telegram.required_resource_keys == {"telegram"}


def test_job_failed_message_shortened():
    text = events.job_failed_message("publish_job", "abc123", "line one\nline two " + "x" * 2000)

    assert text.startswith("Engine job publish_job failed\nRun: abc123\nError: line one line two xx")
    assert len(text.splitlines()[2]) == len("Error: ") + 1000
    assert text.endswith("…")


# The daily op, with run_daily replaced by a stub that writes the ledger.


def test_daily_op_fails_on_coins(engine_env, monkeypatch):
    from engine_assets import jobs
    from engine_assets.resources import EngineResource
    from engine_assets.scheduling import daily

    calls = []

    def stub_run_daily(settings, options, console=None, notifier=None):
        calls.append((options, notifier))
        ledger = EngineResource().ledger(options.day)
        ledger.update_coin("BTCUSDT", status="succeeded", attempts=1)
        ledger.update_coin("ETHUSDT", status="failed", attempts=3, reason="EMPTY_USDT-1h.feather is empty")
        console.line("stub ran")
        return 1

    monkeypatch.setattr(daily, "run_daily", stub_run_daily)
    with dg.DagsterInstance.ephemeral() as instance:
        result = jobs.daily_job.execute_in_process(
            resources={"engine": EngineResource(), "telegram": TelegramResource()},
            tags={"engine/day": "20261204Z"},
            instance=instance,
            raise_on_error=False,
        )
        logged = [entry.user_message for entry in instance.all_logs(result.run_id)]

    assert not result.success
    ((options, notifier),) = calls
    assert options.day == "20261204Z"
    assert options.force is False
    assert options.refresh is True
    assert not notifier.enabled
    (failure,) = [event for event in result.all_events if event.event_type_value == "STEP_FAILURE"]
    assert failure.step_failure_data.user_failure_data.description == "1 of 2 coin(s) failed on 20261204Z: ETHUSDT"
    metadata = failure.step_failure_data.user_failure_data.metadata
    assert metadata["failed_coins"].value == {"ETHUSDT": "EMPTY_USDT-1h.feather is empty"}
    assert metadata["count_succeeded"].value == 1
    assert metadata["count_failed"].value == 1
    assert any(message.endswith("stub ran") for message in logged)


def test_daily_op_succeeds(engine_env, monkeypatch):
    from engine_assets import jobs
    from engine_assets.resources import EngineResource
    from engine_assets.scheduling import daily

    def stub_run_daily(settings, options, console=None, notifier=None):
        EngineResource().ledger(options.day).update_coin("BTCUSDT", status="skipped", reason="stablecoin")
        return 0

    monkeypatch.setattr(daily, "run_daily", stub_run_daily)
    result = jobs.daily_job.execute_in_process(
        resources={"engine": EngineResource(), "telegram": TelegramResource()},
        tags={"engine/day": "20261204Z", "engine/force": "true"},
    )

    assert result.success
    (output,) = [event for event in result.all_events if event.event_type_value == "STEP_OUTPUT"]
    metadata = output.step_output_data.metadata
    assert metadata["day"].value == "20261204Z"
    assert metadata["count_skipped"].value == 1


# `engine train` end to end: a fake Bot API that is up for one run and down for another.


def _engine_env(root: Path, data_dir: Path, telegram: FakeTelegramServer, max_wait: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGINE_", "TELEGRAM_", "DROPBOX_"))}
    env.update(
        ENGINE_HOME=str(root / "home"),
        DAGSTER_HOME=str(root / "home" / "dagster"),
        ENGINE_DATA_DIR=str(data_dir),
        ENGINE_ENCODER_EPOCHS="1",
        ENGINE_COIN_RETRIES="0",
        ENGINE_NOTIFY_MAX_WAIT_SECONDS=str(max_wait),
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_CHAT_ID=CHAT_ID,
        TELEGRAM_API_URL=telegram.url,
    )
    return env


def _files_containing(root: Path, text: str) -> list[Path]:
    needle = text.encode()
    return [path for path in root.rglob("*") if path.is_file() and needle in path.read_bytes()]


@pytest.fixture(scope="module")
def train_runs(tmp_path_factory, sample_dir):
    """One run with the Bot API up (two coins and an empty file), one with it down (one coin)."""
    root = tmp_path_factory.mktemp("notify")
    data_up = link_samples(sample_dir, root / "data-up", ["BTC", "ETH"])
    (data_up / "EMPTY_USDT-1h.feather").write_bytes(b"")
    data_down = link_samples(sample_dir, root / "data-down", ["BTC"])
    runs = {}
    with FakeTelegramServer(TOKEN, CHAT_ID) as server:
        env = _engine_env(root / "up", data_up, server, max_wait=20)
        result = subprocess.run([ENGINE, "train"], env=env, capture_output=True, text=True, timeout=600, check=False)
        runs["up"] = {"result": result, "home": root / "up" / "home", "server": server}
    with FakeTelegramServer(TOKEN, CHAT_ID) as server:
        server.down = True
        env = _engine_env(root / "down", data_down, server, max_wait=2)
        result = subprocess.run([ENGINE, "train"], env=env, capture_output=True, text=True, timeout=600, check=False)
        runs["down"] = {"result": result, "home": root / "down" / "home", "server": server}
    return runs


def _summary(home: Path) -> dict:
    import json

    (path,) = list((home / "storage" / "summary").glob("*/engine_summary.json"))
    return json.loads(path.read_text())


@pytest.mark.integration
def test_train_messages_in_order(train_runs):
    run = train_runs["up"]
    result = run["result"]
    assert result.returncode == 1, result.stderr[-3000:]
    summary = _summary(run["home"])
    day = summary["date"]

    texts = run["server"].rendered_texts()

    assert texts[0].startswith(f"Engine run {day} started\nCoins: 3\nBTCUSDT, EMPTYUSDT, ETHUSDT\n")
    assert texts[1].startswith("EMPTYUSDT failed after 1 attempt\nReason: ")
    assert "EMPTY_USDT-1h.feather" in texts[1]
    assert "\n".join(texts[2:]) == summary_message(summary)
    assert len(texts) >= 3
    assert summary["counts"]["succeeded"] == 2
    assert "Telegram notifications on" in result.stdout
    assert "not delivered" not in result.stdout


@pytest.mark.integration
def test_train_token_not_written(train_runs):
    for name in ("up", "down"):
        run = train_runs[name]
        assert SECRET not in run["result"].stdout
        assert SECRET not in run["result"].stderr
        # The daemon log, the run and event databases, compute logs and the ledger.
        assert (run["home"] / "logs" / "daemon.log").is_file()
        assert _files_containing(run["home"], SECRET) == []


@pytest.mark.integration
def test_train_server_down_succeeds(train_runs):
    run = train_runs["down"]
    result = run["result"]

    assert result.returncode == 0, result.stderr[-3000:]
    assert _summary(run["home"])["counts"]["succeeded"] == 1
    assert run["server"].messages == []
    assert {request.method for request in run["server"].requests} == {"sendMessage"}
    assert "Telegram: 2 of 2 message(s) not delivered: HTTP 502: response is not Bot API JSON" in result.stdout
