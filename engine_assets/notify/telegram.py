"""Telegram notifications through the Bot API's ``sendMessage``.

A notifier never raises on a delivery problem: network errors, 5xx responses,
rate limits that outlast the wait budget and rejected messages are logged and
returned in a ``SendReport``, because a lost notification must not fail a
training run. Messages use the HTML parse mode, whose escaping touches only
``&``, ``<`` and ``>``. The bot token is part of every request URL, so every
text that could contain a URL passes through ``redact`` before it is logged,
stored in a report or shown in a repr.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

DEFAULT_API_URL = "https://api.telegram.org"
# Telegram's limit for sendMessage text, counted after entity parsing.
MESSAGE_LIMIT = 4096
PARSE_MODE = "HTML"
MONOSPACE_OPEN = "<pre>"
MONOSPACE_CLOSE = "</pre>"
REDACTED = "<redacted>"
# Bot tokens look like "123456789:AAH...": the bot id, a colon and a secret
# of about 35 characters. Matching the shape also hides tokens of other bots.
_TOKEN_SHAPE = re.compile(r"\d{5,}:[A-Za-z0-9_-]{30,}")
# Backoff after a network error or a 5xx response, doubled on each retry.
_FIRST_BACKOFF_SECONDS = 1.0


def escape_html(text: str) -> str:
    """Escape ``text`` for Telegram's HTML parse mode.

    Only ``&``, ``<`` and ``>`` are special there. The escaping works one
    character at a time, so ``escape_html(a + b) == escape_html(a) + escape_html(b)``,
    which lets ``split_message`` cut the original text and escape each piece.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def telegram_length(text: str) -> int:
    """Return the length of ``text`` in UTF-16 code units.

    NOTE: the Bot API documents the limit in "characters" and counts entity
    offsets in UTF-16 code units. Counting UTF-16 units is never less than
    counting code points, so a message that fits here fits either way.
    """
    return len(text.encode("utf-16-le")) // 2


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split ``text`` into pieces whose HTML-escaped form fits in ``limit``.

    Pieces break at line boundaries, and the newline at a break is dropped, so
    ``"\\n".join(pieces) == text`` when no line is longer than the limit. A line
    that alone exceeds the limit is cut between characters. Because the
    original text is cut before escaping, no cut falls inside an entity such as
    ``&amp;``. Pieces of whitespace only are dropped, since Telegram rejects
    an empty message.
    """
    if limit < len(escape_html("&")):
        raise ValueError(f"invalid message limit {limit}: expected at least 5 characters")

    pieces: list[str] = []
    current: list[str] = []
    current_length = 0
    for line in text.split("\n"):
        line_length = telegram_length(escape_html(line))
        if line_length > limit:
            if current:
                pieces.append("\n".join(current))
            chunks = _split_line(line, limit)
            pieces.extend(chunks[:-1])
            current = [chunks[-1]]
            current_length = telegram_length(escape_html(chunks[-1]))
            continue

        # Joining a line to a non-empty piece adds one newline character.
        added_length = line_length + 1 if current else line_length
        if current and current_length + added_length > limit:
            pieces.append("\n".join(current))
            current = [line]
            current_length = line_length
        else:
            current.append(line)
            current_length += added_length
    if current:
        pieces.append("\n".join(current))
    return [piece for piece in pieces if piece.strip()]


def _split_line(line: str, limit: int) -> list[str]:
    chunks: list[str] = []
    start = 0
    length = 0
    for index, character in enumerate(line):
        character_length = telegram_length(escape_html(character))
        if length + character_length > limit:
            chunks.append(line[start:index])
            start = index
            length = 0
        length += character_length
    chunks.append(line[start:])
    return chunks


def redact(text: str, token: str | None) -> str:
    """Replace the bot token, in raw and URL-quoted form, and any token-shaped text in ``text``."""
    if token:
        for form in {token, urllib.parse.quote(token, safe=""), urllib.parse.quote(token, safe=":")}:
            text = text.replace(form, REDACTED)
    return _TOKEN_SHAPE.sub(REDACTED, text)


@dataclasses.dataclass
class SendReport:
    """The outcome of one ``send`` call; part numbers start at 1, in sending order."""

    enabled: bool
    parts_total: int = 0
    sent_parts: list[int] = dataclasses.field(default_factory=list)
    # Parts delivered as plain text after Telegram rejected their HTML.
    plain_text_parts: list[int] = dataclasses.field(default_factory=list)
    failed_parts: list[int] = dataclasses.field(default_factory=list)
    # Why the first failed part failed, with the token redacted.
    reason: str | None = None
    attempts: int = 0
    # Time spent sleeping: pacing, rate-limit waits and retry backoff.
    waited_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every part was delivered (true for a disabled notifier, which sends nothing)."""
        return not self.failed_parts


@dataclasses.dataclass
class _ApiResult:
    ok: bool
    status: int | None = None
    result: Any = None
    description: str = ""
    retry_after: float | None = None
    # Whether the same request may succeed later: network errors and 5xx responses.
    transient: bool = False

    @property
    def parse_error(self) -> bool:
        return self.status == 400 and "can't parse entities" in self.description.lower()

    @property
    def reason(self) -> str:
        if self.status is None:
            return self.description
        return f"HTTP {self.status}: {self.description or 'no description'}"


