"""Long/flat spot backtest with trading costs, gross and net.

Timing: the position at t is decided from information at t (t's close) and
earns ``next_returns[t]``, the simple return from t's close to t+1's close.

Costs: every change of position pays ``(fee_bps + slippage_bps) / 1e4`` per
unit of |change|, as a fraction of equity at the moment of the trade. So an
entry and an exit of a full position each pay one side. A period's net growth
factor is ``(1 - cost * |p[t] - p[t-1]|) * (1 + p[t] * r[t])`` with p[-1] = 0.

Gaps and the end of the data: where ``next_returns`` is NaN (a missing candle
at t or t+1, or the last row), the return is unknown, so the position is
forced flat for that period and earns nothing. A position open before the gap
is therefore closed and, if the strategy still wants it, reopened after the
gap, and both trades pay costs. A position still open after the last period
is closed and that exit is charged in the last period. ``buy_and_hold`` is
the exception: it keeps its position through gaps.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

HOURS_PER_YEAR = 8760  # crypto trades 24/7: 365 days * 24 hours


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Trading costs per side in basis points. Defaults: Binance spot taker fee plus slippage."""

    fee_bps: float = 10.0
    slippage_bps: float = 5.0

    def __post_init__(self) -> None:
        for name in ("fee_bps", "slippage_bps"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"invalid CostModel.{name}={value!r}: expected a finite number of basis points >= 0"
                )

    @property
    def per_side(self) -> float:
        """Cost of trading one unit of position, as a fraction of the traded value."""
        return (self.fee_bps + self.slippage_bps) / 1e4


@dataclasses.dataclass(frozen=True)
class Metrics:
    """Performance of one return series (gross or net).

    - total_return, annualized_return: compounded, as fractions.
    - sharpe: mean / sample std of period returns * sqrt(periods_per_year); 0 when the std is 0.
    - max_drawdown: largest fall from a running equity peak, a positive fraction (0.25 = -25 %).
    - trades: entries, i.e. changes from flat to a position. Each entry is
      closed later, so this is the number of round trips.
    - turnover: sum of |position change|, the final exit included.
    - hit_rate: share of in-position periods whose return (after that
      period's costs for net) is positive; 0 when never in position.
    - exposure: mean position over all periods.
    """

    total_return: float
    annualized_return: float
    sharpe: float
    max_drawdown: float
    trades: int
    turnover: float
    hit_rate: float
    exposure: float
    periods: int


@dataclasses.dataclass(frozen=True)
class BacktestResult:
    """Gross and net metrics, equity curves (1.0 before the first period) and the positions held."""

    gross: Metrics
    net: Metrics
    gross_equity: pd.Series
    net_equity: pd.Series
    positions: pd.Series
    costs: CostModel


def positions_from_scores(scores: pd.Series, threshold: float) -> pd.Series:
    """Return 1.0 where the score at t is strictly above ``threshold``, else 0.0 (NaN scores are flat)."""
    values = scores.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        long = values > threshold
    return pd.Series(long.astype(np.float64), index=scores.index, name="position")


def _aligned_positions(next_returns: pd.Series, positions: pd.Series) -> np.ndarray:
    if not positions.index.equals(next_returns.index):
        missing = next_returns.index.difference(positions.index)
        if len(missing):
            raise ValueError(
                f"positions lack {len(missing)} of the {len(next_returns)} periods of next_returns, "
                f"first {missing[0]}: build positions on the same index as the returns"
            )
        positions = positions.reindex(next_returns.index)
    values = np.nan_to_num(positions.to_numpy(dtype=np.float64), nan=0.0)
    if (values < 0).any() or (values > 1).any():
        bad = values[(values < 0) | (values > 1)][0]
        raise ValueError(
            f"invalid position {bad}: expected 0 (flat) to 1 (fully long), because spot trading cannot short"
        )
    return values


def _metrics(
    period_returns: np.ndarray,
    positions: np.ndarray,
    changes: np.ndarray,
    periods_per_year: float,
) -> Metrics:
    periods = len(period_returns)
    equity = np.cumprod(1.0 + period_returns)
    total_return = float(equity[-1] - 1.0) if periods else 0.0

    if periods and total_return > -1.0:
        with np.errstate(over="ignore"):
            annualized = float(np.expm1(np.log1p(total_return) * periods_per_year / periods))
    else:
        annualized = -1.0 if periods else 0.0

    sharpe = 0.0
    if periods >= 2:
        std = float(np.std(period_returns, ddof=1))
        if std > 0:
            sharpe = float(np.mean(period_returns) / std * math.sqrt(periods_per_year))

    max_drawdown = 0.0
    if periods:
        # The curve starts at 1.0 so a loss in the first period counts.
        curve = np.concatenate(([1.0], equity))
        peaks = np.maximum.accumulate(curve)
        max_drawdown = float(np.max(1.0 - curve / peaks))

    previous = np.concatenate(([0.0], positions[:-1]))
    trades = int(np.sum((previous == 0) & (positions > 0)))
    in_position = positions > 0
    hit_rate = float(np.mean(period_returns[in_position] > 0)) if in_position.any() else 0.0
    return Metrics(
        total_return=total_return,
        annualized_return=annualized,
        sharpe=sharpe,
        max_drawdown=max_drawdown,
        trades=trades,
        turnover=float(np.sum(changes)),
        hit_rate=hit_rate,
        exposure=float(np.mean(positions)) if periods else 0.0,
        periods=periods,
    )


