"""A local fake of the Telegram Bot API (``getMe`` and ``sendMessage``) for tests.

The server listens on 127.0.0.1 on a free port, responds with the Bot API's
JSON shapes, renders HTML messages the way Telegram does, checks the length
limits and records every request. Tests queue faults (rate limits, parse
errors, 5xx responses, dropped connections) or mark the server down.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MESSAGE_LIMIT = 4096
# Tags of Telegram's HTML parse mode, per the Bot API "Formatting options".
SUPPORTED_TAGS = frozenset(
    {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a", "code", "pre",
     "blockquote", "tg-emoji"}
)
FAULT_KINDS = ("rate_limit", "parse_error", "server_error", "disconnect")
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_ENTITY = re.compile(r"&(?:#(\d{1,7})|#[xX]([0-9a-fA-F]{1,6})|([A-Za-z]+));")
_PATH = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)$")


class BotApiParseError(ValueError):
    """HTML that Telegram would reject with "can't parse entities"."""


def utf16_length(text: str) -> int:
    """Return the length of ``text`` in UTF-16 code units, the unit of Telegram's entity offsets."""
    return len(text.encode("utf-16-le")) // 2


def render_html(text: str) -> str:
    """Return the text that Telegram shows for ``text`` sent with parse_mode HTML.

    Tags are dropped and entities decoded. Like Telegram, this rejects
    unsupported or unbalanced tags and named entities other than ``&lt;``,
    ``&gt;``, ``&amp;`` and ``&quot;``. It is stricter than Telegram in one
    way: a bare ``&`` or ``>`` is rejected, because the Bot API requires both
    to be escaped, so a client that forgets it fails here.
    """
    rendered: list[str] = []
    open_tags: list[str] = []
    index = 0
    while index < len(text):
        character = text[index]
        offset = len(text[:index].encode("utf-8"))
        if character == "<":
            end = text.find(">", index)
            if end < 0:
                raise BotApiParseError(f"Unclosed start tag at byte offset {offset}")
            inside = text[index + 1 : end].strip()
            if inside.startswith("/"):
                name = inside[1:].strip().lower()
                if not open_tags or open_tags[-1] != name:
                    expected = open_tags[-1] if open_tags else "nothing"
                    raise BotApiParseError(
                        f'Unmatched end tag at byte offset {offset}, '
                        f'expected "</{expected}>", found "</{name}>"'
                    )
                open_tags.pop()
            else:
                name = inside.split(maxsplit=1)[0].lower() if inside else ""
                if name not in SUPPORTED_TAGS:
                    raise BotApiParseError(f'Unsupported start tag "{name}" at byte offset {offset}')
                open_tags.append(name)
            index = end + 1
        elif character == "&":
            match = _ENTITY.match(text, index)
            if match is None:
                raise BotApiParseError(f'Character "&" at byte offset {offset} must be escaped as "&amp;"')
            decimal, hexadecimal, name = match.groups()
            if decimal or hexadecimal:
                rendered.append(chr(int(decimal, 10) if decimal else int(hexadecimal, 16)))
            elif name in _NAMED_ENTITIES:
                rendered.append(_NAMED_ENTITIES[name])
            else:
                raise BotApiParseError(f'Unsupported HTML entity "&{name};" at byte offset {offset}')
            index = match.end()
        elif character == ">":
            raise BotApiParseError(f'Character ">" at byte offset {offset} must be escaped as "&gt;"')
        else:
            rendered.append(character)
            index += 1
    if open_tags:
        raise BotApiParseError(f'Can\'t find end tag corresponding to start tag "{open_tags[-1]}"')
    return "".join(rendered)


@dataclasses.dataclass
class ReceivedRequest:
    """One HTTP request to the fake, whatever its outcome."""

    method: str
    payload: dict[str, Any]
    status: int
    received_at: float  # time.monotonic() on arrival


@dataclasses.dataclass
class DeliveredMessage:
    """A sendMessage request that the fake accepted."""

    message_id: int
    text: str  # as sent, before entity parsing
    parse_mode: str | None
    rendered: str  # as Telegram would show it
    received_at: float


@dataclasses.dataclass
class _Fault:
    kind: str
    retry_after: int = 1
    status: int = 502


