"""Tests of the Telegram notifier and message texts against a local fake Bot API server."""

from __future__ import annotations

import json
import logging
import random
import urllib.error
import urllib.request

import pytest

from engine_assets.notify.messages import coin_failed_message, run_started_message, summary_message
from engine_assets.notify.telegram import (
    MESSAGE_LIMIT,
    REDACTED,
    TelegramNotifier,
    escape_html,
    notifier_from_env,
    redact,
    split_message,
    telegram_length,
)

try:
    from engine_assets_tests.telegram_server import FakeTelegramServer, render_html, utf16_length
except ModuleNotFoundError:
    # Without an __init__.py in this folder, pytest puts the folder itself on sys.path.
    from telegram_server import FakeTelegramServer, render_html, utf16_length

TOKEN = "123456789:AAHfakeTokenForTests_only-0123456789ab"
CHAT_ID = "424242"
SPECIAL = "_ * [ ] ( ) ~ > # + - = | { } . ! < > &"


@pytest.fixture
def telegram():
    with FakeTelegramServer(TOKEN, CHAT_ID) as server:
        yield server


def make_notifier(server: FakeTelegramServer, **options) -> TelegramNotifier:
    settings = {"timeout": 5, "max_total_wait": 10, "min_interval": 0}
    settings.update(options)
    return TelegramNotifier(TOKEN, CHAT_ID, server.url, **settings)


def make_summary(coin_count: int, seed: int = 7) -> dict:
    rng = random.Random(seed)
    coins = []
    for index in range(coin_count):
        status = rng.choice(["succeeded", "succeeded", "skipped", "failed", "timed_out"])
        coin = {
            "symbol": f"C{index:03d}USDT",
            "status": status,
            "reason": None,
            "head": None,
            "sharpe_net": None,
            "total_return_net": None,
            "buy_and_hold_return": None,
            "buy_and_hold_sharpe": None,
            "champion_changed": False,
            "attempts": 1,
        }
        if status == "succeeded":
            coin.update(
                head=rng.choice(["xgboost", "lightgbm"]),
                sharpe_net=rng.uniform(-2, 3),
                total_return_net=rng.uniform(-0.4, 0.6),
                buy_and_hold_return=rng.uniform(-0.4, 0.6),
                buy_and_hold_sharpe=rng.uniform(-1, 2),
                champion_changed=rng.random() < 0.4,
            )
        elif status == "skipped":
            coin["reason"] = f"too little history: {rng.randint(10, 900)} rows < 2000 required & no repair"
        else:
            coin["attempts"] = 3
            coin["reason"] = f"ValueError: feature window <{rng.randint(1, 99)}> has NaN & inf values [x > y]"
        coins.append(coin)
    counts = {status: sum(1 for coin in coins if coin["status"] == status) for status in
              ("succeeded", "skipped", "failed", "timed_out")}
    return {
        "date": "20261204Z",
        "started_at": "2026-12-04T00:05:00+00:00",
        "finished_at": "2026-12-04T01:07:13+00:00",
        "duration_seconds": 3733.0,
        "mode": "hybrid",
        "concurrency": 2,
        "cutoff": "2026-12-03T00:00:00+00:00",
        "counts": counts,
        "coins": coins,
    }


# Escaping, length and splitting.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("plain text", "plain text"),
        ("a < b", "a &lt; b"),
        ("a > b", "a &gt; b"),
        ("R&D", "R&amp;D"),
        ("&amp;", "&amp;amp;"),
        ("<b>bold</b>", "&lt;b&gt;bold&lt;/b&gt;"),
        ("_*[]()~`#+-=|{}.!\"'", "_*[]()~`#+-=|{}.!\"'"),
        ("BTC 📈 +5%", "BTC 📈 +5%"),
    ],
)
def test_escape_html_cases(text, expected):
    assert escape_html(text) == expected


def test_escape_html_renders_back():
    rng = random.Random(3)
    alphabet = "ab <>&;#x1\n" + SPECIAL
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert render_html(escape_html(text)) == text