def _simulate(
    next_returns: pd.Series,
    positions: np.ndarray,
    costs: CostModel,
    periods_per_year: float,
) -> BacktestResult:
    returns = np.nan_to_num(next_returns.to_numpy(dtype=np.float64), nan=0.0)
    previous = np.concatenate(([0.0], positions[:-1]))
    position_changes = np.abs(positions - previous)

    gross_returns = positions * returns
    net_factors = (1.0 - costs.per_side * position_changes) * (1.0 + gross_returns)
    changes = position_changes.copy()
    if len(positions):
        # Close whatever is still open after the last period, charged in that period.
        net_factors[-1] *= 1.0 - costs.per_side * positions[-1]
        changes[-1] += positions[-1]
    net_returns = net_factors - 1.0

    index = next_returns.index
    return BacktestResult(
        gross=_metrics(gross_returns, positions, changes, periods_per_year),
        net=_metrics(net_returns, positions, changes, periods_per_year),
        gross_equity=pd.Series(np.cumprod(1.0 + gross_returns), index=index, name="gross_equity"),
        net_equity=pd.Series(np.cumprod(net_factors), index=index, name="net_equity"),
        positions=pd.Series(positions, index=index, name="position"),
        costs=costs,
    )


def backtest(
    next_returns: pd.Series,
    positions: pd.Series,
    costs: CostModel | None = None,
    periods_per_year: float = HOURS_PER_YEAR,
) -> BacktestResult:
    """Run the long/flat strategy ``positions`` over ``next_returns`` and measure it gross and net.

    ``positions`` share the index of ``next_returns`` and lie in [0, 1]. NaN
    positions count as flat. Periods with a NaN return are forced flat (see
    the module docstring for gaps and the final exit).
    """
    costs = costs or CostModel()
    requested = _aligned_positions(next_returns, positions)
    effective = np.where(next_returns.isna().to_numpy(), 0.0, requested)
    return _simulate(next_returns, effective, costs, periods_per_year)


def buy_and_hold(
    next_returns: pd.Series,
    costs: CostModel | None = None,
    periods_per_year: float = HOURS_PER_YEAR,
) -> BacktestResult:
    """Hold a full position from the first period to the last: one entry and one exit, both charged.

    Unlike ``backtest``, the position stays open through gaps.
    NOTE: the price move across a missing candle is unknown here, so a gap
    period earns 0 instead of the true move.
    """
    costs = costs or CostModel()
    always_long = np.ones(len(next_returns), dtype=np.float64)
    return _simulate(next_returns, always_long, costs, periods_per_year)


def choose_threshold(
    scores: pd.Series,
    next_returns: pd.Series,
    costs: CostModel | None = None,
    quantiles: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
    periods_per_year: float = HOURS_PER_YEAR,
) -> float:
    """Return the score threshold with the best net Sharpe on this (validation) window.

    Candidates are the given quantiles of the finite scores. Ties keep the
    earlier quantile.
    """
    costs = costs or CostModel()
    finite = scores[np.isfinite(scores.to_numpy(dtype=np.float64))]
    if finite.empty:
        raise ValueError("cannot choose a threshold: every score is NaN or infinite on this window")
    if not quantiles:
        raise ValueError("cannot choose a threshold: no quantiles given")
    for quantile in quantiles:
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"invalid quantile {quantile}: expected a value between 0 and 1")

    best_threshold = math.nan
    best_sharpe = -math.inf
    for quantile in quantiles:
        threshold = float(finite.quantile(quantile))
        result = backtest(next_returns, positions_from_scores(scores, threshold), costs, periods_per_year)
        logger.debug(
            "threshold %.6g (quantile %.2f): net Sharpe %.3f, %d trades",
            threshold,
            quantile,
            result.net.sharpe,
            result.net.trades,
        )
        if result.net.sharpe > best_sharpe:
            best_threshold, best_sharpe = threshold, result.net.sharpe
    return best_threshold


def _json_number(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def metrics_to_dict(result: BacktestResult) -> dict[str, dict[str, float | int | None]]:
    """Return ``{"gross": {...}, "net": {...}}`` with plain numbers. NaN and infinity become None."""
    return {
        side: {key: _json_number(value) for key, value in dataclasses.asdict(getattr(result, side)).items()}
        for side in ("gross", "net")
    }
