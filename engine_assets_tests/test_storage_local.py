"""Tests of the local artifact store, SHA256 manifests, pointers, store verification and the store factory."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from engine_assets.settings import EngineSettings
from engine_assets.storage.base import ArtifactNotFoundError, IntegrityError, StorageError, normalize_key
from engine_assets.storage.factory import build_store
from engine_assets.storage.local import LocalArtifactStore
from engine_assets.storage.manifest import (
    MANIFEST_NAME,
    publish_folder,
    read_json,
    read_manifest,
    sha256_hex,
    verify_folder,
    write_pointer,
)
from engine_assets.storage.verify import verify_store

MODEL_FOLDER = "models/BTCUSDT/20261204_001500Z"
ENCODER_FOLDER = "encoder/20261204_000000Z"


def _model_files(seed: int = 7) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        "model.json": json.dumps({"trees": [rng.random() for _ in range(20)]}).encode(),
        "metrics.json": json.dumps({"sharpe": 1.25, "trades": 42}).encode(),
        "weights.bin": rng.randbytes(4096),
    }


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "storage")


def test_write_read_roundtrip(store):
    store.write_bytes("runs/20261204Z/status.json", b'{"BTCUSDT": "succeeded"}')

    assert store.read_bytes("runs/20261204Z/status.json") == b'{"BTCUSDT": "succeeded"}'
    assert store.exists("runs/20261204Z/status.json")
    assert not store.exists("runs/20261204Z/other.json")
    assert store.list_keys("runs") == ["runs/20261204Z/status.json"]


def test_write_failure_keeps_previous_content(store, monkeypatch):
    key = "champions/BTCUSDT.json"
    store.write_bytes(key, b"previous pointer")
    folder = store.root / "champions"

    def failing_fsync(descriptor):
        raise OSError(28, "No space left on device")

    # The new bytes are already written to the temporary file when fsync fails.
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        store.write_bytes(key, b"new pointer that must not appear half written")
    monkeypatch.undo()

    assert store.read_bytes(key) == b"previous pointer"
    assert sorted(path.name for path in folder.iterdir()) == ["BTCUSDT.json"]
    assert store.list_keys("champions") == [key]


def test_write_failure_leaves_no_new_file(store, monkeypatch):
    def failing_replace(source, target):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output error"):
        store.write_bytes("models/ETHUSDT/20261204_001500Z/model.json", b"{}")
    monkeypatch.undo()

    folder = store.root / "models" / "ETHUSDT" / "20261204_001500Z"
    assert list(folder.iterdir()) == []
    assert not store.exists("models/ETHUSDT/20261204_001500Z/model.json")
    assert store.list_keys("models") == []


def test_read_missing_key(store):
    with pytest.raises(ArtifactNotFoundError, match="artifact not found: models/BTCUSDT/x.json"):
        store.read_bytes("models/BTCUSDT/x.json")


def test_write_file_copies_content(store, tmp_path):
    source = tmp_path / "encoder.pt"
    source.write_bytes(random.Random(3).randbytes(10_000))

    store.write_file(f"{ENCODER_FOLDER}/encoder.pt", source)

    assert store.read_bytes(f"{ENCODER_FOLDER}/encoder.pt") == source.read_bytes()


def test_manifest_roundtrip(store):
    files = _model_files()

    published = publish_folder(store, MODEL_FOLDER, files, extra={"symbol": "BTCUSDT"})
    manifest = read_manifest(store, MODEL_FOLDER)

    assert manifest["symbol"] == "BTCUSDT"
    assert sorted(manifest["files"]) == ["metrics.json", "model.json", "weights.bin"]
    for name, data in files.items():
        assert manifest["files"][name] == {"size": len(data), "sha256": sha256_hex(data)}
    assert verify_folder(store, MODEL_FOLDER) == files
    only_metrics = verify_folder(store, MODEL_FOLDER, names=["metrics.json"])
    assert only_metrics == {"metrics.json": files["metrics.json"]}
    assert published.manifest_sha256 == sha256_hex(store.read_bytes(f"{MODEL_FOLDER}/{MANIFEST_NAME}"))


def test_manifest_catches_tampered_file(store):
    files = _model_files()
    publish_folder(store, MODEL_FOLDER, files)
    tampered = b"X" + files["weights.bin"][1:]
    store.write_bytes(f"{MODEL_FOLDER}/weights.bin", tampered)

    with pytest.raises(IntegrityError) as caught:
        verify_folder(store, MODEL_FOLDER)

    message = str(caught.value)
    assert f"{MODEL_FOLDER}/weights.bin" in message
    assert sha256_hex(files["weights.bin"]) in message
    assert sha256_hex(tampered) in message


def test_manifest_missing_file(store):
    publish_folder(store, MODEL_FOLDER, _model_files())
    store.delete(f"{MODEL_FOLDER}/model.json")

    with pytest.raises(IntegrityError, match=f"file missing: {MODEL_FOLDER}/model.json"):
        verify_folder(store, MODEL_FOLDER)


def test_folder_without_manifest_rejected(store):
    store.write_bytes(f"{MODEL_FOLDER}/model.json", b"{}")

    with pytest.raises(IntegrityError, match="manifest missing"):
        verify_folder(store, MODEL_FOLDER)


def test_pointer_written_for_verified_folder(store):
    published = publish_folder(store, MODEL_FOLDER, _model_files())

    pointer = write_pointer(store, "champions/BTCUSDT.json", MODEL_FOLDER, {"symbol": "BTCUSDT"})

    assert read_json(store, "champions/BTCUSDT.json") == pointer
    assert pointer["path"] == MODEL_FOLDER
    assert pointer["manifest_sha256"] == published.manifest_sha256


def test_pointer_refused_for_tampered_folder(store):
    publish_folder(store, MODEL_FOLDER, _model_files())
    store.write_bytes(f"{MODEL_FOLDER}/metrics.json", b'{"sharpe": 99}')

    with pytest.raises(IntegrityError, match="SHA256 mismatch"):
        write_pointer(store, "champions/BTCUSDT.json", MODEL_FOLDER, {"symbol": "BTCUSDT"})

    assert not store.exists("champions/BTCUSDT.json")


def test_pointer_refused_for_incomplete_folder(store):
    store.write_bytes(f"{MODEL_FOLDER}/model.json", b"{}")

    with pytest.raises(IntegrityError, match="manifest missing"):
        write_pointer(store, "champions/BTCUSDT.json", MODEL_FOLDER, {"symbol": "BTCUSDT"})

    assert not store.exists("champions/BTCUSDT.json")


@pytest.mark.parametrize(
    "key",
    [
        "..",
        "../outside.json",
        "models/../../outside.json",
        "models/./x.json",
        "models\\..\\..\\x",
        "",
        "/",
        "a b/c",
    ],
)
def test_key_escaping_rejected(store, key):
    with pytest.raises(StorageError, match="invalid storage key"):
        store.write_bytes(key, b"data")

    assert not (store.root.parent / "outside.json").exists()
    assert not store.root.exists() or store.list_keys() == []


def test_normalize_key_cleans_slashes():
    assert normalize_key("/models//BTCUSDT/") == "models/BTCUSDT"
    assert normalize_key("models\\BTCUSDT\\a.json") == "models/BTCUSDT/a.json"


def test_verify_store_clean(store):
    publish_folder(store, MODEL_FOLDER, _model_files())
    publish_folder(store, ENCODER_FOLDER, {"encoder.pt": b"weights"})
    write_pointer(store, "champions/BTCUSDT.json", MODEL_FOLDER, {"encoder": ENCODER_FOLDER})
    store.write_bytes("champions/roster.json", b'{"BTCUSDT": {"status": "champion"}}')

    report = verify_store(store)

    assert report.ok, report.render()
    assert report.problems == []
    assert report.folders_checked == [ENCODER_FOLDER, MODEL_FOLDER]
    assert report.pointers_checked == ["champions/BTCUSDT.json"]
    assert report.files_checked == 4
    assert report.render().endswith("OK")


def test_verify_store_lists_every_problem(store):
    files = _model_files()
    publish_folder(store, MODEL_FOLDER, files)
    publish_folder(store, ENCODER_FOLDER, {"encoder.pt": b"weights"})
    write_pointer(store, "champions/BTCUSDT.json", MODEL_FOLDER, {"encoder": ENCODER_FOLDER})
    write_pointer(store, "champions/ETHUSDT.json", ENCODER_FOLDER, {})
    store.write_bytes(f"{MODEL_FOLDER}/weights.bin", b"tampered")
    store.delete(f"{MODEL_FOLDER}/model.json")
    solusdt_pointer = {"path": "models/SOLUSDT/20261204_001500Z"}
    store.write_bytes("champions/SOLUSDT.json", json.dumps(solusdt_pointer).encode())
    store.write_bytes("models/SOLUSDT/20261204_001500Z/model.json", b"{}")
    store.write_bytes("champions/ADAUSDT.json", b"not json")

    report = verify_store(store)

    assert not report.ok
    problems = "\n".join(report.problems)
    assert f"SHA256 mismatch for {MODEL_FOLDER}/weights.bin" in problems
    assert sha256_hex(files["weights.bin"]) in problems
    assert sha256_hex(b"tampered") in problems
    assert f"file missing: {MODEL_FOLDER}/model.json" in problems
    expected = f"pointer champions/BTCUSDT.json names {MODEL_FOLDER} (field 'path'), which does not verify"
    assert expected in problems
    assert "pointer champions/SOLUSDT.json names models/SOLUSDT/20261204_001500Z" in problems
    assert "invalid pointer champions/ADAUSDT.json: not JSON" in problems
    assert "champions/ETHUSDT.json" not in problems
    assert len(report.problems) == 5
    assert report.incomplete_folders == ["models/SOLUSDT/20261204_001500Z"]
    assert "FAILED: 5 problems" in report.render()


def test_verify_store_pointer_to_changed_manifest(store):
    publish_folder(store, MODEL_FOLDER, {"model.json": b"{}"})
    write_pointer(store, "champions/BTCUSDT.json", MODEL_FOLDER, {})
    # A second publish into the same folder rewrites the manifest after the pointer was written.
    publish_folder(store, MODEL_FOLDER, {"model.json": b'{"v": 2}'})

    report = verify_store(store)

    assert len(report.problems) == 1
    assert "records manifest SHA256" in report.problems[0]
    assert "champions/BTCUSDT.json" in report.problems[0]


def test_verify_store_pointer_to_bad_encoder(store):
    publish_folder(store, MODEL_FOLDER, {"model.json": b"{}"})
    publish_folder(store, ENCODER_FOLDER, {"encoder.pt": b"weights"})
    write_pointer(store, "champions/BTCUSDT.json", MODEL_FOLDER, {"encoder_path": ENCODER_FOLDER})
    store.write_bytes(f"{ENCODER_FOLDER}/encoder.pt", b"other weights")

    report = verify_store(store)

    assert len(report.problems) == 2
    assert f"SHA256 mismatch for {ENCODER_FOLDER}/encoder.pt" in report.problems[0]
    assert f"names {ENCODER_FOLDER} (field 'encoder_path'), which does not verify" in report.problems[1]


def test_factory_builds_local_store(tmp_path):
    settings = EngineSettings.from_env({"ENGINE_HOME": str(tmp_path / "home")})

    store = build_store(settings)

    assert isinstance(store, LocalArtifactStore)
    assert store.root == (tmp_path / "home" / "storage").resolve()


def test_factory_s3_needs_bucket(tmp_path):
    settings = EngineSettings.from_env({"ENGINE_HOME": str(tmp_path), "ENGINE_STORAGE": "s3"})

    with pytest.raises(StorageError, match="ENGINE_STORAGE=s3 needs ENGINE_S3_BUCKET"):
        build_store(settings, secrets={})


def test_factory_dropbox_needs_credentials(tmp_path):
    settings = EngineSettings.from_env({"ENGINE_HOME": str(tmp_path), "ENGINE_STORAGE": "dropbox"})

    with pytest.raises(StorageError, match="no Dropbox credentials.*DROPBOX_REFRESH_TOKEN.*DROPBOX_APP_KEY"):
        build_store(settings, secrets={"DROPBOX_APP_KEY": "", "DROPBOX_ACCESS_TOKEN": "  "})
    with pytest.raises(StorageError, match="DROPBOX_APP_KEY is missing"):
        build_store(settings, secrets={"DROPBOX_REFRESH_TOKEN": "refresh-secret-value"})
