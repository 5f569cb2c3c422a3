"""The promotion rule: when a challenger replaces the coin's champion.

Both models are scored after costs (net) on the same holdout window. The
challenger must first pass the guards (minimum trades, maximum drawdown). With
no champion it is promoted. Otherwise it must beat the champion's score by
more than ``margin``, an absolute difference in the metric's own units (0.1
Sharpe by default).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

# Metrics where higher is better, with the words used in decision reasons.
SCORE_METRICS = {
    "sharpe": "Sharpe",
    "total_return": "total return",
    "annualized_return": "annualized return",
}


@dataclasses.dataclass(frozen=True)
class PromotionRules:
    """Guards and margin for promotion. ``metric`` is read from the net (after-cost) holdout metrics."""

    margin: float = 0.1
    min_trades: int = 5
    max_drawdown: float = 0.5
    metric: str = "sharpe"

    def __post_init__(self) -> None:
        if self.metric not in SCORE_METRICS:
            raise ValueError(
                f"invalid PromotionRules.metric={self.metric!r}: expected one of {', '.join(SCORE_METRICS)}"
            )
        if not math.isfinite(self.margin) or self.margin < 0:
            raise ValueError(f"invalid PromotionRules.margin={self.margin!r}: expected a finite number >= 0")
        if isinstance(self.min_trades, bool) or not isinstance(self.min_trades, int) or self.min_trades < 0:
            raise ValueError(
                f"invalid PromotionRules.min_trades={self.min_trades!r}: expected a whole number >= 0"
            )
        if not 0 < self.max_drawdown <= 1:
            raise ValueError(
                f"invalid PromotionRules.max_drawdown={self.max_drawdown!r}: expected a fraction in (0, 1]"
            )


@dataclasses.dataclass(frozen=True)
class PromotionDecision:
    """Whether the challenger becomes champion, why, and the two scores compared."""

    promote: bool
    reason: str
    challenger_score: float | None
    champion_score: float | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _number(metrics: Mapping, key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def decide_promotion(
    challenger_net: Mapping,
    champion_net: Mapping | None,
    rules: PromotionRules | None = None,
) -> PromotionDecision:
    """Decide whether the challenger replaces the champion.

    ``challenger_net`` and ``champion_net`` are the ``"net"`` parts of
    ``metrics_to_dict`` on the same holdout window. ``champion_net`` is None
    when the coin has no champion yet.
    """
    rules = rules or PromotionRules()
    label = f"net {SCORE_METRICS[rules.metric]}"
    for key in (rules.metric, "trades", "max_drawdown"):
        if key not in challenger_net:
            raise KeyError(f"challenger metrics lack {key!r}: pass the 'net' part of metrics_to_dict")

    challenger_score = _number(challenger_net, rules.metric)
    champion_score = _number(champion_net, rules.metric) if champion_net is not None else None
    keeps = "the champion stays" if champion_net is not None else "no champion is set"

    def reject(reason: str) -> PromotionDecision:
        return PromotionDecision(False, f"{reason}; {keeps}", challenger_score, champion_score)

    if challenger_score is None:
        return reject(f"challenger {label} is not a finite number")
    trades = int(challenger_net["trades"])
    if trades < rules.min_trades:
        return reject(
            f"challenger made {_count(trades, 'trade')} on the holdout, "
            f"fewer than the minimum of {rules.min_trades}"
        )
    drawdown = _number(challenger_net, "max_drawdown")
    if drawdown is None or drawdown > rules.max_drawdown:
        drawdown_text = "unknown" if drawdown is None else f"{drawdown:.1%}"
        return reject(
            f"challenger max drawdown {drawdown_text} exceeds the limit of {rules.max_drawdown:.1%}"
        )

    if champion_net is None:
        return PromotionDecision(
            True,
            f"no champion yet, and challenger {label} {challenger_score:.2f} passes the guards "
            f"({_count(trades, 'trade')}, max drawdown {drawdown:.1%})",
            challenger_score,
            None,
        )
    if champion_score is None:
        # A champion that cannot be scored on this window cannot defend its place.
        return PromotionDecision(
            True,
            f"champion has no finite {label} on this holdout, "
            f"so challenger {challenger_score:.2f} replaces it",
            challenger_score,
            None,
        )

    if challenger_score > champion_score + rules.margin:
        return PromotionDecision(
            True,
            f"challenger {label} {challenger_score:.2f} beats champion {champion_score:.2f} "
            f"by more than the {rules.margin:.2f} margin",
            challenger_score,
            champion_score,
        )
    return reject(
        f"challenger {label} {challenger_score:.2f} does not beat champion {champion_score:.2f} "
        f"by more than the {rules.margin:.2f} margin"
    )