def test_escape_html_per_character():
    rng = random.Random(4)
    for _ in range(200):
        left = "".join(rng.choice("a&<>;") for _ in range(rng.randint(0, 10)))
        right = "".join(rng.choice("a&<>;") for _ in range(rng.randint(0, 10)))
        assert escape_html(left + right) == escape_html(left) + escape_html(right)


def test_telegram_length_utf16():
    assert telegram_length("abc") == 3
    assert telegram_length("é") == 1
    assert telegram_length("📈") == 2
    assert telegram_length("") == 0


def test_split_short_text_single_piece():
    assert split_message("one\ntwo") == ["one\ntwo"]


def test_split_empty_text_no_pieces():
    assert split_message("") == []
    assert split_message("\n \n") == []


def test_split_line_boundaries():
    lines = [f"line {index} & <{index}>" for index in range(500)]
    text = "\n".join(lines)
    pieces = split_message(text, 200)

    assert len(pieces) > 1
    assert "\n".join(pieces) == text
    for piece in pieces:
        assert telegram_length(escape_html(piece)) <= 200


def test_split_measures_after_escaping():
    # 1,100 characters raw, 4,400 once each "<" becomes "&lt;".
    text = "<" * 1100
    pieces = split_message(text)

    assert len(pieces) == 2
    assert "".join(pieces) == text
    assert telegram_length(escape_html(pieces[0])) == MESSAGE_LIMIT


def test_split_long_line_keeps_entities_whole():
    rng = random.Random(5)
    line = "".join(rng.choice("ab&<>") for _ in range(20_000))
    pieces = split_message(line)

    assert len(pieces) > 1
    assert "".join(pieces) == line
    for piece in pieces:
        escaped = escape_html(piece)
        assert telegram_length(escaped) <= MESSAGE_LIMIT
        assert render_html(escaped) == piece


def test_split_small_limit_cuts_between_entities():
    assert split_message("&&&", 7) == ["&", "&", "&"]
    assert split_message("a&b", 6) == ["a&", "b"]


def test_split_counts_emoji_as_two():
    text = "📈" * 3000
    pieces = split_message(text)

    assert [telegram_length(piece) for piece in pieces] == [4096, 1904]
    assert "".join(pieces) == text


def test_split_limit_too_small():
    with pytest.raises(ValueError, match="invalid message limit 4"):
        split_message("a", 4)


def test_redact_cases():
    assert redact(f"POST /bot{TOKEN}/sendMessage", TOKEN) == f"POST /bot{REDACTED}/sendMessage"
    quoted_url = "/bot123456789%3AAAHfakeTokenForTests_only-0123456789ab/getMe"
    assert redact(quoted_url, TOKEN) == f"/bot{REDACTED}/getMe"
    other = "987654321:AAHanotherBotTokenThatIsLongEnough_xyz"
    assert redact(f"token {other}", TOKEN) == f"token {REDACTED}"
    assert redact("secret-value here", "secret-value") == f"{REDACTED} here"
    assert redact("2026-12-04T00:05:00", None) == "2026-12-04T00:05:00"


# Delivery through the fake server.


def test_send_summary_300_coins(telegram):
    text = summary_message(make_summary(300))
    assert telegram_length(text) > 2 * MESSAGE_LIMIT

    report = make_notifier(telegram).send(text, monospace=True)

    assert report.ok
    assert report.failed_parts == []
    assert report.parts_total >= 3
    assert report.sent_parts == list(range(1, report.parts_total + 1))
    assert [message.message_id for message in telegram.messages] == report.sent_parts
    for message in telegram.messages:
        assert message.parse_mode == "HTML"
        assert message.text.startswith("<pre>")
        assert utf16_length(message.text) <= MESSAGE_LIMIT
        assert utf16_length(message.rendered) <= MESSAGE_LIMIT
    assert "\n".join(telegram.rendered_texts()) == text


def test_send_special_characters(telegram):
    text = f"{SPECIAL}\n<b>not bold</b> &amp; not an entity\nBTCUSDT *net* _+5%_ [x](y)"

    report = make_notifier(telegram).send(text)

    assert report.ok
    assert report.plain_text_parts == []
    assert len(telegram.messages) == 1
    assert telegram.messages[0].parse_mode == "HTML"
    assert telegram.messages[0].rendered == text