class FakeTelegramServer:
    """A fake Bot API for one bot token and one chat id, usable as a context manager."""

    def __init__(
        self, token: str, chat_id: str, *, username: str = "engine_test_bot", raw_limit: int = MESSAGE_LIMIT
    ) -> None:
        self.token = token
        self.chat_id = str(chat_id)
        self.username = username
        # Telegram counts its limit on the rendered text. The fake also limits
        # the raw text, which catches clients that measure before escaping.
        self.raw_limit = raw_limit
        # While down, every request gets a 502 with an HTML body, as from a
        # proxy whose backend is gone.
        self.down = False
        self.requests: list[ReceivedRequest] = []
        self.messages: list[DeliveredMessage] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the fake Telegram server is not started: call start() first")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeTelegramServer":
        handler = type("BoundHandler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        # A short poll interval makes stop() return quickly.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-telegram",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket, so that new connections are refused."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeTelegramServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def fail_next(self, kind: str, count: int = 1, *, retry_after: int = 1, status: int = 502) -> None:
        """Queue ``count`` faults for the next sendMessage requests, in order.

        ``rate_limit`` responds 429 with ``retry_after`` seconds. ``parse_error``
        responds 400 "can't parse entities" to a request with a parse mode, and
        a plain-text request consumes it and is delivered. ``server_error``
        responds with ``status``, and ``disconnect`` closes the connection
        without a response.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"invalid fault kind {kind!r}: expected one of {', '.join(FAULT_KINDS)}")
        with self._lock:
            self._faults.extend(_Fault(kind, retry_after, status) for _ in range(count))

    def rendered_texts(self) -> list[str]:
        with self._lock:
            return [message.rendered for message in self.messages]

    def send_times(self) -> list[float]:
        """Arrival times of all sendMessage requests, accepted or not."""
        with self._lock:
            return [request.received_at for request in self.requests if request.method == "sendMessage"]

    # The methods below run on the server's handler threads.

    def _record(self, method: str, payload: dict[str, Any], status: int, received_at: float) -> None:
        with self._lock:
            self.requests.append(ReceivedRequest(method, payload, status, received_at))

    def _next_fault(self) -> _Fault | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def _deliver(self, payload: dict[str, Any], rendered: str, received_at: float) -> dict[str, Any]:
        with self._lock:
            message_id = len(self.messages) + 1
            parse_mode = payload.get("parse_mode") or None
            message = DeliveredMessage(message_id, payload["text"], parse_mode, rendered, received_at)
            self.messages.append(message)
        return {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": self.chat_id, "type": "private"},
            "text": rendered,
        }


def _error(code: int, description: str, **parameters: Any) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return code, body


class _Handler(BaseHTTPRequestHandler):
    fake: FakeTelegramServer

    def log_message(self, format: str, *args: Any) -> None:
        """Keep request lines out of the test output."""

    def do_GET(self) -> None:
        self._handle({})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if "json" in (self.headers.get("Content-Type") or ""):
            try:
                payload = json.loads(raw.decode("utf-8") or "{}")
            except ValueError:
                self._respond(*_error(400, "Bad Request: can't parse JSON object"))
                return
        else:
            payload = {key: values[-1] for key, values in urllib.parse.parse_qs(raw.decode("utf-8")).items()}
        self._handle(payload if isinstance(payload, dict) else {})

    def _handle(self, payload: dict[str, Any]) -> None:
        received_at = time.monotonic()
        match = _PATH.match(urllib.parse.urlsplit(self.path).path)
        method = match["method"] if match else ""

        if self.fake.down:
            self.fake._record(method, payload, 502, received_at)
            self._respond_raw(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
            return
        if match is None or urllib.parse.unquote(match["token"]) != self.fake.token:
            status, body = _error(401, "Unauthorized") if match else _error(404, "Not Found")
        elif method == "getMe":
            status, body = 200, {"ok": True, "result": self._bot()}
        elif method == "sendMessage":
            fault = self.fake._next_fault()
            if fault is not None and fault.kind == "disconnect":
                self.fake._record(method, payload, 0, received_at)
                self.close_connection = True
                return
            status, body = self._send_message(payload, fault, received_at)
        else:
            status, body = _error(404, "Not Found")
        self.fake._record(method, payload, status, received_at)
        self._respond(status, body)

    def _bot(self) -> dict[str, Any]:
        bot_id = int(self.fake.token.split(":", 1)[0]) if self.fake.token.split(":", 1)[0].isdigit() else 1
        return {"id": bot_id, "is_bot": True, "first_name": "Engine", "username": self.fake.username}

    def _send_message(
        self, payload: dict[str, Any], fault: _Fault | None, received_at: float
    ) -> tuple[int, dict[str, Any]]:
        parse_mode = payload.get("parse_mode") or None
        if fault is not None and fault.kind == "rate_limit":
            return _error(
                429, f"Too Many Requests: retry after {fault.retry_after}", retry_after=fault.retry_after
            )
        if fault is not None and fault.kind == "server_error":
            return _error(fault.status, "Internal Server Error")
        if fault is not None and fault.kind == "parse_error" and parse_mode:
            return _error(400, "Bad Request: can't parse entities: simulated by the fake server")

        if str(payload.get("chat_id", "")).strip() == "":
            return _error(400, "Bad Request: chat_id is empty")
        if str(payload["chat_id"]) != self.fake.chat_id:
            return _error(400, "Bad Request: chat not found")
        text = payload.get("text")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "Bad Request: message text is empty")
        if utf16_length(text) > self.fake.raw_limit:
            return _error(400, "Bad Request: message is too long")

        if parse_mode is None:
            rendered = text
        elif str(parse_mode).lower() == "html":
            try:
                rendered = render_html(text)
            except BotApiParseError as error:
                return _error(400, f"Bad Request: can't parse entities: {error}")
        else:
            # NOTE: the fake renders HTML only; Telegram also accepts Markdown and MarkdownV2.
            return _error(400, f"Bad Request: unsupported parse_mode {parse_mode!r} in the fake server")
        if not rendered.strip():
            return _error(400, "Bad Request: message text is empty")
        if utf16_length(rendered) > MESSAGE_LIMIT:
            return _error(400, "Bad Request: message is too long")
        return 200, {"ok": True, "result": self.fake._deliver(payload, rendered, received_at)}

    def _respond(self, status: int, body: dict[str, Any]) -> None:
        self._respond_raw(status, json.dumps(body).encode("utf-8"), "application/json")

    def _respond_raw(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
