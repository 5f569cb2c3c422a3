"""Whole daily runs on S3 (moto) and Dropbox (a local fake) compared with one on local disk.

Each run is `engine train` as a subprocess on three real coins, with the real
Dagster daemon. The remote stores must end with the local layout and pass
`verify_store`. Each coin's folder must be uploaded inside that coin's run,
and its pointer only after the folder was read back. No secret may reach a
log, a run event, metadata or a stored file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine_assets.storage.base import ArtifactStore
from engine_assets.storage.local import LocalArtifactStore
from engine_assets.storage.manifest import MANIFEST_NAME, read_json, read_manifest
from engine_assets.storage.verify import verify_store
from engine_assets_tests.conftest import link_samples

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
pytest.importorskip("dropbox")
pytest.importorskip("cryptography")

from engine_assets_tests.dropbox_server import FakeDropboxServer  # noqa: E402 - after the skips above
from engine_assets_tests.test_storage_s3 import FlakyProxy  # noqa: E402

pytestmark = pytest.mark.integration

BASES = ["BTC", "ETH", "SOL"]
SYMBOLS = [f"{base}USDT" for base in BASES]
ENGINE = str(Path(sys.executable).with_name("engine"))
RUN_TIMEOUT_SECONDS = 300

S3_BUCKET = "engine-artifacts"
S3_PREFIX = "team/engine"
AWS_ACCESS_KEY_ID = "AKIDENGINETESTS"
AWS_SECRET = "aws-secret-5f1c9e27d4b8a6"
DROPBOX_ROOT = "/team/engine"
DROPBOX_APP_KEY = "engine-test-app-key"
DROPBOX_APP_SECRET = "dropbox-app-secret-8b3e61f0"
DROPBOX_REFRESH_TOKEN = "dropbox-refresh-token-c47d2a95"

_STAMP = re.compile(r"\d{8}_\d{6}Z")
_DAY = re.compile(r"\d{8}Z")


@dataclass
class EngineRun:
    """One `engine train` run and what the tests need to inspect it."""

    backend: str
    home: Path
    env: dict[str, str]
    result: subprocess.CompletedProcess
    store: ArtifactStore
    #: (time.time(), "put" or "get", key) of every upload and download the server saw, in arrival order.
    transfers: list[tuple[float, str, str]] = field(default_factory=list)
    #: Secret values that must not appear anywhere after the run.
    secrets: list[str] = field(default_factory=list)
    #: Access tokens the fake Dropbox server issued for the refresh token during the run.
    token_refreshes: int = 0


def _engine(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ENGINE, *args], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, check=False
    )


def _base_env(home: Path, data_dir: Path) -> dict[str, str]:
    """The test process's environment without any engine, Dropbox, AWS or CA settings of the machine."""
    dropped = ("ENGINE_", "TELEGRAM_", "DROPBOX_", "AWS_")
    env = {name: value for name, value in os.environ.items() if not name.startswith(dropped)}
    for name in ("DAGSTER_HOME", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env.pop(name, None)
    env.update(
        ENGINE_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster"),
        ENGINE_DATA_DIR=str(data_dir),
        ENGINE_ENCODER_EPOCHS="1",
        ENGINE_COIN_RETRIES="0",
        # The servers run on 127.0.0.1; a proxy from the machine's settings must not intercept them.
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, sample_dir) -> Path:
    return link_samples(sample_dir, tmp_path_factory.mktemp("remote-data") / "data", BASES)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, data_dir) -> EngineRun:
    home = tmp_path_factory.mktemp("local-run") / "home"
    env = _base_env(home, data_dir)
    result = _engine(env, "train")
    return EngineRun("local", home, env, result, LocalArtifactStore(home / "storage"))


class TimedProxy(FlakyProxy):
    """A pass-through proxy in front of moto that records the time of every response it forwards."""

    def __init__(self, upstream: str, bucket: str, prefix: str):
        super().__init__(upstream, should_fail=lambda method, path, headers: False, failures=0)
        self.object_prefix = f"/{bucket}/{prefix}/"
        self.transfers: list[tuple[float, str, str]] = []

    def record(self, method: str, path: str, status: int) -> None:
        super().record(method, path, status)
        # Path-style addressing: /{bucket}/{prefix}/{key}?query. Listing and bucket calls have no key.
        object_path = urllib.parse.unquote(path.split("?", 1)[0])
        kind = {"PUT": "put", "GET": "get"}.get(method)
        if kind and status < 300 and object_path.startswith(self.object_prefix):
            key = object_path[len(self.object_prefix):]
            with self._lock:
                self.transfers.append((time.time(), kind, key))