def test_send_waits_out_rate_limits(telegram):
    telegram.fail_next("rate_limit", 2, retry_after=1)

    report = make_notifier(telegram).send("after two 429 answers")

    assert report.ok
    assert report.attempts == 3
    assert report.waited_seconds >= 2
    times = telegram.send_times()
    assert len(times) == 3
    assert times[1] - times[0] >= 1
    assert times[2] - times[1] >= 1
    assert telegram.rendered_texts() == ["after two 429 answers"]


def test_send_rate_limit_beyond_bound(telegram):
    telegram.fail_next("rate_limit", retry_after=30)

    report = make_notifier(telegram, max_total_wait=5).send("one\ntwo")

    assert not report.ok
    assert report.failed_parts == [1]
    assert report.waited_seconds == 0
    assert "HTTP 429" in report.reason
    assert "max_total_wait=5 s" in report.reason
    assert telegram.messages == []


def test_send_parse_error_plain_text(telegram):
    telegram.fail_next("parse_error")
    text = "coin <BTCUSDT> & friends"

    report = make_notifier(telegram).send(text)

    assert report.ok
    assert report.sent_parts == [1]
    assert report.plain_text_parts == [1]
    assert [message.parse_mode for message in telegram.messages] == [None]
    assert telegram.messages[0].text == text
    assert telegram.messages[0].rendered == text


def test_send_server_refused(telegram):
    url = telegram.url
    telegram.stop()
    notifier = TelegramNotifier(TOKEN, CHAT_ID, url, timeout=2, max_total_wait=1.5, min_interval=0)

    report = notifier.send("one\n" + "x" * 5000)

    assert not report.ok
    assert report.parts_total == 3
    assert report.sent_parts == []
    assert report.failed_parts == [1, 2, 3]
    assert report.attempts == 2
    assert report.waited_seconds <= 1.5
    assert "Connection refused" in report.reason
    assert "max_total_wait=1.5 s" in report.reason


def test_send_server_down_502(telegram):
    telegram.down = True

    report = make_notifier(telegram, max_total_wait=1.5).send("hello")

    assert not report.ok
    assert report.failed_parts == [1]
    assert report.attempts == 2
    assert report.reason.startswith("HTTP 502: response is not Bot API JSON")
    assert telegram.messages == []


def test_send_disconnect_retried(telegram):
    telegram.fail_next("disconnect")

    report = make_notifier(telegram).send("after a dropped connection")

    assert report.ok
    assert report.attempts == 2
    assert telegram.rendered_texts() == ["after a dropped connection"]


def test_send_permanent_error_stops(telegram):
    notifier = TelegramNotifier(TOKEN, "999", telegram.url, timeout=5, max_total_wait=10, min_interval=0)

    report = notifier.send("a" * 5000)

    assert not report.ok
    assert report.attempts == 1
    assert report.failed_parts == [1, 2]
    assert report.reason == "HTTP 400: Bad Request: chat not found"


def test_send_paces_messages(telegram):
    notifier = make_notifier(telegram, min_interval=0.3)

    for index in range(3):
        assert notifier.send(f"message {index}").ok

    times = telegram.send_times()
    assert len(times) == 3
    assert times[1] - times[0] >= 0.3
    assert times[2] - times[1] >= 0.3


def test_token_never_logged(telegram, caplog):
    caplog.set_level(logging.DEBUG)
    reports = []
    notifier = make_notifier(telegram, max_total_wait=1.5)
    assert notifier.check() == "engine_test_bot"
    reports.append(notifier.send(f"ok {SPECIAL}"))
    telegram.fail_next("parse_error")
    reports.append(notifier.send("parse error"))
    telegram.fail_next("rate_limit", retry_after=1)
    reports.append(notifier.send("rate limited"))
    telegram.fail_next("server_error", 5)
    reports.append(notifier.send("server error"))

    wrong_token = TelegramNotifier("555555555:AAHwrongTokenForTests_only-9876543210", CHAT_ID, telegram.url)
    assert wrong_token.check() is None
    reports.append(wrong_token.send("unauthorized"))

    # urllib puts the whole URL, token included, into the error for a URL without a scheme.
    bad_url = TelegramNotifier(TOKEN, CHAT_ID, "127.0.0.1", min_interval=0)
    assert bad_url.check() is None
    bad_url_report = bad_url.send("bad url")
    reports.append(bad_url_report)

    telegram.stop()
    reports.append(notifier.send("server stopped"))

    assert [report.ok for report in reports] == [True, True, True, False, False, False, False]
    assert bad_url_report.attempts == 1
    assert "unknown url type" in bad_url_report.reason
    assert REDACTED in bad_url_report.reason
    secret = TOKEN.split(":", 1)[1]
    for text in [caplog.text, *map(repr, reports), repr(notifier), repr(bad_url)]:
        assert secret not in text
    assert "unknown url type" in caplog.text


