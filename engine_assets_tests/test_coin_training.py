"""Pipeline tests of one coin's training on synthetic candle files: causality, skips, price scale, flat candles, promotion, atomic publishing and reports."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine_assets.data.validation import load_symbol_candles
from engine_assets.encoder.model import EncoderConfig
from engine_assets.features.build import build_features, build_label, feature_lookback, next_returns, to_grid
from engine_assets.features.windows import make_windows, required_candles, split
from engine_assets.heads.fit import load_head
from engine_assets.scheduling.ledger import Ledger
from engine_assets.settings import EngineSettings
from engine_assets.storage.base import IntegrityError
from engine_assets.storage.local import LocalArtifactStore
from engine_assets.storage.manifest import read_json, verify_folder
from engine_assets.training.coin_stage import LABEL_COLUMN, NEXT_RETURN_COLUMN, CoinOutcome, train_coin
from engine_assets.training.config import TrainingConfig
from engine_assets.training.embeddings import embeddings_for
from engine_assets.training.encoder_stage import train_shared_encoder
from engine_assets.training.reports import build_roster, build_summary
from engine_assets_tests.synthetic import random_walk_candles, write_pair

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
DAY = "20250101Z"
HOUR = pd.Timedelta(hours=1)
ROWS = 6000
PRICE_COLUMNS = ["open", "high", "low", "close"]
# The AR(1) coefficient of the one-candle log returns. It gives the heads a
# trend to learn, so a fresh model passes the default promotion guards
# (5 trades, 50 % max drawdown) after costs.
AUTOCORRELATION = 0.35
# The coins the shared encoder trains on, with their random seeds.
ENCODER_COINS = {"AAA": 1, "BBB": 2}
ENCODER = EncoderConfig(
    window=16, embedding_dim=4, hidden=16, epochs=1, batch_size=256, max_samples_per_coin=500, target_horizon=4
)
TRAINING = TrainingConfig()


@dataclasses.dataclass
class Engine:
    """One ENGINE_HOME with its settings, artifact store and ledger."""

    settings: EngineSettings
    store: LocalArtifactStore
    ledger: Ledger

    @property
    def lock_dir(self) -> Path:
        return self.settings.home / "locks"


@dataclasses.dataclass
class CoinInputs:
    """A coin's validated candles, their grid and the feature frame that train_coin reads."""

    candles: pd.DataFrame
    grid: pd.DataFrame
    features: pd.DataFrame

    def feature_columns(self) -> pd.DataFrame:
        return self.features.drop(columns=[LABEL_COLUMN, NEXT_RETURN_COLUMN])


@dataclasses.dataclass
class BaseRun:
    """The shared starting point: an encoder and a first champion for each encoder coin."""

    home: Path
    data_dir: Path
    ref: dict
    outcomes: dict[str, CoinOutcome]


class FailingStore(LocalArtifactStore):
    """A local store whose ``fail_on``-th write under ``models/`` raises OSError."""

    def __init__(self, root, fail_on: int):
        super().__init__(root)
        self.fail_on = fail_on
        self.model_writes = 0

    def write_bytes(self, key: str, data: bytes) -> None:
        if key.startswith("models/"):
            self.model_writes += 1
            if self.model_writes == self.fail_on:
                raise OSError(f"simulated disk full while writing {key}")
        super().write_bytes(key, data)


def make_engine(home: Path, data_dir: Path, store: LocalArtifactStore | None = None) -> Engine:
    settings = EngineSettings.from_env({"ENGINE_HOME": str(home), "ENGINE_DATA_DIR": str(data_dir)})
    store = store or LocalArtifactStore(settings.storage_root)
    return Engine(settings, store, Ledger(store, DAY, settings.home / "locks"))


def train_encoder(engine: Engine) -> dict:
    outcome = train_shared_encoder(engine.settings, engine.store, engine.ledger, TRAINING, ENCODER, threads=1, now=NOW)
    return outcome.ref


def coin_inputs(data_dir: Path, symbol: str) -> CoinInputs:
    candles, _report = load_symbol_candles(data_dir, symbol, "1h")
    grid = to_grid(candles, 3600)
    features = build_features(grid, TRAINING.features)
    features[LABEL_COLUMN] = build_label(grid, TRAINING.windows.label_horizon)
    features[NEXT_RETURN_COLUMN] = next_returns(grid)
    return CoinInputs(candles, grid, features)


