"""A failed upload on S3 or Dropbox leaves the previous champion's folder and pointer untouched.

Each test publishes a champion and its pointer, then publishes a challenger
the way a coin run does (``publish_folder``, then ``promote``) while the
server fails one of the challenger's uploads.
"""

from __future__ import annotations

import json

import pytest

from engine_assets.storage.base import IntegrityError, StorageError
from engine_assets.storage.manifest import MANIFEST_NAME, publish_folder, verify_folder
from engine_assets.storage.verify import verify_store
from engine_assets.training.champions import champion_key, promote

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")
pytest.importorskip("dropbox")
pytest.importorskip("cryptography")

from engine_assets_tests.dropbox_server import FakeDropboxServer  # noqa: E402 - after the skips above
from engine_assets_tests.test_storage_s3 import FlakyProxy, aws_env, moto_endpoint  # noqa: E402, F401 - fixtures

SYMBOL = "BTCUSDT"
CHAMPION = f"models/{SYMBOL}/20261203_001500Z"
CHALLENGER = f"models/{SYMBOL}/20261204_001500Z"
POINTER = champion_key(SYMBOL)


def _model_files(sharpe: float) -> dict[str, bytes]:
    return {
        "head.json": json.dumps({"kind": "xgboost", "threshold": 0.55}).encode(),
        "metrics.json": json.dumps({"holdout": {"net": {"sharpe": sharpe}}}).encode(),
        "model.ubj": bytes(range(256)) * 8,
    }


def _publish_champion(store) -> bytes:
    """Publish the current champion and its pointer; return the pointer's bytes."""
    publish_folder(store, CHAMPION, _model_files(sharpe=0.4))
    promote(store, SYMBOL, CHAMPION, {"symbol": SYMBOL, "head": "xgboost"})
    return store.read_bytes(POINTER)


def _publish_challenger(store) -> None:
    """Publish a better model and promote it, in the order a coin run does."""
    publish_folder(store, CHALLENGER, _model_files(sharpe=1.9))
    promote(store, SYMBOL, CHALLENGER, {"symbol": SYMBOL, "head": "xgboost"})


def _assert_champion_untouched(store, pointer_before: bytes) -> None:
    assert store.read_bytes(POINTER) == pointer_before
    assert json.loads(pointer_before)["path"] == CHAMPION
    assert sorted(verify_folder(store, CHAMPION)) == ["head.json", "metrics.json", "model.ubj"]
    # Promoting the half-written challenger directly is refused too, and the pointer stays.
    with pytest.raises(IntegrityError, match=f"manifest missing: {CHALLENGER}/{MANIFEST_NAME}"):
        promote(store, SYMBOL, CHALLENGER, {"symbol": SYMBOL})
    assert store.read_bytes(POINTER) == pointer_before
    report = verify_store(store)
    assert report.ok, report.problems
    assert report.pointers_checked == [POINTER]
    assert report.incomplete_folders == [CHALLENGER]


def test_s3_failed_manifest_upload(aws_env, monkeypatch):
    from engine_assets.storage.s3 import S3ArtifactStore

    boto3.client("s3").create_bucket(Bucket="engine-failures")
    manifest_path = f"/engine-failures/team/{CHALLENGER}/{MANIFEST_NAME}"

    def fails_manifest_put(method: str, path: str, headers: dict[str, str]) -> bool:
        return method == "PUT" and path.split("?", 1)[0] == manifest_path

    # Every PUT of the challenger's manifest gets a 500, on every botocore and store retry.
    with FlakyProxy(aws_env, fails_manifest_put, failures=1000) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        store = S3ArtifactStore(
            "engine-failures", prefix="team", max_attempts=2, operation_attempts=2, sleep=lambda seconds: None
        )
        pointer_before = _publish_champion(store)

        with pytest.raises(StorageError, match=f"S3 upload failed for s3://engine-failures/team/{CHALLENGER}/"):
            _publish_challenger(store)

        # 2 store attempts of 2 botocore requests each.
        assert proxy.injected == [manifest_path] * 4
        assert store.exists(f"{CHALLENGER}/model.ubj")
        assert not store.exists(f"{CHALLENGER}/{MANIFEST_NAME}")
        _assert_champion_untouched(store, pointer_before)


def test_dropbox_corrupt_upload(tmp_path):
    from engine_assets.storage.dropbox_store import DropboxArtifactStore

    with FakeDropboxServer(tmp_path / "tls") as server:
        store = DropboxArtifactStore(
            root="/engine",
            app_key=server.app_key,
            app_secret=server.app_secret,
            refresh_token=server.refresh_token,
            api_host=server.host,
            content_host=server.host,
            ca_bundle=server.ca_path,
        )
        pointer_before = _publish_champion(store)
        # Dropbox reports a content hash that does not match the bytes the store sent.
        server.corrupt_content_hash(f"/engine/{CHALLENGER}/model.ubj")

        expected = f"content_hash mismatch after upload of /engine/{CHALLENGER}/model.ubj"
        with pytest.raises(IntegrityError, match=expected):
            _publish_challenger(store)

        assert not store.exists(f"{CHALLENGER}/{MANIFEST_NAME}")
        _assert_champion_untouched(store, pointer_before)