def test_disabled_logs_once(telegram, caplog):
    caplog.set_level(logging.INFO)
    notifier = TelegramNotifier(None, CHAT_ID, telegram.url)

    first = notifier.send("one")
    second = notifier.send("two")

    assert not notifier.enabled
    assert first.enabled is False
    assert first.ok
    assert second.parts_total == 0
    assert notifier.check() is None
    messages = [record.getMessage() for record in caplog.records]
    off_lines = [message for message in messages if "notifications are off" in message]
    assert off_lines == ["Telegram notifications are off: TELEGRAM_BOT_TOKEN not set"]
    assert telegram.requests == []


def test_check_returns_username(telegram):
    assert make_notifier(telegram).check() == "engine_test_bot"
    assert [request.method for request in telegram.requests] == ["getMe"]


def test_notifier_from_env(telegram):
    env = {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_CHAT_ID": CHAT_ID, "TELEGRAM_API_URL": telegram.url}

    notifier = notifier_from_env(env, min_interval=0)

    assert notifier.enabled
    assert notifier.send("from env").ok
    assert telegram.rendered_texts() == ["from env"]
    assert not notifier_from_env({}).enabled
    assert not notifier_from_env({"TELEGRAM_BOT_TOKEN": " ", "TELEGRAM_CHAT_ID": CHAT_ID}).enabled
    assert not notifier_from_env({"TELEGRAM_BOT_TOKEN": TOKEN}).enabled


# The fake server itself, so that passing tests mean something.


def post_to_fake(server: FakeTelegramServer, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{server.url}/bot{TOKEN}/sendMessage",
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("text", "parse_mode", "description"),
    [
        ("a" * 4097, None, "Bad Request: message is too long"),
        ("&lt;" * 1100, "HTML", "Bad Request: message is too long"),
        ("R&D", "HTML", "Bad Request: can't parse entities: Character \"&\" at byte offset 1"),
        ("<blink>x</blink>", "HTML", "Bad Request: can't parse entities: Unsupported start tag \"blink\""),
        ("<b>x</i>", "HTML", "Bad Request: can't parse entities: Unmatched end tag"),
        ("<b>x", "HTML", "Bad Request: can't parse entities: Can't find end tag"),
        ("  ", None, "Bad Request: message text is empty"),
    ],
    ids=[
        "raw too long",
        "escaped too long",
        "bare ampersand",
        "unsupported tag",
        "unmatched tag",
        "unclosed tag",
        "blank",
    ],
)
def test_fake_rejects_messages(telegram, text, parse_mode, description):
    payload = {"chat_id": CHAT_ID, "text": text}
    if parse_mode:
        payload["parse_mode"] = parse_mode

    status, body = post_to_fake(telegram, payload)

    assert status == 400
    assert body["ok"] is False
    assert body["error_code"] == 400
    assert body["description"].startswith(description)
    assert telegram.messages == []


def test_fake_counts_rendered_length(telegram):
    telegram.raw_limit = 10_000

    fits_status, _ = post_to_fake(
        telegram, {"chat_id": CHAT_ID, "text": f"<b>{'a' * 4096}</b>", "parse_mode": "HTML"}
    )
    long_status, long_body = post_to_fake(
        telegram, {"chat_id": CHAT_ID, "text": f"<b>{'📈' * 2049}</b>", "parse_mode": "HTML"}
    )

    assert fits_status == 200
    assert long_status == 400
    assert long_body["description"] == "Bad Request: message is too long"
    assert [utf16_length(message.rendered) for message in telegram.messages] == [4096]


def test_fake_renders_html(telegram):
    text = "<pre>a &lt;&amp;&gt; &quot;&#33;&#x21;</pre>"
    status, body = post_to_fake(telegram, {"chat_id": CHAT_ID, "text": text, "parse_mode": "HTML"})

    assert status == 200
    assert body["ok"] is True
    assert body["result"]["text"] == 'a <&> "!!'


# Message texts.


def test_run_started_message():
    symbols = [f"C{index}USDT" for index in range(40)]

    text = run_started_message("20261204Z", symbols, "hybrid", 2)

    assert text.startswith("Engine run 20261204Z started\nCoins: 40\n")
    assert "C0USDT, C1USDT" in text
    assert "C29USDT" in text
    assert "C30USDT" not in text
    assert "\nand 10 more\n" in text
    assert text.endswith("Mode: hybrid, up to 2 coin(s) at a time")


def test_run_started_no_symbols():
    text = run_started_message("20261204Z", [], "parallel", 4)

    assert text.splitlines() == [
        "Engine run 20261204Z started",
        "Coins: 0",
        "Mode: parallel, up to 4 coin(s) at a time",
    ]


def test_coin_failed_message():
    text = coin_failed_message("BTCUSDT", "timed_out", 3, "step exceeded\n2700 s")

    assert text == "BTCUSDT timed out after 3 attempts\nReason: step exceeded 2700 s"
    no_reason = coin_failed_message("ETHUSDT", "failed", 1, None)
    assert no_reason == "ETHUSDT failed after 1 attempt\nReason: no reason given"


def test_coin_failed_invalid_status():
    with pytest.raises(ValueError, match="invalid status 'succeeded' for coin BTCUSDT"):
        coin_failed_message("BTCUSDT", "succeeded", 1, None)


def test_summary_message_content():
    summary = make_summary(30)
    coins = summary["coins"]
    scored = [coin for coin in coins if coin["sharpe_net"] is not None]
    ranked = sorted(scored, key=lambda coin: coin["sharpe_net"], reverse=True)

    text = summary_message(summary)
    lines = text.splitlines()

    assert lines[0] == "Engine run 20261204Z: 30 coins"
    assert lines[1] == "Duration 1h 02m 13s, hybrid, 2 at a time"
    assert lines[2] == "Cutoff 2026-12-03 00:00 UTC"
    assert f"succeeded  {summary['counts']['succeeded']:>5}" in lines
    assert f"timed out  {summary['counts']['timed_out']:>5}" in lines
    changed = [coin["symbol"] for coin in coins if coin["champion_changed"]]
    assert f"Champions changed: {len(changed)}" in lines
    for symbol in changed:
        assert symbol in text
    best_row = lines[lines.index("Best 5 after costs, by Sharpe") + 2]
    assert best_row.startswith(ranked[0]["symbol"])
    assert f"{ranked[0]['total_return_net'] * 100:+.1f}%" in best_row
    assert f"{ranked[0]['buy_and_hold_sharpe']:.2f}" in best_row
    worst_row = lines[lines.index("Worst 5 after costs") + 6]
    assert worst_row.startswith(ranked[-1]["symbol"])
    for coin in coins:
        if coin["status"] == "skipped":
            assert f"- {coin['symbol']}: {coin['reason']}" in lines
        if coin["status"] == "timed_out":
            assert f"- {coin['symbol']} timed out, 3 attempts: {coin['reason']}" in lines
    assert max(len(line) for line in lines if not line.startswith("- ")) <= 44


def test_summary_message_missing_fields():
    text = summary_message({"coins": [{"symbol": "BTCUSDT", "status": "succeeded", "sharpe_net": 1.5}]})

    assert text.splitlines()[:2] == ["Engine run n/a: 1 coins", "Duration n/a, n/a"]
    assert "succeeded      1" in text
    assert "Champions changed: none" in text
    assert "BTCUSDT n/a      n/a  1.50     n/a   n/a" in text
