"""One coin's training: heads on features plus embeddings, holdout scoring after costs, promotion.

Windows come from the encoder's cutoff, so every coin of a run, and the
champion it is compared with, are scored on the same holdout window.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engine_assets.evaluation.backtest import (
    backtest,
    buy_and_hold,
    choose_threshold,
    metrics_to_dict,
    positions_from_scores,
)
from engine_assets.evaluation.promotion import decide_promotion
from engine_assets.features.build import assert_finite, feature_lookback, to_grid
from engine_assets.features.windows import InsufficientHistoryError, check_history, make_windows, required_candles, split
from engine_assets.storage.base import ArtifactStore, IntegrityError, StorageError
from engine_assets.storage.manifest import publish_folder
from engine_assets.training.champions import champion_lock, load_champion_head, promote, read_champion
from engine_assets.training.config import TrainingConfig
from engine_assets.training.embeddings import embeddings_for

logger = logging.getLogger(__name__)

LABEL_COLUMN = "label"
NEXT_RETURN_COLUMN = "next_return"
TOP_FEATURES = 15


@dataclass
class CoinOutcome:
    """The result of one coin's training, for the ledger, the roster and the asset's metadata."""

    symbol: str
    status: str
    reason: str | None = None
    head: str | None = None
    model_path: str | None = None
    manifest_sha256: str | None = None
    champion_changed: bool = False
    champion_path: str | None = None
    decision: str | None = None
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def key_metrics(self) -> dict:
        """Return the numbers the roster and summary show for this coin."""
        holdout = self.metrics.get("holdout", {})
        net = holdout.get("net", {})
        hold = self.metrics.get("buy_and_hold", {}).get("net", {})
        return {
            "head": self.head,
            "sharpe_net": net.get("sharpe"),
            "total_return_net": net.get("total_return"),
            "max_drawdown_net": net.get("max_drawdown"),
            "trades": net.get("trades"),
            "sharpe_gross": holdout.get("gross", {}).get("sharpe"),
            "buy_and_hold_return": hold.get("total_return"),
            "buy_and_hold_sharpe": hold.get("sharpe"),
        }


def model_timestamp(now: dt.datetime) -> str:
    return now.astimezone(dt.timezone.utc).strftime("%Y%m%d_%H%M%SZ")


def _finite_rows(frame: pd.DataFrame, columns: list[str], symbol: str, what: str) -> pd.DataFrame:
    """Drop rows with a missing value (lookback, gaps, label horizon), then require the rest to be finite."""
    rows = frame.dropna(subset=columns)
    assert_finite(rows[columns], symbol, what)
    return rows


def _evaluate(scores: pd.Series, next_ret: pd.Series, threshold: float, costs):
    positions = positions_from_scores(scores, threshold).reindex(next_ret.index).fillna(0.0)
    return backtest(next_ret, positions, costs)


def _scores(head, frame: pd.DataFrame) -> pd.Series:
    """Return the head's scores on the rows where every input is present; other rows stay flat (NaN)."""
    columns = list(head.feature_names)
    usable = frame.dropna(subset=columns)
    scores = pd.Series(np.nan, index=frame.index, dtype=float)
    if len(usable):
        scores.loc[usable.index] = head.predict(usable[columns])
    return scores


def _fit_candidate(kind, columns, train, validation, config, threads, symbol):
    from engine_assets.heads.fit import fit_head, learned_nothing

    head = fit_head(
        kind,
        train[columns],
        train[LABEL_COLUMN],
        validation[columns],
        validation[LABEL_COLUMN],
        seed=config.seed,
        threads=threads,
    )
    reason = learned_nothing(head, train[columns], train[LABEL_COLUMN])
    if reason:
        return head, None, None, reason
    validation_scores = _scores(head, validation)
    threshold = choose_threshold(validation_scores, validation[NEXT_RETURN_COLUMN], config.costs)
    result = _evaluate(validation_scores, validation[NEXT_RETURN_COLUMN], threshold, config.costs)
    return head, threshold, result, None


def _equity_csv(results: dict) -> bytes:
    frame = pd.DataFrame({name: result.net_equity for name, result in results.items()})
    frame.index.name = "date"
    buffer = io.StringIO()
    frame.to_csv(buffer, float_format="%.10g")
    return buffer.getvalue().encode()