def train(engine: Engine, symbol: str, ref: dict, inputs: CoinInputs | None = None) -> CoinOutcome:
    inputs = inputs or coin_inputs(engine.settings.data_dir, symbol)
    return train_coin(
        symbol,
        inputs.candles,
        inputs.features,
        ref,
        engine.store,
        engine.settings.cache_root,
        engine.lock_dir,
        3600,
        TRAINING,
        threads=1,
        now=NOW,
    )


def encoder_coin(base: str) -> pd.DataFrame:
    return random_walk_candles(ROWS, seed=ENCODER_COINS[base], autocorrelation=AUTOCORRELATION)


def published_head(store: LocalArtifactStore, folder: str):
    """Load the head of a model folder from its verified files."""
    return load_head(verify_folder(store, folder))


def predictions_until(head, inputs: CoinInputs, embeddings: pd.DataFrame, until: pd.Timestamp) -> pd.Series:
    """Return the head's predictions at every row up to ``until`` whose inputs are all present."""
    frame = inputs.feature_columns().join(embeddings).loc[:until].dropna(subset=head.feature_names)
    return pd.Series(head.predict(frame), index=frame.index)


def file_bytes(engine: Engine, key: str) -> bytes:
    return (engine.settings.storage_root / key).read_bytes()


def champion_pointer(engine: Engine, symbol: str) -> dict | None:
    return read_json(engine.store, f"champions/{symbol}.json")


def model_folders(engine: Engine, symbol: str) -> list[str]:
    return [f"models/{symbol}/{name}" for name in engine.store.list_folders(f"models/{symbol}")]


def write_coin(frame: pd.DataFrame, data_dir: Path, base: str) -> CoinInputs:
    write_pair(frame, data_dir, base)
    return coin_inputs(data_dir, f"{base}USDT")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> BaseRun:
    root = tmp_path_factory.mktemp("base")
    data_dir = root / "data"
    for name in ENCODER_COINS:
        write_pair(encoder_coin(name), data_dir, name)
    engine = make_engine(root / "home", data_dir)
    ref = train_encoder(engine)
    outcomes = {f"{name}USDT": train(engine, f"{name}USDT", ref) for name in ENCODER_COINS}
    return BaseRun(root / "home", data_dir, ref, outcomes)


@pytest.fixture
def engine(base_run, tmp_path) -> Engine:
    """A copy of the base run's ENGINE_HOME, so each test changes its own champions."""
    home = tmp_path / "home"
    shutil.copytree(base_run.home, home)
    return make_engine(home, base_run.data_dir)


def change_after(frame: pd.DataFrame, moment: pd.Timestamp, seed: int) -> pd.DataFrame:
    """Return ``frame`` with the prices and volume of every candle after ``moment`` changed."""
    changed = frame.copy()
    later = (changed["date"] > moment).to_numpy()
    rng = np.random.default_rng(seed)
    factors = np.exp(np.cumsum(rng.normal(0.0, 0.02, later.sum())))
    for column in PRICE_COLUMNS:
        changed.loc[later, column] = changed.loc[later, column].to_numpy() * factors
    changed.loc[later, "volume"] = changed.loc[later, "volume"].to_numpy() * rng.uniform(0.2, 5.0, later.sum())
    return changed


