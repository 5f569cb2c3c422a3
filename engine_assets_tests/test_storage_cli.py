"""`engine storage verify` end to end on a local store: exit status and the files it names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine_assets.storage.local import LocalArtifactStore
from engine_assets.storage.manifest import publish_folder, write_pointer

ENGINE = str(Path(sys.executable).with_name("engine"))
MODEL_FOLDER = "models/BTCUSDT/20261204_001500Z"
ENCODER_FOLDER = "encoder/20261204_000000Z"


def _verify(home: Path) -> subprocess.CompletedProcess:
    dropped = ("ENGINE_", "TELEGRAM_", "DROPBOX_", "AWS_")
    env = {name: value for name, value in os.environ.items() if not name.startswith(dropped)}
    env.update(ENGINE_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    return subprocess.run(
        [ENGINE, "storage", "verify"], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def home(tmp_path) -> Path:
    """An engine home whose local store has one encoder, one model and its champion pointer."""
    home = tmp_path / "engine-home"
    store = LocalArtifactStore(home / "storage")
    publish_folder(store, ENCODER_FOLDER, {"encoder.pt": b"\x00weights" * 64, "encoder_config.json": b"{}"})
    publish_folder(
        store,
        MODEL_FOLDER,
        {"model.ubj": bytes(range(256)), "head.json": b'{"kind": "xgboost"}', "metrics.json": b'{"sharpe": 1.2}'},
    )
    write_pointer(store, "champions/BTCUSDT.json", MODEL_FOLDER, {"encoder_path": ENCODER_FOLDER})
    return home


def test_verify_clean_store(home):
    result = _verify(home)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"store: {home / 'storage'}"
    assert lines[1] == "checked 2 folders, 5 files, 1 pointers"
    assert lines[-1] == "OK"


def test_verify_tampered_file(home):
    model = home / "storage" / MODEL_FOLDER / "model.ubj"
    model.write_bytes(b"tampered" + model.read_bytes()[8:])

    result = _verify(home)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"PROBLEM: SHA256 mismatch for {MODEL_FOLDER}/model.ubj" in result.stdout
    assert f"PROBLEM: pointer champions/BTCUSDT.json names {MODEL_FOLDER} (field 'path')" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "FAILED: 2 problems"


def test_verify_missing_file(home):
    (home / "storage" / ENCODER_FOLDER / "encoder.pt").unlink()

    result = _verify(home)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"PROBLEM: file missing: {ENCODER_FOLDER}/encoder.pt" in result.stdout
    # The pointer's encoder_path names the broken encoder folder.
    assert f"names {ENCODER_FOLDER} (field 'encoder_path')" in result.stdout
