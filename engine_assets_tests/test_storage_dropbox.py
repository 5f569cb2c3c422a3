"""Tests of the Dropbox artifact store against a local HTTPS fake of the Dropbox API."""

from __future__ import annotations

import hashlib
import logging
import random
import time

import pytest

from engine_assets.settings import EngineSettings
from engine_assets.storage.base import ArtifactNotFoundError, IntegrityError, StorageError
from engine_assets.storage.factory import build_store
from engine_assets.storage.manifest import publish_folder, verify_folder, write_pointer
from engine_assets.storage.verify import verify_store

pytest.importorskip("dropbox")
pytest.importorskip("cryptography")

try:
    from engine_assets_tests.dropbox_server import FakeDropboxServer, generate_certificates
except ModuleNotFoundError:
    # Without an __init__.py in this folder, pytest puts the folder itself on sys.path.
    from dropbox_server import FakeDropboxServer, generate_certificates

from engine_assets.storage.dropbox_store import DropboxArtifactStore  # noqa: E402 - after the skips above

MIB = 1024 * 1024
BLOCK = 4 * MIB
MODEL_FOLDER = "models/BTCUSDT/20261204_001500Z"


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _content_hash(data: bytes) -> str:
    """Dropbox's content hash, computed here independently of the store and the fake server."""
    blocks = [hashlib.sha256(data[start : start + BLOCK]).digest() for start in range(0, len(data), BLOCK)]
    return hashlib.sha256(b"".join(blocks)).hexdigest()


@pytest.fixture
def server(tmp_path):
    with FakeDropboxServer(tmp_path / "tls", page_size=3) as fake:
        yield fake


def _store(server: FakeDropboxServer, **options) -> DropboxArtifactStore:
    """A store that logs in with the refresh token and uses a 9 MiB session threshold with 4 MiB chunks."""
    options.setdefault("app_key", server.app_key)
    options.setdefault("app_secret", server.app_secret)
    options.setdefault("refresh_token", server.refresh_token)
    options.setdefault("session_threshold", 9 * MIB)
    options.setdefault("chunk_size", BLOCK)
    return DropboxArtifactStore(
        root="/engine", api_host=server.host, content_host=server.host, ca_bundle=server.ca_path, **options
    )


@pytest.fixture
def store(server) -> DropboxArtifactStore:
    return _store(server)


def test_small_write_roundtrip(store, server):
    store.write_bytes("runs/20261204Z/status.json", b'{"BTCUSDT": "succeeded"}')

    assert store.read_bytes("runs/20261204Z/status.json") == b'{"BTCUSDT": "succeeded"}'
    stored = server.files["/engine/runs/20261204z/status.json"]
    assert stored.path_display == "/engine/runs/20261204Z/status.json"
    assert store.exists("runs/20261204Z/status.json")
    assert not store.exists("runs/20261204Z/other.json")
    assert not store.exists("runs/20261204Z")
    assert "files/upload" in server.routes()
    assert "files/upload_session/start" not in server.routes()


def test_overwrite_replaces_content(store):
    store.write_bytes("champions/BTCUSDT.json", b"first")
    store.write_bytes("champions/BTCUSDT.json", b"second")

    assert store.read_bytes("champions/BTCUSDT.json") == b"second"


def test_session_upload_chunks(store, server):
    data = _payload(10 * MIB + 123, seed=1)

    store.write_bytes("encoder/20261204_000000Z/encoder.pt", data)

    (session,) = server.sessions.values()
    assert session.chunks == [
        ("append_v2", BLOCK, False),
        ("append_v2", BLOCK, False),
        ("finish", 2 * MIB + 123, True),
    ]
    stored = server.files["/engine/encoder/20261204_000000z/encoder.pt"]
    assert stored.data == data
    assert stored.content_hash == _content_hash(data)
    assert store.read_bytes("encoder/20261204_000000Z/encoder.pt") == data


def test_session_upload_from_file(store, server, tmp_path):
    source = tmp_path / "encoder.pt"
    source.write_bytes(_payload(12 * MIB, seed=2))

    store.write_file("encoder/20261204_000000Z/encoder.pt", source)

    (session,) = server.sessions.values()
    # A size that is a whole number of chunks still sends its last chunk with finish.
    assert session.chunks == [
        ("append_v2", BLOCK, False),
        ("append_v2", BLOCK, False),
        ("finish", BLOCK, True),
    ]
    assert store.read_bytes("encoder/20261204_000000Z/encoder.pt") == source.read_bytes()


def test_chunk_size_must_be_block_multiple(server):
    with pytest.raises(ValueError, match="invalid chunk_size=5242880: expected a multiple of 4194304"):
        _store(server, chunk_size=5 * MIB)


