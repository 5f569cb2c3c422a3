"""Tests of the XGBoost and LightGBM heads: fitting, file round trips, importance and learned-nothing checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engine_assets.heads.fit import (
    HEAD_KINDS,
    Head,
    HeadFileError,
    drop_zero_variance,
    fit_head,
    learned_nothing,
    load_head,
)


def make_data(rows: int, columns: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """Build features and a label that depends on the first two features plus noise."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(rows, columns)), columns=[f"feature_{i}" for i in range(columns)])
    X.iloc[rng.integers(0, rows, size=rows // 20), 3] = np.nan
    y = 0.004 * X["feature_0"] - 0.002 * X["feature_1"] + rng.normal(0.0, 0.005, rows)
    return X, y


@pytest.fixture(scope="module")
def data():
    X, y = make_data(1500, 8, seed=1)
    return X.iloc[:1200], y.iloc[:1200], X.iloc[1200:], y.iloc[1200:]


@pytest.fixture(scope="module", params=HEAD_KINDS)
def fitted(request, data) -> Head:
    X_train, y_train, X_val, y_val = data
    return fit_head(request.param, X_train, y_train, X_val, y_val, seed=3)


def test_fit_learns_signal(fitted, data):
    X_train, y_train, X_val, y_val = data
    predictions = fitted.predict(X_val)
    assert predictions.shape == (len(X_val),)
    assert predictions.dtype == np.float64
    assert np.corrcoef(predictions, y_val)[0, 1] > 0.5
    assert learned_nothing(fitted, X_train, y_train) is None


def test_files_round_trip(fitted, data):
    X_train, _, X_val, _ = data
    files = fitted.to_files()
    model_file = "model.ubj" if fitted.kind == "xgboost" else "model.txt"
    assert sorted(files) == sorted(["head.json", model_file])
    document = json.loads(files["head.json"])
    assert document["kind"] == fitted.kind
    assert document["feature_names"] == list(X_train.columns)
    assert document["best_iteration"] == fitted.best_iteration

    loaded = load_head(files)
    assert loaded.kind == fitted.kind
    assert loaded.feature_names == fitted.feature_names
    np.testing.assert_array_equal(loaded.predict(X_val), fitted.predict(X_val))
    np.testing.assert_array_equal(loaded.predict(X_train), fitted.predict(X_train))
    assert loaded.feature_importance() == fitted.feature_importance()


def test_files_are_not_pickles(fitted):
    files = fitted.to_files()
    for name, payload in files.items():
        # A pickle starts with the PROTO opcode 0x80.
        assert not payload.startswith(b"\x80"), name


def test_load_rejects_missing_model_file(fitted):
    files = fitted.to_files()
    files = {"head.json": files["head.json"]}
    with pytest.raises(HeadFileError, match="missing model"):
        load_head(files)


def test_fit_seeded_deterministic(fitted, data):
    X_train, y_train, X_val, y_val = data
    again = fit_head(fitted.kind, X_train, y_train, X_val, y_val, seed=3)
    assert again.best_iteration == fitted.best_iteration
    np.testing.assert_array_equal(again.predict(X_val), fitted.predict(X_val))
    assert again.to_files()["head.json"] == fitted.to_files()["head.json"]


def test_predict_reorders_columns(fitted, data):
    _, _, X_val, _ = data
    shuffled = X_val[list(reversed(X_val.columns))].assign(extra=1.0)
    np.testing.assert_array_equal(fitted.predict(shuffled), fitted.predict(X_val))


def test_predict_missing_column_named(fitted, data):
    _, _, X_val, _ = data
    with pytest.raises(ValueError, match="missing 1 feature columns: feature_5"):
        fitted.predict(X_val.drop(columns=["feature_5"]))


def test_importance_sums_to_one(fitted, data):
    importance = fitted.feature_importance()
    assert list(importance) == fitted.feature_names
    assert all(value >= 0.0 for value in importance.values())
    assert sum(importance.values()) == pytest.approx(1.0)
    assert max(importance, key=importance.get) == "feature_0"


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_learned_nothing_constant_label(kind, data):
    X_train, _, X_val, _ = data
    y_train = np.zeros(len(X_train))
    head = fit_head(kind, X_train, y_train, X_val, np.zeros(len(X_val)), seed=3)
    assert learned_nothing(head, X_train, y_train) == "constant label: every training label equals 0.0"


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_learned_nothing_no_splits(kind):
    # 30 rows are fewer than the default minimum leaf sizes, so no split is possible.
    X, y = make_data(40, 5, seed=4)
    head = fit_head(kind, X.iloc[:30], y.iloc[:30], X.iloc[30:], y.iloc[30:], seed=3)
    assert all(count == 1 for count in head.tree_leaf_counts())
    reason = learned_nothing(head, X.iloc[:30], y.iloc[:30])
    assert reason is not None
    assert reason.startswith("no splits: all")
    assert "single leaf" in reason
    assert all(value == 0.0 for value in head.feature_importance().values())


def test_fit_rejects_unknown_kind(data):
    X_train, y_train, X_val, y_val = data
    with pytest.raises(ValueError, match="invalid head kind 'catboost'"):
        fit_head("catboost", X_train, y_train, X_val, y_val, seed=3)


def test_fit_rejects_nan_label(data):
    X_train, y_train, X_val, y_val = data
    labels = y_train.to_numpy().copy()
    labels[5] = np.nan
    with pytest.raises(ValueError, match="training labels contain 1 non-finite values"):
        fit_head("lightgbm", X_train, labels, X_val, y_val, seed=3)


def test_fit_params_override(data):
    X_train, y_train, X_val, y_val = data
    head = fit_head("xgboost", X_train, y_train, X_val, y_val, seed=3, params={"num_boost_round": 5, "max_depth": 2})
    assert head.best_iteration <= 4
    assert head.params["max_depth"] == 2
    assert head.params["num_boost_round"] == 5


def test_drop_zero_variance_columns():
    train = pd.DataFrame(
        {
            "varied": [1.0, 2.0, 3.0, 4.0],
            "constant": [5.0, 5.0, 5.0, 5.0],
            "all_nan": [np.nan] * 4,
            "one_value_and_nan": [2.0, np.nan, 2.0, np.nan],
            "two_values": [0.0, 0.0, 0.0, 1e-12],
        }
    )
    kept, dropped = drop_zero_variance(train)
    assert kept == ["varied", "two_values"]
    assert dropped == ["constant", "all_nan", "one_value_and_nan"]