def score_champion(store, cache_root, symbol, pointer, frame, windows, config, loaded):
    """Score the current champion on today's holdout; returns (result or None, note)."""
    champion_windows = pointer.get("windows", {})
    validation_end = champion_windows.get("validation_end")
    if validation_end and pd.Timestamp(validation_end) > windows.holdout_start:
        return None, (
            f"champion {pointer['path']} selected its head on data up to {validation_end}, "
            f"after today's holdout start {windows.holdout_start.isoformat()}, so it cannot be scored fairly"
        )
    head = load_champion_head(store, pointer)
    grid = frame[["open", "high", "low", "close", "volume"]]
    embeddings, _ = embeddings_for(store, cache_root, pointer["encoder_path"], symbol, grid, loaded)
    champion_frame = frame.drop(columns=[c for c in frame.columns if c.startswith("emb_")]).join(embeddings)
    holdout = split(champion_frame, windows)["holdout"]
    result = _evaluate(_scores(head, holdout), holdout[NEXT_RETURN_COLUMN], float(pointer["threshold"]), config.costs)
    return result, None


def train_coin(
    symbol: str,
    candles: pd.DataFrame,
    features: pd.DataFrame,
    encoder_ref: dict,
    store: ArtifactStore,
    cache_root: Path,
    lock_dir: Path,
    timeframe_seconds: int,
    config: TrainingConfig | None = None,
    *,
    threads: int = 1,
    now: dt.datetime | None = None,
) -> CoinOutcome:
    """Train, score and maybe promote one coin's model; a skip is returned, an error raised."""
    from engine_assets.heads.fit import HEAD_KINDS, drop_zero_variance

    config = config or TrainingConfig()
    now = now or dt.datetime.now(dt.timezone.utc)
    windows = make_windows(pd.Timestamp(encoder_ref["cutoff"]), timeframe_seconds, config.windows)
    grid = to_grid(candles, timeframe_seconds)
    encoder_window = int(encoder_ref.get("config", {}).get("window", 1))
    required = required_candles(config.windows, feature_lookback(config.features), encoder_window)
    try:
        check_history(grid, windows, required)
    except InsufficientHistoryError as error:
        return CoinOutcome(symbol=symbol, status="skipped", reason=str(error))

    loaded: dict = {}
    embeddings, from_cache = embeddings_for(store, cache_root, encoder_ref["path"], symbol, grid, loaded)
    frame = grid.join(features).join(embeddings)
    feature_columns = [c for c in features.columns if c not in (LABEL_COLUMN, NEXT_RETURN_COLUMN)]
    embedding_columns = list(embeddings.columns)
    parts = split(frame, windows)
    train = _finite_rows(parts["train"], feature_columns + embedding_columns + [LABEL_COLUMN], symbol, "training matrix")
    validation = _finite_rows(
        parts["validation"], feature_columns + embedding_columns + [LABEL_COLUMN], symbol, "validation matrix"
    )
    holdout = parts["holdout"]
    if len(train) == 0 or len(validation) == 0:
        return CoinOutcome(
            symbol=symbol,
            status="skipped",
            reason=f"insufficient history: {len(train)} usable training rows and {len(validation)} validation rows",
        )

    kept, dropped = drop_zero_variance(train[feature_columns + embedding_columns])
    candidates, no_learning = {}, {}
    for kind in HEAD_KINDS:
        head, threshold, result, reason = _fit_candidate(kind, kept, train, validation, config, threads, symbol)
        if reason:
            no_learning[kind] = reason
        else:
            candidates[kind] = (head, threshold, result)
    if not candidates:
        reasons = "; ".join(f"{kind}: {reason}" for kind, reason in no_learning.items())
        return CoinOutcome(symbol=symbol, status="skipped", reason=f"head learned nothing ({reasons})")

    best_kind = max(candidates, key=lambda kind: candidates[kind][2].net.sharpe)
    head, threshold, _ = candidates[best_kind]
    holdout_result = _evaluate(_scores(head, holdout), holdout[NEXT_RETURN_COLUMN], threshold, config.costs)
    hold_result = buy_and_hold(holdout[NEXT_RETURN_COLUMN], config.costs)

    # The head-only baseline: the same kind of head without the encoder's embeddings.
    head_only_columns = [c for c in kept if c not in embedding_columns]
    base_head, base_threshold, _, base_reason = _fit_candidate(
        best_kind, head_only_columns, train, validation, config, threads, symbol
    )
    head_only = None
    if base_reason is None:
        head_only = _evaluate(_scores(base_head, holdout), holdout[NEXT_RETURN_COLUMN], base_threshold, config.costs)

    with champion_lock(lock_dir, symbol):
        pointer = read_champion(store, symbol)
        champion_result, champion_note = None, None
        if pointer:
            try:
                champion_result, champion_note = score_champion(
                    store, cache_root, symbol, pointer, frame, windows, config, loaded
                )
            except (IntegrityError, StorageError, KeyError, ValueError, OSError) as error:
                champion_note = f"champion {pointer.get('path')} cannot be loaded: {error}"
                logger.warning("%s: %s", symbol, champion_note)
        decision = decide_promotion(
            metrics_to_dict(holdout_result)["net"],
            metrics_to_dict(champion_result)["net"] if champion_result else None,
            config.promotion,
        )
        reason = decision.reason
        if pointer and champion_result is None:
            reason = f"{champion_note}; {reason}"

        importance = head.feature_importance()
        top = dict(sorted(importance.items(), key=lambda item: -item[1])[:TOP_FEATURES])
        metrics = {
            "symbol": symbol,
            "cutoff": encoder_ref["cutoff"],
            "windows": windows.to_dict(),
            "encoder_path": encoder_ref["path"],
            "embeddings_from_cache": from_cache,
            "head": best_kind,
            "threshold": threshold,
            "rows": {"train": len(train), "validation": len(validation), "holdout": len(holdout)},
            "columns": {"kept": kept, "dropped_zero_variance": dropped},
            "validation": {kind: metrics_to_dict(c[2]) for kind, c in candidates.items()},
            "heads_without_learning": no_learning,
            "holdout": metrics_to_dict(holdout_result),
            "buy_and_hold": metrics_to_dict(hold_result),
            "head_only": metrics_to_dict(head_only) if head_only else {"skipped": base_reason},
            "champion": {
                "path": pointer.get("path") if pointer else None,
                "holdout": metrics_to_dict(champion_result) if champion_result else None,
                "note": champion_note,
            },
            "decision": {"promote": decision.promote, "reason": reason},
            "feature_importance_top": top,
            "costs": asdict(config.costs),
            "promotion_rules": asdict(config.promotion),
            "trained_at": now.isoformat(timespec="seconds"),
        }
        files = dict(head.to_files())
        curves = {"model": holdout_result, "buy_and_hold": hold_result}
        if head_only:
            curves["head_only"] = head_only
        files["equity.csv"] = _equity_csv(curves)
        files["metrics.json"] = json.dumps(metrics, indent=2, sort_keys=True, default=float).encode()
        folder = f"models/{symbol}/{model_timestamp(now)}"
        while store.exists(f"{folder}/manifest.json"):
            now += dt.timedelta(seconds=1)
            folder = f"models/{symbol}/{model_timestamp(now)}"
        published = publish_folder(
            store, folder, files, extra={"kind": "model", "symbol": symbol, "encoder_path": encoder_ref["path"]}
        )
        if decision.promote:
            promote(
                store,
                symbol,
                folder,
                {
                    "symbol": symbol,
                    "encoder_path": encoder_ref["path"],
                    "head": best_kind,
                    "head_files": sorted(head.to_files()),
                    "threshold": threshold,
                    "cutoff": encoder_ref["cutoff"],
                    "windows": windows.to_dict(),
                    "holdout_net": metrics["holdout"]["net"],
                    "promoted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "replaced": pointer.get("path") if pointer else None,
                },
            )
    if decision.promote:
        champion_path = folder
    elif pointer:
        champion_path = pointer.get("path")
    else:
        champion_path = None
    return CoinOutcome(
        symbol=symbol,
        status="succeeded",
        head=best_kind,
        model_path=folder,
        manifest_sha256=published.manifest_sha256,
        champion_changed=decision.promote,
        champion_path=champion_path,
        decision=reason,
        metrics=metrics,
    )