def test_causality_end_to_end(base_run, engine, tmp_path):
    cutoff = pd.Timestamp(base_run.ref["cutoff"])
    windows = make_windows(cutoff, 3600, TRAINING.windows)
    moment = windows.holdout_start + 700 * HOUR
    assert windows.holdout_start < moment < windows.holdout_end

    changed_dir = tmp_path / "changed_data"
    for name in ENCODER_COINS:
        write_pair(change_after(encoder_coin(name), moment, seed=100 + ENCODER_COINS[name]), changed_dir, name)
    changed = make_engine(tmp_path / "changed_home", changed_dir)
    changed_ref = train_encoder(changed)
    assert changed_ref["cutoff"] == base_run.ref["cutoff"]

    for name in ENCODER_COINS:
        symbol = f"{name}USDT"
        original_inputs = coin_inputs(base_run.data_dir, symbol)
        changed_inputs = coin_inputs(changed_dir, symbol)
        later = original_inputs.grid.index > moment
        assert later.sum() == 1440 - 700 - 1
        assert (original_inputs.grid.loc[later, "close"] != changed_inputs.grid.loc[later, "close"]).all()
        assert (original_inputs.grid.loc[later, "volume"] != changed_inputs.grid.loc[later, "volume"]).all()

        changed_outcome = train(changed, symbol, changed_ref, changed_inputs)
        assert changed_outcome.status == "succeeded"
        assert champion_pointer(changed, symbol)["path"] == changed_outcome.model_path
        original_outcome = base_run.outcomes[symbol]
        assert champion_pointer(engine, symbol)["path"] == original_outcome.model_path

        pd.testing.assert_frame_equal(
            original_inputs.feature_columns().loc[:moment],
            changed_inputs.feature_columns().loc[:moment],
            check_exact=True,
        )

        original_embeddings, _ = embeddings_for(
            engine.store, engine.settings.cache_root, base_run.ref["path"], symbol, original_inputs.grid
        )
        changed_embeddings, _ = embeddings_for(
            changed.store, changed.settings.cache_root, changed_ref["path"], symbol, changed_inputs.grid
        )
        pd.testing.assert_frame_equal(
            original_embeddings.loc[:moment], changed_embeddings.loc[:moment], check_exact=True
        )
        assert original_embeddings.loc[:moment].iloc[ENCODER.window :].notna().all().all()

        original_head = published_head(engine.store, original_outcome.model_path)
        changed_head = published_head(changed.store, changed_outcome.model_path)
        original_predictions = predictions_until(original_head, original_inputs, original_embeddings, moment)
        changed_predictions = predictions_until(changed_head, changed_inputs, changed_embeddings, moment)
        assert len(original_predictions) > 5000
        pd.testing.assert_series_equal(original_predictions, changed_predictions, check_exact=True)
        assert champion_pointer(changed, symbol)["threshold"] == champion_pointer(engine, symbol)["threshold"]

        # The same heads do see the change after t, so the equality above is not vacuous.
        original_all = predictions_until(original_head, original_inputs, original_embeddings, cutoff)
        changed_all = predictions_until(changed_head, changed_inputs, changed_embeddings, cutoff)
        assert (original_all.loc[moment + HOUR :] != changed_all.loc[moment + HOUR :]).any()


def test_short_history_skipped(base_run, engine, tmp_path):
    windows_config = TRAINING.windows
    required = (
        max(feature_lookback(TRAINING.features), ENCODER.window - 1)
        + windows_config.min_train_candles
        + 2 * windows_config.purge_candles
        + windows_config.validation_candles
        + windows_config.holdout_candles
    )
    assert required == 168 + 2000 + 8 + 1440 + 1440
    assert required_candles(windows_config, feature_lookback(TRAINING.features), ENCODER.window) == required

    # Ends at the base coins' last candle, with a gap of 21 missing candles,
    # so one candle too few lies before the cutoff.
    cutoff = pd.Timestamp(base_run.ref["cutoff"])
    rows = required + 20
    frame = random_walk_candles(rows, seed=3, start=cutoff - rows * HOUR)
    frame = frame.drop(index=range(3000, 3021)).reset_index(drop=True)
    inputs = write_coin(frame, tmp_path / "data", "SHORT")
    present = int((inputs.candles["date"] < cutoff).sum())
    assert present == required - 1

    outcome = train(engine, "SHORTUSDT", base_run.ref, inputs)

    assert outcome.status == "skipped"
    assert outcome.reason == f"insufficient history: {present} candles, need {required}"
    assert outcome.reason == "insufficient history: 5055 candles, need 5056"
    assert model_folders(engine, "SHORTUSDT") == []
    assert champion_pointer(engine, "SHORTUSDT") is None