class TelegramNotifier:
    """A sender of text messages to one Telegram chat, disabled without a token or chat id.

    ``timeout`` limits each HTTP request in seconds, ``max_total_wait`` limits
    one ``send`` call in seconds (pacing, rate-limit waits, retries and
    requests together), and ``min_interval`` is the minimum gap in seconds
    between two requests to ``sendMessage`` from this notifier.
    """

    def __init__(
        self,
        token: str | None,
        chat_id: str | None,
        api_url: str = DEFAULT_API_URL,
        *,
        timeout: float = 10,
        max_total_wait: float = 60,
        min_interval: float = 1.0,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self._token = token.strip() if token else None
        self._chat_id = str(chat_id).strip() if chat_id is not None else None
        self._api_url = (api_url or DEFAULT_API_URL).rstrip("/")
        self._timeout = timeout
        self._max_total_wait = max_total_wait
        self._min_interval = min_interval
        self._logger = logger or logging.getLogger(__name__)
        self._lock = threading.Lock()
        # NOTE: pacing holds only within this notifier. Coin runs in separate
        # processes pace their messages separately, so together they can exceed
        # Telegram's rate of about one message per second per chat. The 429
        # handling then slows them down.
        self._last_request_at: float | None = None
        self._off_logged = False

    @property
    def enabled(self) -> bool:
        return bool(self._token) and bool(self._chat_id)

    def __repr__(self) -> str:
        token = REDACTED if self._token else None
        return f"TelegramNotifier(api_url={self._api_url!r}, token={token!r}, enabled={self.enabled})"

    def redact(self, text: str) -> str:
        """Return ``text`` with this notifier's bot token hidden."""
        return redact(text, self._token)

    def check(self) -> str | None:
        """Call ``getMe`` once and return the bot's username, or None when disabled or unreachable."""
        if not self.enabled:
            self._log_off()
            return None
        outcome = self._call("getMe", {}, self._timeout)
        if outcome.ok and isinstance(outcome.result, dict) and outcome.result.get("username"):
            username = str(outcome.result["username"])
            self._logger.info("Telegram notifications go to bot @%s at %s", username, self._api_url)
            return username
        reason = outcome.reason if not outcome.ok else "getMe returned no username"
        self._logger.warning(
            "Telegram check failed at %s: %s. Check TELEGRAM_BOT_TOKEN and TELEGRAM_API_URL; "
            "training continues without a working notifier",
            self._api_url,
            reason,
        )
        return None

    def send(self, text: str, *, monospace: bool = False) -> SendReport:
        """Send ``text`` as one or more messages, in order, and report what arrived.

        ``text`` is plain text: it is escaped here. With ``monospace`` every
        part is wrapped in ``<pre>`` so that table columns line up. This method
        never raises on a delivery problem. The report and the log give the reason.
        """
        if not self.enabled:
            self._log_off()
            return SendReport(enabled=False)

        budget = MESSAGE_LIMIT
        if monospace:
            budget -= len(MONOSPACE_OPEN) + len(MONOSPACE_CLOSE)
        pieces = split_message(text, budget)
        report = SendReport(enabled=True, parts_total=len(pieces))
        if not pieces:
            self._logger.warning("Telegram message not sent: the text is empty")
            return report

        with self._lock:
            started_at = time.monotonic()
            deadline = started_at + self._max_total_wait
            for number, piece in enumerate(pieces, start=1):
                failure = self._send_part(number, piece, monospace, deadline, report)
                if failure is None:
                    continue
                # Later parts are held back so that the chat never shows them out of order.
                report.failed_parts = list(range(number, len(pieces) + 1))
                report.reason = self.redact(failure)
                self._logger.warning(
                    "Telegram message part %d of %d not delivered, %d part(s) not sent: %s",
                    number,
                    len(pieces),
                    len(pieces) - number,
                    report.reason,
                )
                break
        if report.ok:
            self._logger.debug("Telegram message sent in %d part(s)", len(pieces))
        return report

    def _send_part(
        self, number: int, piece: str, monospace: bool, deadline: float, report: SendReport
    ) -> str | None:
        """Deliver one part, retrying within the deadline; return None on success or the failure reason."""
        body = escape_html(piece)
        if monospace:
            body = MONOSPACE_OPEN + body + MONOSPACE_CLOSE
        payload: dict[str, Any] = {"chat_id": self._chat_id, "text": body, "parse_mode": PARSE_MODE}
        plain_text = False
        backoff = _FIRST_BACKOFF_SECONDS
        while True:
            if self._min_interval > 0 and self._last_request_at is not None:
                pause = self._last_request_at + self._min_interval - time.monotonic()
                if pause > 0:
                    if time.monotonic() + pause > deadline:
                        return self._over_budget("pacing between messages", pause)
                    self._sleep(pause, report)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"gave up: max_total_wait={self._max_total_wait:g} s for this message is used up"

            outcome = self._call("sendMessage", payload, min(self._timeout, remaining))
            self._last_request_at = time.monotonic()
            report.attempts += 1
            if outcome.ok:
                report.sent_parts.append(number)
                if plain_text:
                    report.plain_text_parts.append(number)
                return None

            if outcome.parse_error and not plain_text:
                # Resend the original text without a parse mode: the message
                # loses its formatting but still arrives.
                self._logger.warning(
                    "Telegram rejected the HTML of message part %d (%s); resending it as plain text",
                    number,
                    self.redact(outcome.description),
                )
                payload = {"chat_id": self._chat_id, "text": piece}
                plain_text = True
                continue

            if outcome.status == 429:
                wait = outcome.retry_after if outcome.retry_after is not None else backoff
            elif outcome.transient:
                wait = backoff
                backoff *= 2
            else:
                return outcome.reason
            if time.monotonic() + wait > deadline:
                return f"{outcome.reason}; {self._over_budget('a retry', wait)}"
            self._logger.info(
                "Telegram request for message part %d failed (%s); retrying in %.1f s",
                number,
                self.redact(outcome.reason),
                wait,
            )
            self._sleep(wait, report)

    def _log_off(self) -> None:
        if self._off_logged:
            return
        self._off_logged = True
        missing = [
            name
            for name, value in (("TELEGRAM_BOT_TOKEN", self._token), ("TELEGRAM_CHAT_ID", self._chat_id))
            if not value
        ]
        self._logger.info("Telegram notifications are off: %s not set", " and ".join(missing))

    def _over_budget(self, what: str, wait: float) -> str:
        return (
            f"gave up before {what}: waiting {wait:.1f} s more would exceed "
            f"max_total_wait={self._max_total_wait:g} s for this message"
        )

    @staticmethod
    def _sleep(seconds: float, report: SendReport) -> None:
        time.sleep(seconds)
        report.waited_seconds += seconds

    def _call(self, method: str, payload: dict[str, Any], timeout: float) -> _ApiResult:
        """POST one Bot API request and return its outcome, failures included, as an ``_ApiResult``."""
        quoted_token = urllib.parse.quote(self._token or "", safe=":")
        try:
            request = urllib.request.Request(
                f"{self._api_url}/bot{quoted_token}/{method}",
                data=json.dumps(payload).encode("utf-8"),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = response.status
                raw_body = response.read()
        except urllib.error.HTTPError as error:
            status = error.code
            try:
                raw_body = error.read()
            except (OSError, http.client.HTTPException):
                raw_body = b""
            finally:
                error.close()
        except ValueError as error:
            # urllib names the whole URL, token included, in "unknown url type"
            # errors for a URL without a scheme, so the text is redacted.
            return _ApiResult(ok=False, description=self.redact(f"invalid TELEGRAM_API_URL: {error}"))
        except urllib.error.URLError as error:
            # A reason that is an OSError is a network failure worth retrying;
            # a text reason ("unknown url type: htp") is a configuration error.
            network = isinstance(error.reason, OSError)
            prefix = "request failed" if network else "invalid TELEGRAM_API_URL"
            description = self.redact(f"{prefix}: {error.reason}")
            return _ApiResult(ok=False, description=description, transient=network)
        except (OSError, http.client.HTTPException) as error:
            return _ApiResult(
                ok=False,
                description=self.redact(f"request failed: {type(error).__name__}: {error}"),
                transient=True,
            )
        return _parse_response(status, raw_body, self.redact)


def _parse_response(status: int, raw_body: bytes, redact_text) -> _ApiResult:
    try:
        body = json.loads(raw_body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        body = None
    if not isinstance(body, dict):
        # A proxy or load balancer in front of the Bot API may respond with HTML.
        return _ApiResult(
            ok=False, status=status, description="response is not Bot API JSON", transient=status >= 500
        )

    description = redact_text(str(body.get("description") or ""))
    parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
    retry_after = parameters.get("retry_after")
    return _ApiResult(
        ok=status == 200 and body.get("ok") is True,
        status=status,
        result=body.get("result"),
        description=description,
        retry_after=float(retry_after) if isinstance(retry_after, (int, float)) else None,
        transient=status >= 500,
    )


def notifier_from_env(environ: Mapping[str, str] | None = None, **options: Any) -> TelegramNotifier:
    """Build a notifier from ``TELEGRAM_BOT_TOKEN``, ``TELEGRAM_CHAT_ID`` and ``TELEGRAM_API_URL``.

    ``environ`` defaults to the process environment. ``options`` go to the
    ``TelegramNotifier`` constructor (``timeout``, ``logger`` and so on).
    Unset or blank variables leave the notifier disabled.
    """
    env = os.environ if environ is None else environ
    return TelegramNotifier(
        env.get("TELEGRAM_BOT_TOKEN", "").strip() or None,
        env.get("TELEGRAM_CHAT_ID", "").strip() or None,
        env.get("TELEGRAM_API_URL", "").strip() or DEFAULT_API_URL,
        **options,
    )
