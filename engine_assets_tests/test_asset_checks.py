"""Asset checks: candle quality (pass, WARN, blocking ERROR), champion freshness and manifest integrity."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from engine_assets.assets import candles, coin_model, features, shared_encoder
from engine_assets.assets.checks import (
    CANDLE_QUALITY,
    DEFAULT_CHAMPION_MAX_AGE_HOURS,
    candle_quality_error,
    candle_quality_result,
    candle_quality_spec,
    champion_freshness,
    evaluate_champion_freshness,
    evaluate_manifest_integrity,
    manifest_integrity,
    newest_model_folder,
)
from engine_assets.data.validation import CandleDataError, validate_candles
from engine_assets.io_managers import FrameIOManager, JsonIOManager
from engine_assets.partitions import coin_partitions
from engine_assets.resources import EngineResource
from engine_assets.scheduling.ledger import day_key
from engine_assets.storage.local import LocalArtifactStore
from engine_assets.storage.manifest import publish_folder, read_json, write_pointer
from engine_assets_tests.conftest import link_samples

NOW = dt.datetime(2026, 3, 1, 12, tzinfo=dt.timezone.utc)
SYMBOL = "BTCUSDT"
SAMPLE_NAME = "BTC_USDT-1h.feather"


def publish_model(store: LocalArtifactStore, stamp: str, symbol: str = SYMBOL) -> str:
    folder = f"models/{symbol}/{stamp}"
    files = {"model.ubj": f"weights {stamp}".encode(), "metrics.json": json.dumps({"symbol": symbol}).encode()}
    publish_folder(store, folder, files, extra={"kind": "model", "symbol": symbol})
    return folder


def promote_model(store: LocalArtifactStore, folder: str, promoted_at: dt.datetime | None, symbol: str = SYMBOL) -> None:
    payload = {"symbol": symbol, "head": "xgboost"}
    if promoted_at is not None:
        payload["promoted_at"] = promoted_at.isoformat(timespec="seconds")
    write_pointer(store, f"champions/{symbol}.json", folder, payload)


def repaired_candles(sample_dir: Path) -> pd.DataFrame:
    """Return real candles with one exact duplicate and two rows out of order."""
    raw = pd.read_feather(sample_dir / SAMPLE_NAME)
    with_duplicate = pd.concat([raw, raw.iloc[[40]]], ignore_index=True)
    order = [0, 2, 1, *range(3, len(with_duplicate))]
    return with_duplicate.iloc[order].reset_index(drop=True)


# candle_quality: the result the candles asset emits


def test_candle_quality_clean_passes(sample_dir):
    _, report = validate_candles(pd.read_feather(sample_dir / SAMPLE_NAME), SYMBOL, 3600, SAMPLE_NAME)
    result = candle_quality_result(report.to_dict())
    assert result.passed is True
    assert result.check_name == CANDLE_QUALITY
    assert result.metadata["severity"].value == "ok"
    assert result.metadata["rows_valid"].value == report.rows_valid


def test_candle_quality_repaired_warns(sample_dir):
    _, report = validate_candles(repaired_candles(sample_dir), SYMBOL, 3600, SAMPLE_NAME)
    result = candle_quality_result(report.to_dict())
    assert result.passed is False
    assert result.severity == dg.AssetCheckSeverity.WARN
    assert "1 exact duplicate rows dropped" in result.description
    assert "1 rows out of date order, sorted" in result.description
    counts = {row.data["finding"]: row.data["count"] for row in result.metadata["checks"].value.records}
    assert counts["exact duplicate rows"] == 1
    assert counts["rows out of date order"] == 1


def test_candle_quality_gaps_only_pass(sample_dir):
    raw = pd.read_feather(sample_dir / SAMPLE_NAME).drop(index=[500, 501])
    _, report = validate_candles(raw, SYMBOL, 3600, SAMPLE_NAME)
    result = candle_quality_result(report.to_dict())
    assert result.passed is True
    assert result.metadata["missing_candles"].value == 2


def test_candle_quality_error_result():
    error = CandleDataError(SYMBOL, "BTC_USDT-1h.feather", "no rows")
    result = candle_quality_error(error)
    assert result.passed is False
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert result.check_name == CANDLE_QUALITY
    assert result.metadata["reason"].value == str(error)


def test_candle_quality_spec_blocking():
    assert candle_quality_spec.blocking is True
    assert candle_quality_spec.asset_key == dg.AssetKey("candles")
    assert candle_quality_spec.partitions_def == coin_partitions


# candle_quality through Dagster: the candles asset, then features and coin_model


@pytest.fixture
def coin_resources(engine_env, tmp_path, monkeypatch) -> dict:
    if SYMBOL not in coin_partitions.get_partition_keys():
        pytest.skip(f"{SYMBOL} is not a coin partition in this session's ENGINE_DATA_DIR")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("ENGINE_DATA_DIR", str(data_dir))
    cache = tmp_path / "engine-home" / "cache" / "assets"
    return {
        "data_dir": data_dir,
        "resources": {
            "engine": EngineResource(),
            "frame_io_manager": FrameIOManager(root=str(cache)),
            "json_io_manager": JsonIOManager(root=str(cache)),
        },
    }


def materialize_coin(resources: dict, selection: list) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [candles, features, coin_model, shared_encoder],
        selection=selection,
        partition_key=SYMBOL,
        resources=resources,
        raise_on_error=False,
    )


def check_evaluations(result: dg.ExecuteInProcessResult) -> list:
    return [
        event.event_specific_data
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ]


def materialized_keys(result: dg.ExecuteInProcessResult) -> set[str]:
    return {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}


def test_candles_asset_clean_passes(coin_resources, sample_dir):
    link_samples(sample_dir, coin_resources["data_dir"], ["BTC"])
    result = materialize_coin(coin_resources["resources"], [candles])
    assert result.success
    (evaluation,) = check_evaluations(result)
    assert evaluation.passed is True
    assert evaluation.partition == SYMBOL


def test_candles_asset_repaired_warns(coin_resources, sample_dir):
    repaired_candles(sample_dir).to_feather(coin_resources["data_dir"] / SAMPLE_NAME)
    result = materialize_coin(coin_resources["resources"], [candles, features])
    assert result.success
    (evaluation,) = check_evaluations(result)
    assert evaluation.passed is False
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    # A WARN does not block: the coin's features still run.
    assert materialized_keys(result) == {"candles", "features"}


def test_candles_asset_unusable_blocks_coin(coin_resources):
    (coin_resources["data_dir"] / SAMPLE_NAME).write_bytes(b"")
    result = materialize_coin(coin_resources["resources"], [candles, features, coin_model])
    assert not result.success
    (evaluation,) = check_evaluations(result)
    assert evaluation.passed is False
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.blocking is True
    assert evaluation.partition == SYMBOL
    assert SAMPLE_NAME in evaluation.metadata["reason"].value
    assert materialized_keys(result) == set()
    assert {event.step_key for event in result.get_step_success_events()} == set()
    ledger = read_json(LocalArtifactStore(Path(coin_resources["resources"]["engine"].settings.storage_root)), f"runs/{day_key()}/status.json")
    assert ledger["coins"][SYMBOL]["status"] == "failed"
    assert SAMPLE_NAME in ledger["coins"][SYMBOL]["reason"]


# champion_freshness


def test_freshness_recent_champion_passes(tmp_path):
    store = LocalArtifactStore(tmp_path)
    promote_model(store, publish_model(store, "20260227_120000Z"), NOW - dt.timedelta(days=2))
    result = evaluate_champion_freshness(store, SYMBOL, DEFAULT_CHAMPION_MAX_AGE_HOURS, now=NOW)
    assert result.passed is True
    assert result.metadata["age_hours"].value == 48.0
    assert result.metadata["champion"].value == "models/BTCUSDT/20260227_120000Z"


def test_freshness_old_champion_warns(tmp_path):
    store = LocalArtifactStore(tmp_path)
    promote_model(store, publish_model(store, "20260201_120000Z"), NOW - dt.timedelta(days=20))
    result = evaluate_champion_freshness(store, SYMBOL, DEFAULT_CHAMPION_MAX_AGE_HOURS, now=NOW)
    assert result.passed is False
    assert result.severity == dg.AssetCheckSeverity.WARN
    assert "promoted 20.0 days ago, more than 14.0 days" in result.description


def test_freshness_max_age_configurable(tmp_path):
    store = LocalArtifactStore(tmp_path)
    promote_model(store, publish_model(store, "20260227_120000Z"), NOW - dt.timedelta(days=2))
    assert evaluate_champion_freshness(store, SYMBOL, 24.0, now=NOW).passed is False
    assert evaluate_champion_freshness(store, SYMBOL, 49.0, now=NOW).passed is True


def test_freshness_without_champion_warns(tmp_path):
    result = evaluate_champion_freshness(LocalArtifactStore(tmp_path), SYMBOL, 24.0, now=NOW)
    assert result.passed is False
    assert result.severity == dg.AssetCheckSeverity.WARN
    assert result.description.startswith("BTCUSDT has no champion")


def test_freshness_falls_back_to_folder_time(tmp_path):
    store = LocalArtifactStore(tmp_path)
    promote_model(store, publish_model(store, "20260228_120000Z"), promoted_at=None)
    result = evaluate_champion_freshness(store, SYMBOL, 48.0, now=NOW)
    assert result.passed is True
    assert result.metadata["age_hours"].value == 24.0


# manifest_integrity


def test_integrity_newest_folder_passes(tmp_path):
    store = LocalArtifactStore(tmp_path)
    publish_model(store, "20260227_000000Z")
    newest = publish_model(store, "20260228_000000Z")
    assert newest_model_folder(store, SYMBOL) == newest
    result = evaluate_manifest_integrity(store, SYMBOL)
    assert result.passed is True
    assert result.metadata["folder"].value == newest
    assert result.metadata["files"].value == 2


def test_integrity_tampered_file_errors(tmp_path):
    store = LocalArtifactStore(tmp_path)
    newest = publish_model(store, "20260228_000000Z")
    (tmp_path / newest / "model.ubj").write_bytes(b"changed after publishing")
    result = evaluate_manifest_integrity(store, SYMBOL)
    assert result.passed is False
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert "SHA256 mismatch" in result.description
    assert f"{newest}/model.ubj" in result.metadata["error"].value


def test_integrity_older_damage_ignored(tmp_path):
    store = LocalArtifactStore(tmp_path)
    older = publish_model(store, "20260227_000000Z")
    (tmp_path / older / "model.ubj").write_bytes(b"damaged")
    publish_model(store, "20260228_000000Z")
    assert evaluate_manifest_integrity(store, SYMBOL).passed is True


def test_integrity_missing_file_errors(tmp_path):
    store = LocalArtifactStore(tmp_path)
    newest = publish_model(store, "20260228_000000Z")
    (tmp_path / newest / "metrics.json").unlink()
    result = evaluate_manifest_integrity(store, SYMBOL)
    assert result.severity == dg.AssetCheckSeverity.ERROR
    assert "file missing" in result.description


def test_integrity_incomplete_folder_warns(tmp_path):
    store = LocalArtifactStore(tmp_path)
    publish_model(store, "20260227_000000Z")
    store.write_bytes(f"models/{SYMBOL}/20260228_000000Z/model.ubj", b"upload cut short")
    result = evaluate_manifest_integrity(store, SYMBOL)
    assert result.passed is False
    assert result.severity == dg.AssetCheckSeverity.WARN
    assert "has no manifest.json" in result.description


def test_integrity_no_model_passes(tmp_path):
    result = evaluate_manifest_integrity(LocalArtifactStore(tmp_path), SYMBOL)
    assert result.passed is True
    assert result.metadata["folder"].value == "none"


# champion_freshness and manifest_integrity through Dagster, per coin partition


def test_coin_checks_run_per_partition(coin_resources):
    store = LocalArtifactStore(coin_resources["resources"]["engine"].settings.storage_root)
    folder = publish_model(store, "20260228_000000Z")
    promote_model(store, folder, dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=30))

    checks_job = dg.define_asset_job(
        "coin_checks",
        selection=dg.AssetSelection.checks(champion_freshness, manifest_integrity),
        partitions_def=coin_partitions,
    )
    defs = dg.Definitions(
        assets=[candles, features, shared_encoder, coin_model],
        asset_checks=[champion_freshness, manifest_integrity],
        jobs=[checks_job],
        resources=coin_resources["resources"],
    )

    # A run of checks alone selects no asset, so Dagster cannot validate a partition_key
    # argument. The partition tag is what every coin run carries anyway.
    result = defs.resolve_job_def("coin_checks").execute_in_process(
        tags={"dagster/partition": SYMBOL},
        run_config={"ops": {"coin_model_champion_freshness": {"config": {"max_age_hours": 24.0}}}},
        raise_on_error=False,
    )

    assert result.success
    evaluations = {evaluation.check_name: evaluation for evaluation in check_evaluations(result)}
    assert set(evaluations) == {"champion_freshness", "manifest_integrity"}
    assert evaluations["champion_freshness"].passed is False
    assert evaluations["champion_freshness"].severity == dg.AssetCheckSeverity.WARN
    assert evaluations["champion_freshness"].partition == SYMBOL
    assert evaluations["manifest_integrity"].passed is True
    assert evaluations["manifest_integrity"].partition == SYMBOL
    assert materialized_keys(result) == set()


# A retrain from an asset's page runs that asset alone and reads its inputs from the cache.


def test_features_alone_reads_cached_candles(coin_resources, sample_dir):
    link_samples(sample_dir, coin_resources["data_dir"], ["BTC"])
    assert materialize_coin(coin_resources["resources"], [candles]).success
    result = materialize_coin(coin_resources["resources"], [features])
    assert result.success
    assert materialized_keys(result) == {"features"}
    assert check_evaluations(result) == []