class RecordingDropboxServer(FakeDropboxServer):
    """The fake Dropbox server, recording when each file under ``root`` was committed or downloaded."""

    def __init__(self, directory: Path, root: str, **options):
        super().__init__(directory, **options)
        self.root_prefix = root.rstrip("/") + "/"
        self.transfers: list[tuple[float, str, str]] = []

    def _note(self, kind: str, path: str) -> None:
        # Called with the server's lock held, so the order is the order of the commits.
        if path.startswith(self.root_prefix):
            self.transfers.append((time.time(), kind, path[len(self.root_prefix):]))

    def _commit(self, path, data, mode):
        metadata = super()._commit(path, data, mode)
        self._note("put", path)
        return metadata

    def route_download(self, argument, body):
        result = super().route_download(argument, body)
        self._note("get", argument["path"])
        return result


def _s3_run(home: Path, data_dir: Path, tls_dir: Path):
    from engine_assets.storage.s3 import S3ArtifactStore

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        session = boto3.session.Session(
            aws_access_key_id=AWS_ACCESS_KEY_ID, aws_secret_access_key=AWS_SECRET, region_name="us-east-1"
        )
        client = session.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=S3_BUCKET)
        with TimedProxy(endpoint, S3_BUCKET, S3_PREFIX) as proxy:
            env = _base_env(home, data_dir)
            env.update(
                ENGINE_STORAGE="s3",
                ENGINE_S3_BUCKET=S3_BUCKET,
                ENGINE_S3_PREFIX=S3_PREFIX,
                AWS_ENDPOINT_URL=proxy.url,
                AWS_ACCESS_KEY_ID=AWS_ACCESS_KEY_ID,
                AWS_SECRET_ACCESS_KEY=AWS_SECRET,
                AWS_DEFAULT_REGION="us-east-1",
                AWS_CONFIG_FILE=str(tls_dir / "no-aws-config"),
                AWS_SHARED_CREDENTIALS_FILE=str(tls_dir / "no-aws-credentials"),
                AWS_EC2_METADATA_DISABLED="true",
            )
            result = _engine(env, "train")
        # Reads after the run go to moto directly, so they do not join the recorded transfers.
        store = S3ArtifactStore(S3_BUCKET, prefix=S3_PREFIX, client=client)
        env = {**env, "AWS_ENDPOINT_URL": endpoint}
        yield EngineRun("s3", home, env, result, store, list(proxy.transfers), [AWS_SECRET])
    finally:
        server.stop()


def _dropbox_run(home: Path, data_dir: Path, tls_dir: Path):
    from engine_assets.storage.dropbox_store import DropboxArtifactStore

    with RecordingDropboxServer(
        tls_dir,
        DROPBOX_ROOT,
        app_key=DROPBOX_APP_KEY,
        app_secret=DROPBOX_APP_SECRET,
        refresh_token=DROPBOX_REFRESH_TOKEN,
        page_size=25,
    ) as server:
        env = _base_env(home, data_dir)
        # Only the API host is set: the engine uses it for the content host too.
        env.update(
            ENGINE_STORAGE="dropbox",
            ENGINE_DROPBOX_ROOT=DROPBOX_ROOT,
            DROPBOX_APP_KEY=DROPBOX_APP_KEY,
            DROPBOX_APP_SECRET=DROPBOX_APP_SECRET,
            DROPBOX_REFRESH_TOKEN=DROPBOX_REFRESH_TOKEN,
            DROPBOX_API_HOST=server.host,
            DROPBOX_CA_BUNDLE=str(server.ca_path),
        )
        result = _engine(env, "train")
        transfers = list(server.transfers)
        secrets = [DROPBOX_APP_SECRET, DROPBOX_REFRESH_TOKEN, *server.access_tokens]
        refreshes = server.refresh_count
        store = DropboxArtifactStore(
            root=DROPBOX_ROOT,
            app_key=DROPBOX_APP_KEY,
            app_secret=DROPBOX_APP_SECRET,
            refresh_token=DROPBOX_REFRESH_TOKEN,
            api_host=server.host,
            content_host=server.host,
            ca_bundle=server.ca_path,
        )
        yield EngineRun("dropbox", home, env, result, store, transfers, secrets, refreshes)