def test_server_rejects_bad_chunk(store, server):
    # Bypass the constructor's check to show that the server enforces the 4 MiB rule.
    store.chunk_size = 5 * MIB
    data = _payload(11 * MIB, seed=3)

    with pytest.raises(
        StorageError,
        match="upload session append at offset 0 of /engine/encoder/20261204_000000Z/encoder.pt failed: "
        ".*concurrent_session_invalid_data_size",
    ):
        store.write_bytes("encoder/20261204_000000Z/encoder.pt", data)

    assert not store.exists("encoder/20261204_000000Z/encoder.pt")
    appends = [record for record in server.requests if record.route == "files/upload_session/append_v2"]
    statuses = [record.status for record in appends]
    assert statuses == [409]


def test_content_hash_mismatch_detected(store, server):
    data = _payload(3000, seed=4)
    server.corrupt_content_hash("/engine/models/BTCUSDT/20261204_001500Z/model.json")

    with pytest.raises(IntegrityError) as caught:
        store.write_bytes(f"{MODEL_FOLDER}/model.json", data)

    message = str(caught.value)
    reported = server.files["/engine/models/btcusdt/20261204_001500z/model.json"].content_hash
    assert "/engine/models/BTCUSDT/20261204_001500Z/model.json" in message
    assert _content_hash(data) in message
    assert reported in message
    assert reported != _content_hash(data)
    with pytest.raises(IntegrityError, match="content_hash mismatch while downloading"):
        store.read_bytes(f"{MODEL_FOLDER}/model.json")


def test_content_hash_mismatch_after_session(store, server):
    server.corrupt_content_hash("/engine/encoder/20261204_000000Z/encoder.pt")

    with pytest.raises(IntegrityError, match="content_hash mismatch after upload of /engine/encoder/"):
        store.write_bytes("encoder/20261204_000000Z/encoder.pt", _payload(9 * MIB + 1, seed=5))


def test_rate_limit_waits_retry_after(server):
    waits: list[float] = []

    def recording_sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    store = _store(server, sleep=recording_sleep)
    store.write_bytes("champions/roster.json", b"{}")
    server.queue_rate_limits(2, retry_after=1)

    store.write_bytes("champions/roster.json", b'{"BTCUSDT": "champion"}')

    assert waits == [1.0, 1.0]
    uploads = [record for record in server.requests if record.route == "files/upload"]
    assert [record.status for record in uploads] == [200, 429, 429, 200]
    assert uploads[2].received_at - uploads[1].received_at >= 1.0
    assert uploads[3].received_at - uploads[2].received_at >= 1.0
    assert store.read_bytes("champions/roster.json") == b'{"BTCUSDT": "champion"}'


def test_rate_limit_gives_up(server):
    waits: list[float] = []
    store = _store(server, sleep=waits.append, max_rate_limit_retries=2)
    store.write_bytes("champions/roster.json", b"{}")
    server.queue_rate_limits(5, retry_after=1)

    with pytest.raises(StorageError, match="still rate limited \\(429\\) after 3 responses"):
        store.read_bytes("champions/roster.json")

    assert waits == [1.0, 1.0]


def test_rate_limit_total_wait_capped(server):
    waits: list[float] = []
    store = _store(server, sleep=waits.append, max_rate_limit_wait=10.0)
    store.write_bytes("champions/roster.json", b"{}")
    server.queue_rate_limits(1, retry_after=60)

    with pytest.raises(StorageError, match="still rate limited"):
        store.read_bytes("champions/roster.json")

    assert waits == []


def test_expired_token_refreshed(server, caplog):
    caplog.set_level(logging.DEBUG)
    store = _store(server)
    store.write_bytes("runs/20261204Z/status.json", b"first")
    assert server.refresh_count == 1
    server.expire_access_tokens()

    store.write_bytes("runs/20261204Z/status.json", b"second")

    assert server.refresh_count == 2
    routes = ("files/upload", "oauth2/token")
    statuses = [(record.route, record.status) for record in server.requests if record.route in routes]
    assert statuses == [
        ("oauth2/token", 200),
        ("files/upload", 200),
        ("files/upload", 401),
        ("oauth2/token", 200),
        ("files/upload", 200),
    ]
    assert store.read_bytes("runs/20261204Z/status.json") == b"second"
    for token in list(server.access_tokens) + [server.refresh_token, server.app_secret]:
        assert token not in caplog.text


