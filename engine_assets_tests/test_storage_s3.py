"""Tests of the S3 artifact store against moto's S3 server on 127.0.0.1, with a proxy injecting 5xx errors."""

from __future__ import annotations

import base64
import hashlib
import http.client
import itertools
import random
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine_assets.settings import EngineSettings
from engine_assets.storage.base import ArtifactNotFoundError, IntegrityError, StorageError
from engine_assets.storage.factory import build_store
from engine_assets.storage.manifest import publish_folder, sha256_hex, verify_folder, write_pointer
from engine_assets.storage.verify import verify_store

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

MIB = 1024 * 1024
MODEL_FOLDER = "models/BTCUSDT/20261204_001500Z"
_bucket_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def moto_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path, moto_endpoint):
    """Point boto3 at moto with dummy credentials, ignoring any AWS configuration of the machine."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_endpoint


@pytest.fixture
def bucket(aws_env) -> str:
    name = f"engine-test-{next(_bucket_numbers)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(aws_env):
    """A plain boto3 client for checking and altering what the store wrote."""
    return boto3.client("s3")


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _small_parts_store(bucket: str, **options):
    from engine_assets.storage.s3 import S3ArtifactStore

    return S3ArtifactStore(bucket, multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, **options)


class FlakyProxy:
    """An HTTP proxy on 127.0.0.1 in front of moto that fails the first requests matching a rule.

    ``should_fail`` receives the method, the path with its query and the
    request headers. A failed request gets an S3 error document with
    ``status`` and ``code``. ``alter_headers`` may rewrite the headers of
    responses that moto sends back.
    """

    def __init__(
        self,
        upstream: str,
        should_fail: Callable[[str, str, dict[str, str]], bool],
        failures: int = 1,
        status: int = 500,
        code: str = "InternalError",
        message: str = "We encountered an internal error. Please try again.",
        alter_headers: Callable[[str, str, list[tuple[str, str]]], list[tuple[str, str]]] | None = None,
    ):
        parts = urllib.parse.urlsplit(upstream)
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self.should_fail = should_fail
        self.failures_left = failures
        self.status = status
        self.error_document = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            "<RequestId>flaky-proxy</RequestId></Error>"
        ).encode()
        self.alter_headers = alter_headers
        #: (method, path with query, status) of every request, in arrival order.
        self.records: list[tuple[str, str, int]] = []
        #: Paths of the requests that the proxy failed on purpose.
        self.injected: list[str] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_ProxyHandler,), {"proxy": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> "FlakyProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def decide_failure(self, method: str, path: str, headers: dict[str, str]) -> bool:
        with self._lock:
            if self.failures_left > 0 and self.should_fail(method, path, headers):
                self.failures_left -= 1
                self.injected.append(path)
                return True
            return False

    def record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.records.append((method, path, status))


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect", "date", "server"}


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes, so without TCP_NODELAY each response
    # waits for the client's delayed ACK.
    disable_nagle_algorithm = True
    proxy: FlakyProxy

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the name is fixed by the base class
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return bytes(body)
                body.extend(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self) -> None:
        body = self._read_body()
        headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
        if self.proxy.decide_failure(self.command, self.path, headers):
            self.proxy.record(self.command, self.path, self.proxy.status)
            self.send_response(self.proxy.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(self.proxy.error_document)))
            self.end_headers()
            self.wfile.write(self.proxy.error_document)
            return

        connection = http.client.HTTPConnection(
            self.proxy.upstream_host, self.proxy.upstream_port, timeout=60
        )
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
            upstream_headers = response.getheaders()
        finally:
            connection.close()
        if self.proxy.alter_headers is not None:
            upstream_headers = self.proxy.alter_headers(self.command, self.path, upstream_headers)
        self.proxy.record(self.command, self.path, response.status)

        self.send_response(response.status)
        for name, value in upstream_headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        # A HEAD response carries the object's length without a body.
        length = response.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(content))
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward  # noqa: N815 - names fixed by the base class


def test_small_write_single_part(bucket, s3):
    store = _small_parts_store(bucket)
    data = b'{"sharpe": 1.5}'

    store.write_bytes("models/BTCUSDT/20261204_001500Z/metrics.json", data)

    head = s3.head_object(
        Bucket=bucket, Key="models/BTCUSDT/20261204_001500Z/metrics.json", ChecksumMode="ENABLED"
    )
    assert "-" not in head["ETag"]
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert store.read_bytes("models/BTCUSDT/20261204_001500Z/metrics.json") == data
    assert store.exists("models/BTCUSDT/20261204_001500Z/metrics.json")


def test_large_write_multipart(bucket, s3):
    store = _small_parts_store(bucket)
    data = _payload(11 * MIB + 17, seed=11)

    store.write_bytes("encoder/20261204_000000Z/encoder.pt", data)

    head = s3.head_object(Bucket=bucket, Key="encoder/20261204_000000Z/encoder.pt")
    # A multipart ETag is "<md5 of the part md5s>-<part count>", not the MD5 of the object.
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentLength"] == len(data)
    first_part = s3.head_object(Bucket=bucket, Key="encoder/20261204_000000Z/encoder.pt", PartNumber=1)
    assert first_part["PartsCount"] == 3
    assert store.read_bytes("encoder/20261204_000000Z/encoder.pt") == data


def test_write_file_multipart(bucket, s3, tmp_path):
    store = _small_parts_store(bucket)
    source = tmp_path / "encoder.pt"
    source.write_bytes(_payload(6 * MIB, seed=12))

    store.write_file("encoder/20261204_000000Z/encoder.pt", source)

    head = s3.head_object(Bucket=bucket, Key="encoder/20261204_000000Z/encoder.pt")
    assert head["ETag"].strip('"').endswith("-2")
    assert store.read_bytes("encoder/20261204_000000Z/encoder.pt") == source.read_bytes()


def test_prefix_and_listing(bucket, s3):
    from engine_assets.storage.s3 import S3ArtifactStore

    store = S3ArtifactStore(bucket, prefix="/team/engine/", list_page_size=2)
    keys = [f"models/BTCUSDT/20261204_001500Z/file{i}.json" for i in range(5)]
    for key in keys:
        store.write_bytes(key, b"{}")
    store.write_bytes("models/BTCUSDT2/20261204_001500Z/model.json", b"{}")

    stored = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    all_keys = keys + ["models/BTCUSDT2/20261204_001500Z/model.json"]
    assert sorted(stored) == sorted(f"team/engine/{key}" for key in all_keys)
    assert store.list_keys("models/BTCUSDT") == keys
    assert store.list_keys(keys[0]) == [keys[0]]
    assert store.list_keys("models/DOGEUSDT") == []
    assert store.list_folders("models") == ["BTCUSDT", "BTCUSDT2"]
    assert store.describe() == f"s3://{bucket}/team/engine at {store.client.meta.endpoint_url}"


def test_missing_key_and_delete(bucket):
    store = _small_parts_store(bucket)

    with pytest.raises(ArtifactNotFoundError, match=f"s3://{bucket}/champions/BTCUSDT.json"):
        store.read_bytes("champions/BTCUSDT.json")
    assert not store.exists("champions/BTCUSDT.json")

    store.write_bytes("champions/BTCUSDT.json", b"{}")
    store.delete("champions/BTCUSDT.json")
    store.delete("champions/BTCUSDT.json")
    assert not store.exists("champions/BTCUSDT.json")


def test_missing_bucket_named(aws_env):
    from engine_assets.storage.s3 import S3ArtifactStore

    store = S3ArtifactStore("engine-no-such-bucket")

    with pytest.raises(StorageError, match="s3://engine-no-such-bucket/runs/a.json.*ENGINE_S3_BUCKET"):
        store.write_bytes("runs/a.json", b"{}")


def test_altered_object_caught_by_manifest(bucket, s3):
    store = _small_parts_store(bucket)
    files = {"model.json": b'{"trees": [1, 2, 3]}', "metrics.json": b'{"sharpe": 1.1}'}
    publish_folder(store, MODEL_FOLDER, files)
    altered = b'{"trees": [1, 2, 4]}'
    s3.put_object(Bucket=bucket, Key=f"{MODEL_FOLDER}/model.json", Body=altered)

    with pytest.raises(IntegrityError) as caught:
        verify_folder(store, MODEL_FOLDER)

    message = str(caught.value)
    assert f"{MODEL_FOLDER}/model.json" in message
    assert sha256_hex(files["model.json"]) in message
    assert sha256_hex(altered) in message


def test_server_error_retried_by_botocore(bucket, aws_env, monkeypatch):
    key = "models/ETHUSDT/20261204_001500Z/model.json"

    def first_put_of_key(method: str, path: str, headers: dict[str, str]) -> bool:
        return method == "PUT" and path.split("?")[0].endswith(key)

    with FlakyProxy(aws_env, first_put_of_key) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        store = _small_parts_store(bucket)
        store.write_bytes(key, b'{"trees": []}')

    puts = [record for record in proxy.records if record[0] == "PUT"]
    assert [status for _, _, status in puts] == [500, 200]
    assert len(proxy.injected) == 1
    assert store.client.meta.endpoint_url == proxy.url
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_env)
    assert _small_parts_store(bucket).read_bytes(key) == b'{"trees": []}'


def test_failed_part_retries_whole_upload(bucket, aws_env, monkeypatch):
    key = "encoder/20261204_000000Z/encoder.pt"
    data = _payload(11 * MIB, seed=21)
    waits: list[float] = []

    def first_part_upload(method: str, path: str, headers: dict[str, str]) -> bool:
        return method == "PUT" and "partNumber=2" in path

    with FlakyProxy(aws_env, first_part_upload) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        # One botocore attempt, so the failed part fails the transfer and the store repeats the whole upload.
        # One part at a time keeps the request order fixed.
        store = _small_parts_store(
            bucket, max_attempts=1, max_concurrency=1, retry_base_delay=0.25, sleep=waits.append
        )
        store.write_bytes(key, data)

    starts = [
        path
        for method, path, _ in proxy.records
        if method == "POST" and urllib.parse.urlsplit(path).query == "uploads"
    ]
    assert len(proxy.injected) == 1
    assert "partNumber=2" in proxy.injected[0]
    assert len(starts) == 2
    assert waits == [0.25]
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_env)
    assert _small_parts_store(bucket).read_bytes(key) == data


def test_checksum_mismatch_after_upload(bucket, aws_env, monkeypatch):
    key = "models/BTCUSDT/20261204_001500Z/model.json"
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()

    def replace_checksum(method: str, path: str, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if method != "HEAD":
            return headers
        altered = []
        for name, value in headers:
            altered.append((name, wrong if name.lower() == "x-amz-checksum-sha256" else value))
        return altered

    with FlakyProxy(aws_env, lambda *request: False, alter_headers=replace_checksum) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        store = _small_parts_store(bucket)
        with pytest.raises(IntegrityError) as caught:
            store.write_bytes(key, b'{"trees": [1]}')

    message = str(caught.value)
    assert f"s3://{bucket}/{key}" in message
    assert base64.b64encode(hashlib.sha256(b'{"trees": [1]}').digest()).decode() in message
    assert wrong in message


def test_checksum_rejection_falls_back(bucket, aws_env, monkeypatch, caplog):
    key = "models/BTCUSDT/20261204_001500Z/model.json"

    def asks_for_sha256(method: str, path: str, headers: dict[str, str]) -> bool:
        lowered = {name.lower(): value.lower() for name, value in headers.items()}
        # botocore names the algorithm in one header and sends the value as a header or a trailer.
        named = lowered.get("x-amz-sdk-checksum-algorithm") == "sha256"
        named = named or "sha256" in lowered.get("x-amz-trailer", "")
        return method == "PUT" and (named or "x-amz-checksum-sha256" in lowered)

    proxy = FlakyProxy(
        aws_env,
        asks_for_sha256,
        failures=100,
        status=400,
        code="InvalidRequest",
        message="x-amz-checksum-sha256 is not supported by this server",
    )
    with proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        store = _small_parts_store(bucket)
        store.write_bytes(key, b'{"trees": [2]}')
        assert store.read_bytes(key) == b'{"trees": [2]}'

    assert len(proxy.injected) == 1
    assert store.checksums is False
    assert "rejected the SHA256 checksum header" in caplog.text


def test_verify_store_finds_problems(bucket, s3):
    store = _small_parts_store(bucket, list_page_size=2)
    files = {"model.json": b'{"trees": [1]}', "metrics.json": b'{"sharpe": 0.9}', "heads.txt": b"lightgbm"}
    publish_folder(store, MODEL_FOLDER, files)
    publish_folder(store, "encoder/20261204_000000Z", {"encoder.pt": b"weights"})
    write_pointer(store, "champions/BTCUSDT.json", MODEL_FOLDER, {"symbol": "BTCUSDT"})
    s3.put_object(Bucket=bucket, Key=f"{MODEL_FOLDER}/metrics.json", Body=b'{"sharpe": 9.9}')
    s3.delete_object(Bucket=bucket, Key=f"{MODEL_FOLDER}/heads.txt")

    report = verify_store(store)

    assert not report.ok
    assert report.folders_checked == ["encoder/20261204_000000Z", MODEL_FOLDER]
    assert report.pointers_checked == ["champions/BTCUSDT.json"]
    assert len(report.problems) == 3
    assert f"file missing: {MODEL_FOLDER}/heads.txt" in report.problems[0]
    assert f"SHA256 mismatch for {MODEL_FOLDER}/metrics.json" in report.problems[1]
    assert sha256_hex(b'{"sharpe": 9.9}') in report.problems[1]
    assert "pointer champions/BTCUSDT.json" in report.problems[2]


def test_factory_builds_s3_store(aws_env, tmp_path):
    settings = EngineSettings.from_env(
        {
            "ENGINE_HOME": str(tmp_path),
            "ENGINE_STORAGE": "s3",
            "ENGINE_S3_BUCKET": "engine-factory",
            "ENGINE_S3_PREFIX": "/daily/",
        }
    )

    store = build_store(settings, secrets={})

    assert store.backend == "s3"
    assert store.describe() == f"s3://engine-factory/daily at {aws_env}"
