"""Failpoints: named places in a coin run where an operator or a test can inject a fault.

``ENGINE_FAILPOINTS`` contains comma-separated rules ``SYMBOL:ACTION``, where
SYMBOL may be ``*`` for every coin:

- ``hang``: sleep until the run is stopped (tests the per-coin timeout);
- ``sleep=SECONDS``: sleep, then go on (makes short runs overlap);
- ``error=N``: raise a transient error on the first N attempts of the day;
- ``kill=N``: end the run worker with SIGKILL on the first N attempts of the day.

Attempts are counted in the day's ledger, so a fault that should stop after
N attempts does so across run retries and process restarts. With the
variable unset (the default) every failpoint is a no-op.
"""

from __future__ import annotations

import logging
import os
import signal
import time

logger = logging.getLogger(__name__)

ACTIONS = ("hang", "sleep", "error", "kill")


class TransientFailpointError(RuntimeError):
    """The transient error that an ``error=N`` failpoint raises."""


def parse_failpoints(text: str) -> dict[str, tuple[str, float]]:
    """Parse ``SYMBOL:ACTION[=VALUE],...`` into {symbol: (action, value)}; raise ValueError on a bad rule."""
    rules = {}
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        symbol, _, action = part.partition(":")
        name, _, raw = action.partition("=")
        if not symbol or name not in ACTIONS:
            raise ValueError(
                f"invalid ENGINE_FAILPOINTS rule {part!r}: expected SYMBOL:ACTION with ACTION one of "
                f"hang, sleep=SECONDS, error=N, kill=N"
            )
        try:
            value = float(raw) if raw else 1.0
        except ValueError:
            raise ValueError(f"invalid ENGINE_FAILPOINTS rule {part!r}: {raw!r} is not a number") from None
        rules[symbol.strip().upper()] = (name, value)
    return rules


def trigger(symbol: str, attempt: int, rules_text: str) -> None:
    """Run the failpoint rule for ``symbol`` at its ``attempt`` (1-based), if ``rules_text`` sets one."""
    rules = parse_failpoints(rules_text)
    rule = rules.get(symbol) or rules.get("*")
    if rule is None:
        return
    action, value = rule
    logger.warning("failpoint %s:%s=%s at attempt %d", symbol, action, value, attempt)
    if action == "hang":
        while True:
            time.sleep(3600)
    if action == "sleep":
        time.sleep(value)
    elif action == "error" and attempt <= value:
        raise TransientFailpointError(f"failpoint: transient error in {symbol} at attempt {attempt} of {int(value)}")
    elif action == "kill" and attempt <= value:
        os.kill(os.getpid(), signal.SIGKILL)
