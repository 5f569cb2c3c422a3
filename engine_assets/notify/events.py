"""The daily run's Telegram notifications: run started, coin failed, summary and failed jobs.

Messages of a run go through a ``NotificationQueue``: one background thread
sends them in order, so a slow or unreachable Bot API never holds up
training. Only ``close`` waits, for at most the notifier's bound
(``ENGINE_NOTIFY_MAX_WAIT_SECONDS``). Every helper here logs its own errors
and never raises, because a lost notification must not fail a run.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from engine_assets.notify.messages import (
    FAILED_STATUSES,
    coin_failed_message,
    run_started_message,
    summary_message,
)
from engine_assets.notify.resources import build_notifier
from engine_assets.notify.telegram import SendReport, TelegramNotifier

logger = logging.getLogger(__name__)

NOTIFICATIONS_OFF = "Telegram notifications off: TELEGRAM_BOT_TOKEN or TELEGRAM_CHAT_ID not set"
_STOP = object()
# Queues not closed yet. The process drains them at exit, so a run that
# raised halfway still sends what it had queued, within the same bound.
_OPEN_QUEUES: weakref.WeakSet[NotificationQueue] = weakref.WeakSet()


class NotificationQueue:
    """Messages of one run, sent in order by a background thread through ``notifier``.

    ``console`` (an ``engine_assets.console.Console``) receives one line when
    notifications are off and one when messages were not delivered.
    """

    def __init__(self, notifier: TelegramNotifier, max_wait_seconds: float, console: Any = None) -> None:
        self.notifier = notifier
        self.max_wait_seconds = max_wait_seconds
        self.reports: list[SendReport] = []
        self._console = console
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._posted = 0
        self._closed = False
        self._abandoned = False

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled

    def post(self, text: str, *, monospace: bool = False) -> None:
        """Queue ``text`` for sending; does nothing when notifications are off or the queue is closed."""
        if not self.enabled or self._closed:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._send_all, name="telegram-notifications", daemon=True)
            self._thread.start()
            _OPEN_QUEUES.add(self)
        self._posted += 1
        self._queue.put((text, monospace))

    def close(self) -> list[SendReport]:
        """Wait at most ``max_wait_seconds`` for the queued messages, then return the reports of those sent.

        Messages still queued after the wait are dropped, with a log line and a console line.
        """
        if self._closed:
            return self.reports
        self._closed = True
        _OPEN_QUEUES.discard(self)
        if self._thread is None:
            return self.reports
        self._queue.put(_STOP)
        self._thread.join(timeout=self.max_wait_seconds)
        # Messages still queued now are dropped; the thread stops after the one it is sending.
        self._abandoned = True
        finished = list(self.reports)
        unsent = self._posted - len(finished)
        failed = [report for report in finished if not report.ok]
        if unsent or failed:
            details = []
            if failed:
                details.append(failed[0].reason or "no reason given")
            if unsent:
                details.append(f"{unsent} still queued after waiting {self.max_wait_seconds:g} s")
            text = (
                f"Telegram: {len(failed) + unsent} of {self._posted} message(s) not delivered: "
                + "; ".join(details)
            )
            logger.warning("%s", text)
            _console_line(self._console, text)
        return finished

    def _send_all(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP or self._abandoned:
                return
            text, monospace = item
            try:
                report = self.notifier.send(text, monospace=monospace)
            except Exception as error:  # the notifier should not raise; this keeps the thread alive if it does
                reason = self.notifier.redact(f"{type(error).__name__}: {error}")
                logger.warning("Telegram message not sent: %s", reason)
                report = SendReport(enabled=True, failed_parts=[1], reason=reason)
            self.reports.append(report)


def _drain_open_queues() -> None:
    for notifications in list(_OPEN_QUEUES):
        notifications.close()


atexit.register(_drain_open_queues)


def start_notifications(settings, console: Any = None, notifier: TelegramNotifier | None = None) -> NotificationQueue:
    """Return the run's queue, with ``notifier`` or one built from the ``TELEGRAM_*`` variables.

    When the token or chat id is missing, this writes one line saying so
    (to ``console``, else to the log) and every later message is dropped.
    """
    max_wait = float(settings.notify_max_wait_seconds)
    if notifier is None:
        notifier = build_notifier(
            os.environ.get("TELEGRAM_BOT_TOKEN"),
            os.environ.get("TELEGRAM_CHAT_ID"),
            os.environ.get("TELEGRAM_API_URL"),
            max_wait,
        )
    if notifier.enabled:
        _console_line(console, "Telegram notifications on")
    elif console is None:
        logger.info(NOTIFICATIONS_OFF)
    else:
        _console_line(console, NOTIFICATIONS_OFF)
    return NotificationQueue(notifier, max_wait, console)


def _console_line(console: Any, text: str) -> None:
    if console is None:
        return
    try:
        console.line(text)
    except Exception as error:  # a closed console stream must not fail the run
        logger.warning("console line not written: %s", error)


def notify_run_started(notifications: NotificationQueue | None, day: str, symbols: Sequence[str], plan) -> None:
    """Queue the start message: the day, the coins to train, the mode and the concurrency limit."""
    if notifications is None:
        return
    try:
        notifications.post(run_started_message(day, list(symbols), plan.mode, plan.limit))
    except Exception as error:
        logger.warning("run start notification not queued: %s", error)


def notify_coin_finished(notifications: NotificationQueue | None, symbol: str, entry: Mapping[str, Any]) -> None:
    """Queue a message when a coin ended failed or timed out, with its attempts and reason; others send nothing."""
    if notifications is None:
        return
    status = entry.get("status")
    if status not in FAILED_STATUSES:
        return
    try:
        attempts = entry.get("attempts")
        reason = entry.get("reason") or entry.get("error")
        notifications.post(coin_failed_message(symbol, status, attempts if isinstance(attempts, int) else 0, reason))
    except Exception as error:
        logger.warning("%s: failure notification not queued: %s", symbol, error)


def notify_run_finished(
    notifications: NotificationQueue | None, day: str, summary: Mapping[str, Any] | None
) -> list[SendReport]:
    """Queue the day's summary (or a note that none was published), then close the queue.

    Returns the reports of the messages sent, after waiting at most the notifier's bound.
    """
    if notifications is None:
        return []
    try:
        if summary:
            notifications.post(summary_message(summary), monospace=True)
        else:
            notifications.post(
                f"Engine run {day} finished without a summary: the report run failed. "
                "See the publish_job run in the Dagster UI."
            )
    except Exception as error:
        logger.warning("summary notification not queued: %s", error)
    return notifications.close()


def job_failed_message(job_name: str, run_id: str, reason: str | None) -> str:
    """Describe a failed Dagster run for Telegram: the job, the run id and the error."""
    reason_text = " ".join(str(reason or "").split()) or "no error message recorded"
    if len(reason_text) > 1000:
        reason_text = reason_text[:999] + "…"
    return f"Engine job {job_name} failed\nRun: {run_id}\nError: {reason_text}"
