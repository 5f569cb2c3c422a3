"""The Telegram notifier as a Dagster resource, for the daily job and the run failure sensor."""

from __future__ import annotations

import logging

import dagster as dg
from pydantic import Field

from engine_assets.notify.telegram import DEFAULT_API_URL, TelegramNotifier
from engine_assets.settings import EngineSettings

# Maximum wait for one HTTP request to the Bot API, in seconds.
REQUEST_TIMEOUT_SECONDS = 10.0


def build_notifier(
    token: str | None,
    chat_id: str | None,
    api_url: str | None,
    max_wait_seconds: float,
    logger: logging.Logger | None = None,
) -> TelegramNotifier:
    """Build a notifier whose ``send`` waits at most ``max_wait_seconds`` per message."""
    return TelegramNotifier(
        (token or "").strip() or None,
        (chat_id or "").strip() or None,
        (api_url or "").strip() or DEFAULT_API_URL,
        timeout=min(REQUEST_TIMEOUT_SECONDS, max_wait_seconds),
        max_total_wait=max_wait_seconds,
        logger=logger,
    )


class TelegramResource(dg.ConfigurableResource):
    """Settings of the Telegram notifier: the bot token, chat id and API URL, read from environment variables.

    The fields hold variable names, not values, so the launchpad and the UI
    never show the token. The values are read when ``notifier`` is called:
    ``dg.EnvVar`` in a field would fail the run when the variable is unset,
    while an unset token must only turn notifications off.
    """

    bot_token_variable: str = Field(
        default="TELEGRAM_BOT_TOKEN", description="Variable holding the bot token from BotFather."
    )
    chat_id_variable: str = Field(
        default="TELEGRAM_CHAT_ID", description="Variable holding the id of the chat that receives the messages."
    )
    api_url_variable: str = Field(
        default="TELEGRAM_API_URL", description="Variable holding the Bot API base URL (unset: api.telegram.org)."
    )
    max_wait_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Maximum seconds one message may take, retries included (default: ENGINE_NOTIFY_MAX_WAIT_SECONDS).",
    )

    def notifier(self, logger: logging.Logger | None = None) -> TelegramNotifier:
        """Build a notifier from the variables; it is disabled when the token or chat id is unset."""
        max_wait = self.max_wait_seconds or EngineSettings.from_env().notify_max_wait_seconds
        return build_notifier(
            dg.EnvVar(self.bot_token_variable).get_value(),
            dg.EnvVar(self.chat_id_variable).get_value(),
            dg.EnvVar(self.api_url_variable).get_value(),
            max_wait,
            logger,
        )
