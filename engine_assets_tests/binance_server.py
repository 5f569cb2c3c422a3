"""A local HTTP server that plays Binance for the download tests.

It implements the two spot REST endpoints that ccxt's ``binance`` class calls to
download candles (``/api/v3/exchangeInfo`` during ``load_markets`` and
``/api/v3/klines``) and serves public-data archive files (ZIP and
``.CHECKSUM``) from an in-memory table of paths. ccxt 4.5 calls no other
endpoint when its ``fetchMarkets`` types are ``["spot"]`` and no API key is
set: the futures exchangeInfo endpoints are then skipped and
``fetch_currencies`` returns nothing without credentials.

The server binds to 127.0.0.1 on a free port. Tests set the candles per
symbol, the server's clock (``now_ms``) and faults to inject: rate-limit
responses, failing symbols and missing hours.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

# Binance spot klines: 500 rows by default, at most 1000.
DEFAULT_KLINES_LIMIT = 500
MAX_KLINES_LIMIT = 1000
INTERVAL_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "4h": 14_400_000, "1d": 86_400_000}


@dataclasses.dataclass
class RateLimitResponse:
    """An error response (429 or 418) sent in place of the next klines response."""

    status: int
    retry_after: str | None = "1"


@dataclasses.dataclass
class RecordedRequest:
    """A request the server received: path and query parameters (one value each)."""

    path: str
    query: dict[str, str]


class FakeBinance:
    """Binance's spot klines, exchangeInfo and public-data files, served from memory.

    ``candles`` maps a symbol (``BTCUSDT``) to a frame with the engine's candle
    columns (``date`` in UTC, open, high, low, close, volume) at 1h. Every
    candle whose open time is at or before ``now_ms`` is served, so the last
    one may still be open, as on the real exchange.
    """

    def __init__(self, candles: dict[str, pd.DataFrame], now_ms: int | None = None, interval: str = "1h") -> None:
        self.interval = interval
        self.interval_ms = INTERVAL_MS[interval]
        self._rows: dict[str, np.ndarray] = {}
        for symbol, frame in candles.items():
            self.set_candles(symbol, frame)
        latest = max((int(rows[-1, 0]) for rows in self._rows.values() if len(rows)), default=0)
        self.now_ms = latest if now_ms is None else now_ms
        self.rate_limit_responses: dict[str, list[RateLimitResponse]] = {}
        # symbol -> number of klines responses served before every later request fails with HTTP 500
        self.fail_after_responses: dict[str, int] = {}
        self.missing_open_times: dict[str, set[int]] = {}
        self.files: dict[str, bytes] = {}
        self.requests: list[RecordedRequest] = []
        self._klines_served: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def set_candles(self, symbol: str, frame: pd.DataFrame) -> None:
        open_ms = frame["date"].astype("datetime64[ns, UTC]").astype("int64").to_numpy() // 1_000_000
        values = frame.loc[:, ["open", "high", "low", "close", "volume"]].to_numpy(dtype=np.float64)
        self._rows[symbol] = np.column_stack([open_ms.astype(np.float64), values])

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started: call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeBinance":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # A short poll interval makes shutdown() return quickly at fixture teardown.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-binance", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeBinance":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def klines_requests(self, symbol: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [
                request
                for request in self.requests
                if request.path == "/api/v3/klines" and (symbol is None or request.query.get("symbol") == symbol)
            ]

    def paths_requested(self) -> list[str]:
        with self._lock:
            return [request.path for request in self.requests]

    # Responses, built in the handler thread.

    def exchange_info(self) -> dict:
        return {
            "timezone": "UTC",
            "serverTime": self.now_ms,
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
            ],
            "exchangeFilters": [],
            "symbols": [_symbol_info(symbol) for symbol in sorted(self._rows)],
        }

    def klines(self, query: dict[str, str]) -> tuple[int, dict[str, str], object]:
        symbol = query.get("symbol", "")
        with self._lock:
            waiting = self.rate_limit_responses.get(symbol)
            if waiting:
                response = waiting.pop(0)
                headers = {} if response.retry_after is None else {"Retry-After": response.retry_after}
                message = "Too many requests." if response.status == 429 else "IP banned for too many requests."
                return response.status, headers, {"code": -1003, "msg": message}
            served = self._klines_served.get(symbol, 0)
            if symbol in self.fail_after_responses and served >= self.fail_after_responses[symbol]:
                return 500, {}, {"code": -1001, "msg": "Internal error; unable to process your request."}
            self._klines_served[symbol] = served + 1

        if symbol not in self._rows:
            return 400, {}, {"code": -1121, "msg": "Invalid symbol."}
        if query.get("interval") != self.interval:
            return 400, {}, {"code": -1120, "msg": "Invalid interval."}
        limit = int(query.get("limit", DEFAULT_KLINES_LIMIT))
        if not 1 <= limit <= MAX_KLINES_LIMIT:
            return 400, {}, {"code": -1130, "msg": "Invalid data sent for a parameter."}

        rows = self._rows[symbol]
        open_ms = rows[:, 0].astype(np.int64)
        keep = open_ms <= self.now_ms
        missing = self.missing_open_times.get(symbol)
        if missing:
            keep &= ~np.isin(open_ms, list(missing))
        if "endTime" in query:
            keep &= open_ms <= int(query["endTime"])
        if "startTime" in query:
            keep &= open_ms >= int(query["startTime"])
            selected = rows[keep][:limit]
        else:
            selected = rows[keep][-limit:]
        return 200, {}, [self._kline_row(row) for row in selected]

    def _kline_row(self, row: np.ndarray) -> list:
        open_ms = int(row[0])
        open_price, high, low, close, volume = (float(value) for value in row[1:])
        return [
            open_ms,
            f"{open_price:.8f}",
            f"{high:.8f}",
            f"{low:.8f}",
            f"{close:.8f}",
            f"{volume:.8f}",
            open_ms + self.interval_ms - 1,
            f"{volume * close:.8f}",
            100,
            f"{volume / 2:.8f}",
            f"{volume * close / 2:.8f}",
            "0",
        ]


def _symbol_info(symbol: str) -> dict:
    quote = "USDT" if symbol.endswith("USDT") else symbol[-3:]
    base = symbol[: -len(quote)]
    return {
        "symbol": symbol,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "MARKET"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": "0.01000000",
                "maxPrice": "1000000.00000000",
                "tickSize": "0.01000000",
            },
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
    }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeBinance

    def do_GET(self) -> None:  # noqa: N802 (the name is fixed by BaseHTTPRequestHandler)
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        with self.fake._lock:
            self.fake.requests.append(RecordedRequest(path=parts.path, query=query))

        if parts.path == "/api/v3/exchangeInfo":
            self._send_json(200, {}, self.fake.exchange_info())
        elif parts.path == "/api/v3/klines":
            status, headers, body = self.fake.klines(query)
            self._send_json(status, headers, body)
        elif parts.path in self.fake.files:
            self._send(200, {"Content-Type": "application/octet-stream"}, self.fake.files[parts.path])
        else:
            self._send(404, {"Content-Type": "text/plain"}, f"not found: {parts.path}".encode())

    def _send_json(self, status: int, headers: dict[str, str], body: object) -> None:
        self._send(status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode())

    def _send(self, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base class)
        """Silence the per-request log lines on stderr; ``FakeBinance.requests`` records them."""


def kline_rows_for(frame: pd.DataFrame, interval_ms: int, unit: str = "ms") -> Iterable[list[str]]:
    """Yield Binance archive CSV rows (12 columns) for ``frame``, open and close times in ``unit``."""
    scale = {"ms": 1, "us": 1000}[unit]
    open_ms = frame["date"].astype("datetime64[ns, UTC]").astype("int64").to_numpy() // 1_000_000
    for index, start in enumerate(open_ms):
        row = frame.iloc[index]
        yield [
            str(int(start) * scale),
            f"{row['open']:.8f}",
            f"{row['high']:.8f}",
            f"{row['low']:.8f}",
            f"{row['close']:.8f}",
            f"{row['volume']:.8f}",
            str((int(start) + interval_ms) * scale - 1),
            f"{row['volume'] * row['close']:.8f}",
            "100",
            f"{row['volume'] / 2:.8f}",
            f"{row['volume'] * row['close'] / 2:.8f}",
            "0",
        ]