def test_constant_label_skipped(base_run, engine, tmp_path):
    frame = random_walk_candles(ROWS, seed=4)
    frame[PRICE_COLUMNS] = 1.0
    inputs = write_coin(frame, tmp_path / "data", "USDC")
    assert (inputs.features[LABEL_COLUMN].dropna() == 0.0).all()

    outcome = train(engine, "USDCUSDT", base_run.ref, inputs)

    assert outcome.status == "skipped"
    assert outcome.reason.startswith("head learned nothing")
    assert "xgboost: constant label: every training label equals 0.0" in outcome.reason
    assert "lightgbm: constant label: every training label equals 0.0" in outcome.reason
    assert outcome.model_path is None
    assert not engine.store.exists("champions/USDCUSDT.json")
    assert model_folders(engine, "USDCUSDT") == []


def test_tiny_prices_match_scaled(base_run, engine, tmp_path):
    small = random_walk_candles(ROWS, seed=5, start_price=1e-6, autocorrelation=AUTOCORRELATION)
    large = small.copy()
    large[PRICE_COLUMNS] = large[PRICE_COLUMNS] * 1e6
    assert 1e-7 < small["close"].min()
    assert small["close"].max() < 1e-4
    small_inputs = write_coin(small, tmp_path / "data", "SMALL")
    large_inputs = write_coin(large, tmp_path / "data", "LARGE")

    grid = small_inputs.grid
    returns = small_inputs.features[NEXT_RETURN_COLUMN]
    moved = (grid["close"].shift(-1) != grid["close"]).iloc[:-1]
    assert moved.sum() == ROWS - 1
    assert np.isfinite(returns.iloc[:-1]).all()
    assert (returns.iloc[:-1][moved] != 0.0).all()
    np.testing.assert_allclose(returns.iloc[:-1], large_inputs.features[NEXT_RETURN_COLUMN].iloc[:-1], rtol=1e-9)

    lookback = feature_lookback(TRAINING.features)
    small_features = small_inputs.feature_columns().iloc[lookback:]
    assert np.isfinite(small_features.to_numpy()).all()
    assert (small_features["ret_1"] != 0.0).all()
    assert (small_features["range_hl"] > 0.0).all()
    assert (small_features["vol_24"] > 0.0).all()
    np.testing.assert_allclose(
        small_features.to_numpy(), large_inputs.feature_columns().iloc[lookback:].to_numpy(), rtol=1e-9, atol=1e-12
    )

    small_embeddings, _ = embeddings_for(
        engine.store, engine.settings.cache_root, base_run.ref["path"], "SMALLUSDT", small_inputs.grid
    )
    large_embeddings, _ = embeddings_for(
        engine.store, engine.settings.cache_root, base_run.ref["path"], "LARGEUSDT", large_inputs.grid
    )
    assert small_embeddings.iloc[ENCODER.window :].notna().all().all()
    np.testing.assert_allclose(small_embeddings.to_numpy(), large_embeddings.to_numpy(), rtol=1e-6, atol=1e-7)

    small_outcome = train(engine, "SMALLUSDT", base_run.ref, small_inputs)
    large_outcome = train(engine, "LARGEUSDT", base_run.ref, large_inputs)

    assert small_outcome.status == "succeeded"
    assert large_outcome.status == "succeeded"
    assert small_outcome.head == large_outcome.head
    small_net = small_outcome.metrics["holdout"]["net"]
    assert small_net["trades"] > 0
    assert small_net["total_return"] != 0.0
    for section in ("holdout", "buy_and_hold"):
        for side in ("gross", "net"):
            expected = large_outcome.metrics[section][side]
            assert small_outcome.metrics[section][side] == pytest.approx(expected, rel=1e-6, abs=1e-12), (
                section,
                side,
            )


def test_zero_volume_flat_candles(base_run, engine, tmp_path):
    frame = random_walk_candles(ROWS, seed=6, autocorrelation=AUTOCORRELATION)
    flat = [2500, 2501, 2502]
    frame.loc[flat, PRICE_COLUMNS] = frame.loc[2499, "close"]
    frame.loc[flat, "volume"] = 0.0
    inputs = write_coin(frame, tmp_path / "data", "ZERO")
    assert len(inputs.candles) == ROWS
    assert (inputs.grid.iloc[flat]["volume"] == 0.0).all()

    outcome = train(engine, "ZEROUSDT", base_run.ref, inputs)
    assert outcome.status == "succeeded"

    # No candle is missing, so only rows whose window reaches before the
    # first candle may be NaN.
    lookback = feature_lookback(TRAINING.features)
    features = inputs.feature_columns()
    assert np.isfinite(features.iloc[lookback:].to_numpy()).all()
    assert features.iloc[:lookback].isna().any(axis=1).all()
    embeddings, _ = embeddings_for(
        engine.store, engine.settings.cache_root, base_run.ref["path"], "ZEROUSDT", inputs.grid
    )
    assert np.isfinite(embeddings.iloc[ENCODER.window :].to_numpy()).all()
    assert embeddings.iloc[: ENCODER.window].isna().all().all()

    # Every train-window row after the feature warm-up reached the heads:
    # none was dropped for a NaN made by the flat candles.
    windows = make_windows(pd.Timestamp(base_run.ref["cutoff"]), 3600, TRAINING.windows)
    train_rows = len(split(inputs.grid, windows)["train"])
    assert outcome.metrics["rows"]["train"] == train_rows - lookback


