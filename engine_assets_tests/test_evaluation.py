"""Tests for the cost-aware backtest, the threshold choice, metric export and the promotion rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from engine_assets.evaluation.backtest import (
    CostModel,
    backtest,
    buy_and_hold,
    choose_threshold,
    metrics_to_dict,
    positions_from_scores,
)
from engine_assets.evaluation.promotion import PromotionRules, decide_promotion
from engine_assets.features.build import build_features, next_returns, to_grid

COST = 0.0015  # default fee 10 bps + slippage 5 bps, per side
FREE = CostModel(fee_bps=0.0, slippage_bps=0.0)


def hourly(values) -> pd.Series:
    index = pd.date_range("2024-01-01", periods=len(values), freq="h", tz="UTC", name="date")
    return pd.Series(np.asarray(values, dtype=np.float64), index=index)


def tick_candles(count: int, seed: int) -> pd.DataFrame:
    """Return candles priced around 1e-6 on a 1e-9 tick."""
    rng = np.random.default_rng(seed)
    close = np.maximum(1000 + np.cumsum(rng.integers(-3, 4, count)), 100) * 1e-9
    open_ = np.concatenate(([1000e-9], close[:-1]))
    return pd.DataFrame(
        {
            "date": pd.date_range("2024-01-01", periods=count, freq="h", tz="UTC"),
            "open": open_,
            "high": np.maximum(open_, close) + 1e-9,
            "low": np.minimum(open_, close) - 1e-9,
            "close": close,
            "volume": rng.lognormal(15.0, 1.0, count),
        }
    )


def test_cost_model_per_side():
    assert CostModel().per_side == pytest.approx(COST, rel=1e-12)
    with pytest.raises(ValueError, match="CostModel.fee_bps=-1"):
        CostModel(fee_bps=-1.0)


def test_backtest_five_periods():
    returns = hourly([0.01, 0.02, -0.01, 0.001, 0.0])
    positions = hourly([1, 1, 0, 1, 0])

    result = backtest(returns, positions, CostModel())

    # Entry at 0, exit at 2, entry at 3, exit at 4: four sides charged.
    gross = 1.01 * 1.02 * 1.001 - 1.0
    net = (1.0 - COST) ** 4 * 1.01 * 1.02 * 1.001 - 1.0
    assert result.gross.total_return == pytest.approx(gross, rel=1e-12)
    assert result.net.total_return == pytest.approx(net, rel=1e-12)
    assert result.net.trades == 2
    assert result.gross.trades == 2
    assert result.net.turnover == 4.0
    assert result.net.exposure == pytest.approx(0.6)
    assert result.gross.hit_rate == 1.0
    # 0.001 gross at period 3 is below the entry cost, so that period loses after costs.
    assert result.net.hit_rate == pytest.approx(2 / 3)
    assert result.net_equity.iloc[-1] == pytest.approx(1.0 + net, rel=1e-12)
    assert result.gross_equity.iloc[-1] == pytest.approx(1.0 + gross, rel=1e-12)


def test_backtest_closes_open_position():
    returns = hourly([0.01, 0.02, -0.01, 0.03, 0.005])
    positions = hourly([0, 1, 1, 0, 1])

    result = backtest(returns, positions, CostModel())

    # Entry at 1, exit at 3, entry at 4, final exit after 4.
    assert result.net.total_return == pytest.approx((1.0 - COST) ** 4 * 1.02 * 0.99 * 1.005 - 1.0, rel=1e-12)
    assert result.gross.total_return == pytest.approx(1.02 * 0.99 * 1.005 - 1.0, rel=1e-12)
    assert result.net.turnover == 4.0
    assert result.net.trades == 2


def test_backtest_flat_across_gap():
    returns = hourly([0.01, np.nan, 0.02, 0.01])
    positions = hourly([1, 1, 1, 1])

    result = backtest(returns, positions, CostModel())

    assert result.positions.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert result.net.trades == 2
    assert result.net.turnover == 4.0
    assert result.gross.total_return == pytest.approx(1.01 * 1.02 * 1.01 - 1.0, rel=1e-12)
    assert result.net.total_return == pytest.approx((1.0 - COST) ** 4 * 1.01 * 1.02 * 1.01 - 1.0, rel=1e-12)


def test_sharpe_annualization():
    rng = np.random.default_rng(11)
    values = rng.normal(0.0005, 0.01, 500)
    returns = hourly(values)
    always = hourly(np.ones(500))

    hourly_result = backtest(returns, always, FREE)
    daily_result = backtest(returns, always, FREE, periods_per_year=365)

    expected = values.mean() / values.std(ddof=1) * math.sqrt(8760)
    assert hourly_result.gross.sharpe == pytest.approx(expected, rel=1e-9)
    assert hourly_result.net.sharpe == pytest.approx(expected, rel=1e-9)
    assert hourly_result.gross.sharpe / daily_result.gross.sharpe == pytest.approx(math.sqrt(24), rel=1e-12)


def test_max_drawdown_known_curve():
    result = backtest(hourly([0.1, -0.5, 0.2, 0.5]), hourly([1, 1, 1, 1]), FREE)
    first_loss = backtest(hourly([-0.2, 0.1]), hourly([1, 1]), FREE)

    # Equity 1.1 -> 0.55 is the deepest fall; the recovery to 0.99 does not reset it.
    assert result.gross.max_drawdown == pytest.approx(0.5, rel=1e-12)
    assert first_loss.gross.max_drawdown == pytest.approx(0.2, rel=1e-12)


def test_buy_and_hold_charged_twice():
    returns = hourly([0.01, 0.02, -0.01, np.nan, 0.03])

    result = buy_and_hold(returns, CostModel())

    growth = 1.01 * 1.02 * 0.99 * 1.03
    assert result.net.total_return == pytest.approx((1.0 - COST) ** 2 * growth - 1.0, rel=1e-12)
    assert result.gross.total_return == pytest.approx(growth - 1.0, rel=1e-12)
    assert result.net.trades == 1
    assert result.net.turnover == 2.0
    assert result.net.exposure == 1.0


def test_positions_from_scores_strict():
    scores = hourly([0.2, 0.5, np.nan, 0.7, 0.5])

    positions = positions_from_scores(scores, 0.5)

    assert positions.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert positions.index.equals(scores.index)


def test_backtest_rejects_short_position():
    with pytest.raises(ValueError, match="invalid position -1.0"):
        backtest(hourly([0.01, 0.02]), hourly([1, -1]))


def test_choose_threshold_best_quantile():
    count = 100
    scores = hourly(np.arange(count, dtype=np.float64))
    values = np.full(count, -0.01)
    # Only the top decile of scores (the last ten hours) is profitable.
    values[90:] = 0.01 + 0.001 * np.sin(np.arange(10))
    values[:50] = 0.002 * np.cos(np.arange(50))
    returns = hourly(values)

    threshold = choose_threshold(scores, returns, CostModel())

    assert threshold == pytest.approx(np.quantile(scores, 0.9))
    assert backtest(returns, positions_from_scores(scores, threshold)).net.sharpe > 0


def test_choose_threshold_all_nan_rejected():
    with pytest.raises(ValueError, match="every score is NaN"):
        choose_threshold(hourly([np.nan, np.nan]), hourly([0.01, 0.02]))


def test_metrics_to_dict_json_safe():
    # One period of +50% annualizes beyond float range.
    result = backtest(hourly([0.5]), hourly([1]), FREE)

    data = metrics_to_dict(result)
    text = json.dumps(data, allow_nan=False)

    assert set(data) == {"gross", "net"}
    assert data["net"]["annualized_return"] is None
    assert data["net"]["total_return"] == pytest.approx(0.5)
    assert isinstance(data["net"]["trades"], int)
    assert json.loads(text) == data


def test_net_metrics_price_scale_free():
    candles = tick_candles(800, seed=12)
    scaled = candles.copy()
    for column in ("open", "high", "low", "close"):
        scaled[column] = scaled[column] * 1e6

    results = []
    for frame in (candles, scaled):
        grid = to_grid(frame, 3600)
        scores = build_features(grid)["ret_1"]
        results.append(metrics_to_dict(backtest(next_returns(grid), positions_from_scores(scores, 0.0))))

    tiny, large = results
    assert tiny["net"]["trades"] > 20
    for key, value in tiny["net"].items():
        assert large["net"][key] == pytest.approx(value, rel=1e-9, abs=0), key


def net(sharpe: float, trades: int = 20, drawdown: float = 0.1) -> dict:
    return {"sharpe": sharpe, "trades": trades, "max_drawdown": drawdown, "total_return": 0.05}


def test_promotion_no_champion():
    decision = decide_promotion(net(0.4), None, PromotionRules())

    assert decision.promote is True
    assert decision.reason.startswith("no champion yet, and challenger net Sharpe 0.40 passes the guards")
    assert decision.challenger_score == 0.4
    assert decision.champion_score is None


def test_promotion_beats_margin():
    decision = decide_promotion(net(1.42), net(0.97), PromotionRules())

    assert decision.promote is True
    assert decision.reason == "challenger net Sharpe 1.42 beats champion 0.97 by more than the 0.10 margin"
    assert decision.champion_score == 0.97


def test_promotion_within_margin_kept():
    decision = decide_promotion(net(1.05), net(0.97), PromotionRules())

    assert decision.promote is False
    assert decision.reason == (
        "challenger net Sharpe 1.05 does not beat champion 0.97 by more than the 0.10 margin; "
        "the champion stays"
    )


def test_promotion_min_trades_guard():
    decision = decide_promotion(net(3.0, trades=3), None, PromotionRules(min_trades=5))

    assert decision.promote is False
    assert "3 trades on the holdout, fewer than the minimum of 5" in decision.reason
    assert decision.reason.endswith("no champion is set")


def test_promotion_drawdown_guard():
    decision = decide_promotion(net(3.0, drawdown=0.6), net(0.5), PromotionRules(max_drawdown=0.5))

    assert decision.promote is False
    assert "max drawdown 60.0% exceeds the limit of 50.0%" in decision.reason
    assert decision.reason.endswith("the champion stays")


def test_promotion_unscored_champion():
    unscored = {"sharpe": None, "trades": 0, "max_drawdown": 0.0}

    decision = decide_promotion(net(0.5), unscored, PromotionRules())

    assert decision.promote is True
    assert "champion has no finite net Sharpe" in decision.reason


def test_promotion_other_metric():
    rules = PromotionRules(metric="total_return", margin=0.01)
    challenger = dict(net(0.0), total_return=0.08)

    decision = decide_promotion(challenger, net(5.0), rules)

    assert decision.promote is True
    assert decision.reason == (
        "challenger net total return 0.08 beats champion 0.05 by more than the 0.01 margin"
    )


def test_promotion_rules_validated():
    with pytest.raises(ValueError, match="PromotionRules.metric='profit'"):
        PromotionRules(metric="profit")
    with pytest.raises(ValueError, match="PromotionRules.max_drawdown=0"):
        PromotionRules(max_drawdown=0)