@pytest.fixture(scope="module", params=["s3", "dropbox"])
def remote_run(request, tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp(f"{request.param}-run")
    runner = _s3_run if request.param == "s3" else _dropbox_run
    yield from runner(folder / "home", data_dir, folder / "server")


def _normalized_layout(store: ArtifactStore) -> set[str]:
    """Return every key with its folder timestamps replaced, such as ``models/BTCUSDT/<stamp>/metrics.json``."""
    return {_DAY.sub("<day>", _STAMP.sub("<stamp>", key)) for key in store.list_keys("")}


def _ledger(store: ArtifactStore) -> dict:
    (key,) = [key for key in store.list_keys("runs") if key.endswith("/status.json")]
    return read_json(store, key)


def _coin_runs(home: Path) -> dict:
    from dagster import DagsterInstance, RunsFilter

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        records = instance.get_run_records(RunsFilter(job_name="coin_job"))
    return {record.dagster_run.tags["dagster/partition"]: record for record in records}


def test_remote_run_succeeds(remote_run):
    result = remote_run.result

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "3 coins: 3 succeeded" in result.stdout
    coins = _ledger(remote_run.store)["coins"]
    assert sorted(coins) == SYMBOLS
    for symbol in SYMBOLS:
        assert coins[symbol]["status"] == "succeeded"


def test_dropbox_run_logs_in_with_refresh_token(remote_run):
    if remote_run.backend != "dropbox":
        pytest.skip("Dropbox only")

    # The engine command and every run worker that built a store exchanged the refresh token.
    assert remote_run.token_refreshes >= len(SYMBOLS) + 2


def test_remote_layout_matches_local(remote_run, local_run):
    assert local_run.result.returncode == 0, local_run.result.stderr[-3000:]
    local_layout = _normalized_layout(local_run.store)
    remote_layout = _normalized_layout(remote_run.store)

    assert remote_layout == local_layout
    for symbol in SYMBOLS:
        assert f"champions/{symbol}.json" in remote_layout
        assert f"models/{symbol}/<stamp>/{MANIFEST_NAME}" in remote_layout
        assert f"models/{symbol}/<stamp>/metrics.json" in remote_layout
    assert f"encoder/<stamp>/{MANIFEST_NAME}" in remote_layout
    assert "encoder/<stamp>/checkpoints/epoch_001.pt" in remote_layout
    assert "champions/roster.json" in remote_layout
    assert "runs/<day>/status.json" in remote_layout
    assert "summary/<day>/engine_summary.json" in remote_layout


def test_remote_store_verifies(remote_run):
    report = verify_store(remote_run.store)

    assert report.ok, report.problems
    assert len(report.folders_checked) == len(SYMBOLS) + 1
    assert sorted(report.pointers_checked) == [f"champions/{symbol}.json" for symbol in SYMBOLS]
    assert report.incomplete_folders == []
    assert report.unlisted_files == []


def test_storage_verify_command_remote(remote_run):
    result = _engine(remote_run.env, "storage", "verify")

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "OK"
    assert f"checked {len(SYMBOLS) + 1} folders" in result.stdout
    assert f"{len(SYMBOLS)} pointers" in result.stdout


def test_models_upload_inside_coin_run(remote_run):
    coins = _ledger(remote_run.store)["coins"]
    runs = _coin_runs(remote_run.home)

    uploads = {key: moment for moment, kind, key in remote_run.transfers if kind == "put"}

    for symbol in SYMBOLS:
        folder = coins[symbol]["artifact"]
        names = sorted(read_manifest(remote_run.store, folder)["files"])
        record = runs[symbol]
        for name in names + [MANIFEST_NAME]:
            moment = uploads[f"{folder}/{name}"]
            # The upload happened while this coin's own run was running, not at the end of the day.
            assert record.start_time <= moment, (symbol, name)
            assert moment <= record.end_time, (symbol, name)


def test_pointer_written_after_readback(remote_run):
    coins = _ledger(remote_run.store)["coins"]
    transfers = [(kind, key) for _, kind, key in remote_run.transfers]

    for symbol in SYMBOLS:
        folder = coins[symbol]["artifact"]
        pointer_key = f"champions/{symbol}.json"
        assert read_json(remote_run.store, pointer_key)["path"] == folder
        (pointer_at,) = [i for i, transfer in enumerate(transfers) if transfer == ("put", pointer_key)]
        manifest_at = transfers.index(("put", f"{folder}/{MANIFEST_NAME}"))
        assert manifest_at < pointer_at
        between = transfers[manifest_at + 1 : pointer_at]
        for name in read_manifest(remote_run.store, folder)["files"]:
            put_at = transfers.index(("put", f"{folder}/{name}"))
            assert put_at < manifest_at, (symbol, name)
            # Every file was downloaded and checked against the manifest before the pointer was written.
            assert ("get", f"{folder}/{name}") in between, (symbol, name)


def _found(texts: dict[str, bytes], secrets: list[str]) -> list[str]:
    """Return ``source: secret prefix`` for every secret found in a text."""
    return [
        f"{source}: {secret[:8]}..."
        for source, data in texts.items()
        for secret in secrets
        if secret.encode() in data
    ]


def test_no_secrets_in_console_or_daemon_log(remote_run):
    daemon_log = remote_run.home / "logs" / "daemon.log"
    texts = {
        "stdout": remote_run.result.stdout.encode(),
        "stderr": remote_run.result.stderr.encode(),
        "daemon.log": daemon_log.read_bytes(),
    }

    assert daemon_log.stat().st_size > 0
    assert _found(texts, remote_run.secrets) == []


def test_no_secrets_in_run_events(remote_run):
    from dagster import DagsterInstance, serialize_value

    events: dict[str, bytes] = {}
    materializations: dict[str, bytes] = {}
    with DagsterInstance.from_config(str(remote_run.home / "dagster")) as instance:
        runs = instance.get_runs()
        for run in runs:
            for number, entry in enumerate(instance.all_logs(run.run_id)):
                source = f"run {run.run_id[:8]} ({run.job_name}) event {number}"
                events[source] = serialize_value(entry).encode()
                event = entry.dagster_event
                if event is not None and event.is_step_materialization:
                    metadata = event.step_materialization_data.materialization.metadata
                    materializations[source] = repr(metadata).encode()

    # The encoder run, one run per coin and the report run.
    assert len(runs) == len(SYMBOLS) + 2
    coin_metadata = [text for source, text in materializations.items() if "(coin_job)" in source]
    assert sum(b"sharpe_net" in text for text in coin_metadata) == len(SYMBOLS)
    assert _found(events, remote_run.secrets) == []
    assert _found(materializations, remote_run.secrets) == []


def test_no_secrets_in_stored_objects(remote_run):
    store = remote_run.store
    texts = {key: store.read_bytes(key) for key in store.list_keys("")}

    assert any(key.startswith("runs/") for key in texts)
    assert any(key.startswith("summary/") for key in texts)
    assert _found(texts, remote_run.secrets) == []


def test_no_secrets_in_engine_home(remote_run):
    # Compute logs, the Dagster databases, caches and locks: every file the run left on the host.
    files = [path for path in remote_run.home.rglob("*") if path.is_file()]
    texts = {str(path.relative_to(remote_run.home)): path.read_bytes() for path in files}

    assert any(name.endswith(".db") for name in texts)
    assert _found(texts, remote_run.secrets) == []


def test_secret_variables_cover_factory_names():
    from engine_assets.resources import SECRET_VARIABLES
    from engine_assets.storage.factory import DROPBOX_CONNECTION_NAMES, DROPBOX_SECRET_NAMES

    assert set(DROPBOX_SECRET_NAMES) <= set(SECRET_VARIABLES)
    assert set(DROPBOX_CONNECTION_NAMES) <= set(SECRET_VARIABLES)
