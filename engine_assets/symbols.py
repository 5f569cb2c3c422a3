"""Partition keys: exchange symbols without a separator, such as ``BTCUSDT``."""

from __future__ import annotations

import re

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,20}$")

# Quote currencies tried, longest first, when a symbol has to be split back into a pair.
KNOWN_QUOTES = ("FDUSD", "USDT", "USDC", "TUSD", "BUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "USD")


class InvalidSymbolError(ValueError):
    """A partition key that is not a valid symbol."""


def validate_symbol(symbol: str) -> str:
    """Return ``symbol`` unchanged if it matches ``[A-Z0-9]{2,20}``, else raise.

    The check keeps every key safe to use as a path segment in storage.
    """
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        raise InvalidSymbolError(
            f"invalid symbol {symbol!r}: expected 2 to 20 characters from A-Z and 0-9, such as 'BTCUSDT'"
        )
    return symbol


def pair_to_symbol(pair: str) -> str:
    """Convert an exchange pair (``BTC/USDT``, ``BTC_USDT``, ``BTC/USDT:USDT``) into a symbol."""
    base_quote = pair.split(":", 1)[0]
    return validate_symbol(re.sub(r"[/_\-]", "", base_quote).upper())


def symbol_to_pair(symbol: str, quotes: tuple[str, ...] = KNOWN_QUOTES) -> str:
    """Split a symbol into a ccxt pair (``BTCUSDT`` to ``BTC/USDT``) using known quote currencies."""
    validate_symbol(symbol)
    for quote in sorted(quotes, key=len, reverse=True):
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return f"{symbol[: -len(quote)]}/{quote}"
    raise InvalidSymbolError(
        f"cannot split symbol {symbol!r} into base and quote: no known quote currency among {', '.join(quotes)}"
    )
