"""Per-coin gradient-boosted heads (XGBoost or LightGBM) on features and embeddings.

A head is a regression on the forward log return, fitted with early stopping
on a validation window. Heads are saved in their libraries' own formats
(XGBoost UBJSON, LightGBM text) plus a ``head.json``, never as pickles.
Importing this module imports xgboost and lightgbm.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightgbm
import numpy as np
import pandas as pd
import xgboost

logger = logging.getLogger(__name__)

HEAD_KINDS = ("xgboost", "lightgbm")
HEAD_FILE = "head.json"
XGBOOST_MODEL_FILE = "model.ubj"
LIGHTGBM_MODEL_FILE = "model.txt"
HEAD_FILE_FORMAT = 1

# Boosting rounds and early-stopping patience of both kinds. ``params`` can
# override them under the names num_boost_round and early_stopping_rounds.
DEFAULT_NUM_BOOST_ROUND = 300
DEFAULT_EARLY_STOPPING_ROUNDS = 30

# Shallow trees, a small learning rate and row and column subsampling, because
# hourly returns are mostly noise and a coin's fit should stay cheap. A fit of
# 8,000 rows by 60 random columns took about 0.2 s on one thread of a 2-core
# x86 VM (xgboost 3.2, lightgbm 4.7).
XGBOOST_DEFAULTS: dict[str, Any] = {
    "objective": "reg:squarederror",
    "eval_metric": "rmse",
    "tree_method": "hist",
    "max_depth": 4,
    "learning_rate": 0.05,
    "min_child_weight": 20.0,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "max_bin": 64,
}
LIGHTGBM_DEFAULTS: dict[str, Any] = {
    "objective": "regression",
    "metric": "rmse",
    "num_leaves": 15,
    "max_depth": 4,
    "learning_rate": 0.05,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 63,
    "force_row_wise": True,
    "deterministic": True,
    "verbosity": -1,
}


class HeadFileError(ValueError):
    """A head file set that is incomplete or unreadable."""


class Head:
    """A fitted regression head: the booster, its feature names and the settings it was fitted with.

    The booster contains exactly the trees up to the best early-stopping
    iteration, so predictions need no iteration argument.
    """

    def __init__(
        self,
        kind: str,
        booster: xgboost.Booster | lightgbm.Booster,
        feature_names: Sequence[str],
        params: Mapping[str, Any],
        best_iteration: int,
    ) -> None:
        if kind not in HEAD_KINDS:
            raise ValueError(f"invalid head kind {kind!r}: expected one of {', '.join(HEAD_KINDS)}")
        self.kind = kind
        self.booster = booster
        self.feature_names = list(feature_names)
        self.params = dict(params)
        self.best_iteration = int(best_iteration)

    def __repr__(self) -> str:
        return f"Head(kind={self.kind!r}, features={len(self.feature_names)}, best_iteration={self.best_iteration})"

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        missing = [name for name in self.feature_names if name not in X.columns]
        if missing:
            listed = ", ".join(missing[:10])
            if len(missing) > 10:
                listed += f" and {len(missing) - 10} more"
            raise ValueError(
                f"{self.kind} head input is missing {len(missing)} feature columns: {listed}; "
                "build the features with the same settings as at training time"
            )
        return X.loc[:, self.feature_names].to_numpy(dtype=np.float64)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Predict the forward log return for each row of ``X``, selecting the feature columns by name."""
        matrix = self._matrix(X)
        if self.kind == "xgboost":
            dmatrix = xgboost.DMatrix(matrix, feature_names=self.feature_names, nthread=1)
            return np.asarray(self.booster.predict(dmatrix), dtype=np.float64)
        return np.asarray(self.booster.predict(matrix, num_threads=1), dtype=np.float64)

    def feature_importance(self) -> dict[str, float]:
        """Return each feature's share of the total split gain; all zeros when the head has no splits.

        XGBoost's ``total_gain`` and LightGBM's ``gain`` are both the sum over
        all splits on a feature, so the shares are comparable between kinds.
        """
        if self.kind == "xgboost":
            scores = self.booster.get_score(importance_type="total_gain")
            gains = np.array([float(scores.get(name, 0.0)) for name in self.feature_names])
        else:
            gains = np.asarray(self.booster.feature_importance(importance_type="gain"), dtype=np.float64)
        total = gains.sum()
        if total <= 0:
            return {name: 0.0 for name in self.feature_names}
        return {name: float(gain / total) for name, gain in zip(self.feature_names, gains)}

    def tree_leaf_counts(self) -> list[int]:
        """Count the leaves of every tree; a tree with one leaf made no split."""
        if self.kind == "xgboost":
            return [tree.count("leaf=") for tree in self.booster.get_dump(dump_format="text")]
        dump = self.booster.dump_model()
        return [int(tree["num_leaves"]) for tree in dump["tree_info"]]

    def to_files(self) -> dict[str, bytes]:
        """Serialize into the library's own model file and ``head.json``."""
        if self.kind == "xgboost":
            model_name = XGBOOST_MODEL_FILE
            model_bytes = bytes(self.booster.save_raw(raw_format="ubj"))
            library_version = xgboost.__version__
        else:
            model_name = LIGHTGBM_MODEL_FILE
            model_bytes = self.booster.model_to_string().encode("utf-8")
            library_version = lightgbm.__version__
        document = {
            "format": HEAD_FILE_FORMAT,
            "kind": self.kind,
            "model_file": model_name,
            "feature_names": self.feature_names,
            "params": self.params,
            "best_iteration": self.best_iteration,
            "library_version": library_version,
        }
        return {model_name: model_bytes, HEAD_FILE: json.dumps(document, indent=2, sort_keys=True).encode("utf-8")}