def test_expired_access_token_without_refresh(server):
    token = server.issue_access_token()
    store = _store(server, app_key=None, app_secret=None, refresh_token=None, access_token=token)
    store.write_bytes("runs/20261204Z/status.json", b"first")
    server.expire_access_tokens()

    with pytest.raises(StorageError, match="access token expired.*DROPBOX_REFRESH_TOKEN") as caught:
        store.read_bytes("runs/20261204Z/status.json")

    assert token not in str(caught.value)
    assert server.refresh_count == 0


def test_invalid_refresh_token(server):
    store = _store(server, refresh_token="revoked-refresh-token")

    with pytest.raises(StorageError, match="rejected the credentials as invalid or revoked"):
        store.exists("runs/20261204Z/status.json")


def test_untrusted_certificate_rejected(server, tmp_path):
    other_ca, _, _ = generate_certificates(tmp_path / "other-ca")
    waits: list[float] = []
    untrusted = DropboxArtifactStore(
        root="/engine",
        app_key=server.app_key,
        app_secret=server.app_secret,
        refresh_token=server.refresh_token,
        api_host=server.host,
        content_host=server.host,
        ca_bundle=other_ca,
        sleep=waits.append,
    )

    with pytest.raises(StorageError, match="TLS certificate verification failed.*check ca_bundle"):
        untrusted.exists("runs/20261204Z/status.json")

    assert waits == []
    assert server.requests == []


def test_listing_paginates(store, server):
    keys = [f"models/BTCUSDT/20261204_001500Z/file{i}.json" for i in range(7)]
    for key in keys:
        store.write_bytes(key, b"{}")
    store.write_bytes("models/ETHUSDT/20261204_001500Z/model.json", b"{}")

    listed = store.list_keys("models/BTCUSDT")

    assert listed == keys
    assert server.routes().count("files/list_folder/continue") >= 2
    assert store.list_keys() == sorted(keys + ["models/ETHUSDT/20261204_001500Z/model.json"])
    assert store.list_keys(keys[0]) == [keys[0]]
    assert store.list_keys("models/DOGEUSDT") == []
    assert store.list_folders("models") == ["BTCUSDT", "ETHUSDT"]


def test_missing_key_and_delete(store):
    with pytest.raises(ArtifactNotFoundError, match="artifact not found: champions/BTCUSDT.json"):
        store.read_bytes("champions/BTCUSDT.json")

    store.write_bytes("champions/BTCUSDT.json", b"{}")
    store.delete("champions/BTCUSDT.json")
    store.delete("champions/BTCUSDT.json")

    assert not store.exists("champions/BTCUSDT.json")


def test_manifest_and_verify_store(store, server):
    files = {"model.json": b'{"trees": [1]}', "metrics.json": b'{"sharpe": 1.3}'}
    publish_folder(store, MODEL_FOLDER, files)
    write_pointer(store, "champions/BTCUSDT.json", MODEL_FOLDER, {"symbol": "BTCUSDT"})
    assert verify_folder(store, MODEL_FOLDER) == files
    assert verify_store(store).ok

    server.files["/engine/models/btcusdt/20261204_001500z/metrics.json"].data = b'{"sharpe": 9.9}'
    server.files["/engine/models/btcusdt/20261204_001500z/metrics.json"].content_hash = _content_hash(
        b'{"sharpe": 9.9}'
    )
    report = verify_store(store)

    assert not report.ok
    assert len(report.problems) == 2
    assert f"SHA256 mismatch for {MODEL_FOLDER}/metrics.json" in report.problems[0]
    assert "pointer champions/BTCUSDT.json" in report.problems[1]


def test_describe_has_no_secrets(store, server):
    description = store.describe()

    assert description == f"dropbox:/engine at {server.host}"
    for secret in (server.refresh_token, server.app_secret, server.app_key):
        assert secret not in description


def test_factory_builds_dropbox_store(server, tmp_path, monkeypatch):
    # Operators trust a private CA through requests' own variable; the hosts come from the secrets mapping.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_path))
    settings = EngineSettings.from_env(
        {"ENGINE_HOME": str(tmp_path), "ENGINE_STORAGE": "dropbox", "ENGINE_DROPBOX_ROOT": "/team/engine"}
    )
    secrets = {
        "DROPBOX_APP_KEY": server.app_key,
        "DROPBOX_APP_SECRET": server.app_secret,
        "DROPBOX_REFRESH_TOKEN": server.refresh_token,
        "DROPBOX_API_HOST": server.host,
    }

    store = build_store(settings, secrets=secrets)
    store.write_bytes("runs/20261204Z/status.json", b"{}")

    assert store.backend == "dropbox"
    assert "/team/engine/runs/20261204z/status.json" in server.files
    assert store.describe() == f"dropbox:/team/engine at {server.host}"