def test_promotion_then_kept(base_run, engine):
    first = base_run.outcomes["AAAUSDT"]
    assert first.status == "succeeded"
    assert first.champion_changed is True
    assert first.decision.startswith("no champion yet")

    pointer_bytes = file_bytes(engine, "champions/AAAUSDT.json")
    pointer = json.loads(pointer_bytes)
    assert pointer["path"] == first.model_path
    assert pointer["encoder_path"] == base_run.ref["path"]
    manifest_bytes = file_bytes(engine, f"{first.model_path}/manifest.json")
    assert pointer["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    assert first.manifest_sha256 == pointer["manifest_sha256"]
    manifest = json.loads(manifest_bytes)
    stored = engine.store.list_keys(first.model_path)
    assert sorted(stored) == sorted([f"{first.model_path}/{name}" for name in manifest["files"]] + [
        f"{first.model_path}/manifest.json"
    ])
    for name, entry in manifest["files"].items():
        data = file_bytes(engine, f"{first.model_path}/{name}")
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert len(data) == entry["size"], name
    assert set(verify_folder(engine.store, first.model_path)) == set(manifest["files"])

    second = train(engine, "AAAUSDT", base_run.ref)

    assert second.status == "succeeded"
    assert second.champion_changed is False
    assert "does not beat champion" in second.decision
    assert second.decision.endswith("the champion stays")
    assert second.champion_path == first.model_path
    assert file_bytes(engine, "champions/AAAUSDT.json") == pointer_bytes
    # The same data gives the same model, scored on the same holdout window.
    assert second.metrics["champion"]["holdout"] == second.metrics["holdout"]
    assert second.model_path != first.model_path
    assert model_folders(engine, "AAAUSDT") == sorted([first.model_path, second.model_path])
    for folder in (first.model_path, second.model_path):
        assert engine.store.exists(f"{folder}/manifest.json")
        verify_folder(engine.store, folder)


def test_failed_publish_keeps_champion(base_run, engine):
    # A champion that never trades on the holdout (Sharpe 0), so today's
    # challenger would replace it if its publishing completed.
    pointer = champion_pointer(engine, "AAAUSDT")
    pointer["threshold"] = 1e9
    engine.store.write_bytes("champions/AAAUSDT.json", json.dumps(pointer, indent=2, sort_keys=True).encode())
    pointer_bytes = file_bytes(engine, "champions/AAAUSDT.json")
    before = set(model_folders(engine, "AAAUSDT"))

    failing = make_engine(engine.settings.home, engine.settings.data_dir, FailingStore(engine.settings.storage_root, 3))
    with pytest.raises(OSError, match=r"simulated disk full while writing models/AAAUSDT/"):
        train(failing, "AAAUSDT", base_run.ref)

    assert failing.store.model_writes == 3
    assert file_bytes(engine, "champions/AAAUSDT.json") == pointer_bytes
    partial = sorted(set(model_folders(engine, "AAAUSDT")) - before)
    assert len(partial) == 1
    partial_keys = engine.store.list_keys(partial[0])
    assert len(partial_keys) == 2
    assert not engine.store.exists(f"{partial[0]}/manifest.json")
    with pytest.raises(IntegrityError, match="manifest missing"):
        verify_folder(engine.store, partial[0])

    # The same training without the failure replaces the champion.
    retried = train(engine, "AAAUSDT", base_run.ref)
    assert retried.champion_changed is True
    assert "beats champion 0.00" in retried.decision
    assert champion_pointer(engine, "AAAUSDT")["path"] == retried.model_path


def test_tampered_champion_reported(base_run, engine):
    pointer = champion_pointer(engine, "AAAUSDT")
    model_file = next(name for name in pointer["head_files"] if name != "head.json")
    key = f"{pointer['path']}/{model_file}"
    manifest = json.loads(file_bytes(engine, f"{pointer['path']}/manifest.json"))
    original = file_bytes(engine, key)
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    (engine.settings.storage_root / key).write_bytes(bytes(tampered))
    size = len(original)
    expected = manifest["files"][model_file]["sha256"]
    actual = hashlib.sha256(bytes(tampered)).hexdigest()
    assert hashlib.sha256(original).hexdigest() == expected

    outcome = train(engine, "AAAUSDT", base_run.ref)

    message = f"SHA256 mismatch for {key}: manifest has {expected} ({size} bytes), stored file has {actual} ({size} bytes)"
    assert outcome.status == "succeeded"
    assert f"champion {pointer['path']} cannot be loaded: {message}" in outcome.decision
    assert outcome.metrics["champion"]["note"] == f"champion {pointer['path']} cannot be loaded: {message}"
    assert outcome.metrics["champion"]["holdout"] is None
    # A champion that cannot be loaded cannot defend its place.
    assert outcome.champion_changed is True
    new_pointer = champion_pointer(engine, "AAAUSDT")
    assert new_pointer["path"] == outcome.model_path
    assert new_pointer["replaced"] == pointer["path"]


def test_roster_and_summary(base_run, engine):
    succeeded = base_run.outcomes["AAAUSDT"]
    engine.ledger.finish_coin(
        "AAAUSDT",
        "succeeded",
        reason=None,
        artifact=succeeded.model_path,
        champion=succeeded.champion_path,
        champion_changed=True,
        decision=succeeded.decision,
        metrics=succeeded.key_metrics(),
        attempts=1,
    )
    engine.ledger.finish_coin(
        "SHORTUSDT", "skipped", reason="insufficient history: 5055 candles, need 5056", attempts=1
    )
    engine.ledger.finish_coin(
        "BADUSDT",
        "failed",
        reason="no valid rows",
        error="CandleDataError: no valid rows",
        attempts=3,
    )
    document = engine.ledger.read()

    roster = build_roster(engine.store, document, ["AAAUSDT", "BADUSDT", "SHORTUSDT"])
    summary = build_summary(document, roster)

    assert sorted(roster["coins"]) == ["AAAUSDT", "BADUSDT", "SHORTUSDT"]
    assert roster["day"] == DAY
    aaa = roster["coins"]["AAAUSDT"]
    assert aaa["status"] == "succeeded"
    assert aaa["reason"] is None
    assert aaa["champion"] == succeeded.model_path
    assert aaa["champion_head"] == succeeded.head
    assert aaa["encoder"] == base_run.ref["path"]
    assert aaa["champion_changed"] is True
    assert aaa["today"] == succeeded.key_metrics()
    short = roster["coins"]["SHORTUSDT"]
    assert short["status"] == "skipped"
    assert short["reason"] == "insufficient history: 5055 candles, need 5056"
    assert short["champion"] is None
    bad = roster["coins"]["BADUSDT"]
    assert bad["status"] == "failed"
    assert bad["reason"] == "no valid rows"
    assert bad["champion"] is None

    assert summary["counts"] == {"succeeded": 1, "skipped": 1, "failed": 1, "timed_out": 0}
    assert summary["date"] == DAY
    assert summary["encoder"] == base_run.ref["path"]
    rows = {row["symbol"]: row for row in summary["coins"]}
    assert rows["AAAUSDT"]["head"] == succeeded.head
    assert rows["AAAUSDT"]["sharpe_net"] == pytest.approx(succeeded.metrics["holdout"]["net"]["sharpe"])
    assert rows["AAAUSDT"]["champion"] == succeeded.model_path
    assert rows["SHORTUSDT"]["reason"] == "insufficient history: 5055 candles, need 5056"
    assert rows["SHORTUSDT"]["head"] is None
    assert rows["BADUSDT"]["reason"] == "no valid rows"
    assert rows["BADUSDT"]["attempts"] == 3