def load_head(files: Mapping[str, bytes]) -> Head:
    """Load a head written by :meth:`Head.to_files`."""
    if HEAD_FILE not in files:
        raise HeadFileError(f"head files are missing {HEAD_FILE}; got {sorted(files)}")
    try:
        document = json.loads(files[HEAD_FILE].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeadFileError(f"{HEAD_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != HEAD_FILE_FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise HeadFileError(f"{HEAD_FILE} has format {found!r}; this code reads format {HEAD_FILE_FORMAT}")
    kind = document.get("kind")
    if kind not in HEAD_KINDS:
        raise HeadFileError(f"{HEAD_FILE} names head kind {kind!r}; expected one of {', '.join(HEAD_KINDS)}")
    model_name = XGBOOST_MODEL_FILE if kind == "xgboost" else LIGHTGBM_MODEL_FILE
    if model_name not in files:
        raise HeadFileError(f"{kind} head files are missing {model_name}; got {sorted(files)}")

    feature_names = list(document["feature_names"])
    try:
        if kind == "xgboost":
            booster = xgboost.Booster()
            booster.load_model(bytearray(files[model_name]))
        else:
            booster = lightgbm.Booster(model_str=files[model_name].decode("utf-8"))
    except (xgboost.core.XGBoostError, lightgbm.basic.LightGBMError, UnicodeDecodeError) as exc:
        raise HeadFileError(f"{model_name} is not a readable {kind} model: {exc}") from exc

    stored_names = list(booster.feature_names or []) if kind == "xgboost" else list(booster.feature_name())
    if stored_names != feature_names:
        raise HeadFileError(
            f"{model_name} has features {stored_names[:5]}... but {HEAD_FILE} lists {feature_names[:5]}...; "
            "the two files come from different heads"
        )
    return Head(kind, booster, feature_names, document.get("params", {}), document.get("best_iteration", 0))


def drop_zero_variance(train: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Split the columns into kept and dropped, dropping those with at most one distinct value on ``train``.

    All-NaN columns count as zero variance. Distinct values are compared
    exactly, so a column that is constant up to rounding is kept.
    """
    kept: list[str] = []
    dropped: list[str] = []
    for column in train.columns:
        if train[column].nunique(dropna=True) <= 1:
            dropped.append(column)
        else:
            kept.append(column)
    return kept, dropped


def _split_params(
    defaults: Mapping[str, Any], params: Mapping[str, Any] | None
) -> tuple[dict[str, Any], int, int]:
    merged = dict(defaults)
    merged.update(params or {})
    num_boost_round = int(merged.pop("num_boost_round", DEFAULT_NUM_BOOST_ROUND))
    early_stopping_rounds = int(merged.pop("early_stopping_rounds", DEFAULT_EARLY_STOPPING_ROUNDS))
    if num_boost_round < 1 or early_stopping_rounds < 1:
        raise ValueError(
            f"invalid head params: num_boost_round={num_boost_round} and "
            f"early_stopping_rounds={early_stopping_rounds} must both be at least 1"
        )
    return merged, num_boost_round, early_stopping_rounds


def _check_inputs(
    X_train: pd.DataFrame, y_train: Any, X_val: pd.DataFrame, y_val: Any
) -> tuple[list[str], np.ndarray, np.ndarray]:
    feature_names = [str(name) for name in X_train.columns]
    if not feature_names:
        raise ValueError("head training input has no feature columns")
    if len(set(feature_names)) != len(feature_names):
        duplicated = sorted({name for name in feature_names if feature_names.count(name) > 1})
        raise ValueError(f"head training input has duplicated feature columns {duplicated}")
    if list(X_val.columns) != list(X_train.columns):
        raise ValueError("head validation columns differ from the training columns; pass the same columns in the same order")
    y_train_array = np.asarray(y_train, dtype=np.float64).reshape(-1)
    y_val_array = np.asarray(y_val, dtype=np.float64).reshape(-1)
    for name, X, y in (("training", X_train, y_train_array), ("validation", X_val, y_val_array)):
        if len(X) == 0:
            raise ValueError(f"head {name} set is empty; early stopping needs at least one {name} row")
        if len(X) != len(y):
            raise ValueError(f"head {name} set has {len(X)} feature rows but {len(y)} labels")
        bad = int((~np.isfinite(y)).sum())
        if bad:
            raise ValueError(f"head {name} labels contain {bad} non-finite values; drop those rows before fitting")
    return feature_names, y_train_array, y_val_array


def fit_head(
    kind: str,
    X_train: pd.DataFrame,
    y_train: Any,
    X_val: pd.DataFrame,
    y_val: Any,
    *,
    seed: int,
    threads: int = 1,
    params: Mapping[str, Any] | None = None,
) -> Head:
    """Fit a regression head on the forward log return, early-stopping on the validation rows.

    ``params`` override the library defaults (``XGBOOST_DEFAULTS`` or
    ``LIGHTGBM_DEFAULTS``) and may set ``num_boost_round`` and
    ``early_stopping_rounds``. Features may contain NaN; labels may not. The
    same inputs, seed and thread count give the same model.
    """
    if kind not in HEAD_KINDS:
        raise ValueError(f"invalid head kind {kind!r}: expected one of {', '.join(HEAD_KINDS)}")
    if threads < 1:
        raise ValueError(f"invalid threads={threads}: expected at least 1")
    feature_names, train_labels, validation_labels = _check_inputs(X_train, y_train, X_val, y_val)
    train_matrix = X_train.to_numpy(dtype=np.float64)
    validation_matrix = X_val.to_numpy(dtype=np.float64)

    if kind == "xgboost":
        library_params, num_boost_round, early_stopping_rounds = _split_params(XGBOOST_DEFAULTS, params)
        library_params.update({"seed": seed, "nthread": threads})
        train_data = xgboost.DMatrix(train_matrix, label=train_labels, feature_names=feature_names, nthread=threads)
        validation_data = xgboost.DMatrix(
            validation_matrix, label=validation_labels, feature_names=feature_names, nthread=threads
        )
        booster = xgboost.train(
            library_params,
            train_data,
            num_boost_round=num_boost_round,
            evals=[(validation_data, "validation")],
            early_stopping_rounds=early_stopping_rounds,
            verbose_eval=False,
        )
        best_iteration = int(booster.best_iteration)
        # Keep only the trees up to the best iteration, so the saved model and
        # its predictions need no iteration range.
        booster = booster[: best_iteration + 1]
    else:
        library_params, num_boost_round, early_stopping_rounds = _split_params(LIGHTGBM_DEFAULTS, params)
        library_params.update({"seed": seed, "num_threads": threads})
        train_data = lightgbm.Dataset(
            train_matrix, label=train_labels, feature_name=feature_names, params=library_params, free_raw_data=True
        )
        validation_data = lightgbm.Dataset(
            validation_matrix, label=validation_labels, reference=train_data, params=library_params
        )
        booster = lightgbm.train(
            library_params,
            train_data,
            num_boost_round=num_boost_round,
            valid_sets=[validation_data],
            valid_names=["validation"],
            callbacks=[lightgbm.early_stopping(early_stopping_rounds, verbose=False)],
        )
        # LightGBM counts iterations from 1; store 0-based like XGBoost.
        best_iteration = max(int(booster.best_iteration), 1) - 1
        booster = lightgbm.Booster(model_str=booster.model_to_string(num_iteration=best_iteration + 1))

    params_record = dict(library_params)
    params_record.update({"num_boost_round": num_boost_round, "early_stopping_rounds": early_stopping_rounds})
    head = Head(kind, booster, feature_names, params_record, best_iteration)
    logger.info(
        "%s head fitted on %d rows and %d features: best iteration %d of %d",
        kind,
        len(train_labels),
        len(feature_names),
        best_iteration,
        num_boost_round,
    )
    return head


def learned_nothing(head: Head, X_train: pd.DataFrame, y_train: Any) -> str | None:
    """Return why ``head`` learned nothing from its training rows, or None when it did.

    The checks, in order: every label equal; every tree a single leaf (which
    LightGBM only warns about, so the dumped model is inspected); every
    prediction on the training rows equal.
    """
    labels = np.asarray(y_train, dtype=np.float64).reshape(-1)
    if len(labels) and np.all(labels == labels[0]):
        return f"constant label: every training label equals {float(labels[0])!r}"

    leaf_counts = head.tree_leaf_counts()
    if all(count <= 1 for count in leaf_counts):
        library = "XGBoost" if head.kind == "xgboost" else "LightGBM"
        return (
            f"no splits: all {len(leaf_counts)} {library} trees are a single leaf "
            f"({len(labels)} training rows may be too few for the minimum leaf size)"
        )

    predictions = head.predict(X_train)
    if len(predictions) and np.all(predictions == predictions[0]):
        return f"constant predictions: every prediction on the {len(predictions)} training rows equals {float(predictions[0])!r}"
    return None
