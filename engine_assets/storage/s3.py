"""Artifact store in an S3 bucket, or any server that speaks the S3 API.

The endpoint, region and credentials come from boto3's standard settings
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, profiles,
instance roles), so pointing the store at MinIO or another S3-compatible
server needs no code change.

Integrity: every upload sends a SHA256 checksum (``ChecksumAlgorithm``) and
the store compares the checksum the server returns with its own. The ETag is
not used, because for a multipart upload it is not the MD5 of the object.
The SHA256 manifests of ``engine_assets.storage.manifest`` remain the check
that readers rely on.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO
from urllib.parse import urlsplit

from engine_assets.storage.base import (
    ArtifactNotFoundError,
    ArtifactStore,
    IntegrityError,
    StorageError,
    normalize_key,
)

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
# S3 rejects parts below 5 MiB (except the last one) and uploads of more than 10,000 parts.
MIN_PART_SIZE = 5 * MIB
CHECKSUM_ALGORITHM = "SHA256"
# Error codes S3-compatible servers use when they reject the x-amz-checksum-* headers.
_CHECKSUM_REJECTION_CODES = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest"})
_TRANSIENT_ERROR_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException"}
)


class S3ArtifactStore(ArtifactStore):
    """Objects under ``s3://{bucket}/{prefix}/``, uploaded through boto3's transfer manager.

    A PUT to S3 replaces an object atomically, and a multipart upload becomes
    visible only when it completes, so ``write_bytes`` meets the atomic-write
    contract without temporary keys.

    Retries happen at two levels. botocore retries each request on 5xx
    responses, throttling and timeouts (``retry_mode`` and ``max_attempts``).
    On top of that the store repeats a whole operation up to
    ``operation_attempts`` times when it still fails with a transient error.
    An operation is an upload with all its parts, a download with its body or
    a listing with all its pages. A part that failed on every botocore
    attempt, or a connection dropped while a body streamed, is such an error.
    """

    backend = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client=None,
        *,
        multipart_threshold: int = 64 * MIB,
        multipart_chunksize: int = 16 * MIB,
        max_concurrency: int = 4,
        retry_mode: str = "standard",
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        operation_attempts: int = 3,
        retry_base_delay: float = 1.0,
        list_page_size: int = 1000,
        checksums: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """Create the store; ``client`` replaces the boto3 client built from the settings above.

        ``multipart_threshold`` and ``multipart_chunksize`` are in bytes; the
        chunk size must be at least 5 MiB, the S3 minimum part size.
        ``max_attempts`` is botocore's number of tries per request, the first
        one included. ``operation_attempts`` is the number of tries of a
        whole operation, and each try may make ``max_attempts`` requests.
        ``sleep`` waits between whole-operation retries and exists for tests.
        """
        if not bucket or not bucket.strip():
            raise StorageError(
                "S3 bucket name is empty: set ENGINE_S3_BUCKET to the bucket to store artifacts in"
            )
        if multipart_chunksize < MIN_PART_SIZE:
            raise ValueError(
                f"invalid multipart_chunksize={multipart_chunksize}: "
                f"S3 parts must be at least {MIN_PART_SIZE} bytes"
            )
        if multipart_threshold < 1:
            raise ValueError(
                f"invalid multipart_threshold={multipart_threshold}: expected a positive size in bytes"
            )
        if retry_mode not in ("standard", "adaptive", "legacy"):
            raise ValueError(f"invalid retry_mode={retry_mode!r}: expected standard, adaptive or legacy")
        if max_attempts < 1 or operation_attempts < 1:
            raise ValueError(
                f"invalid retry counts max_attempts={max_attempts}, "
                f"operation_attempts={operation_attempts}: expected at least 1"
            )

        # boto3 is imported here so that a local-only run never pays for it.
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket.strip()
        self.prefix = normalize_key(prefix) if prefix.strip("/") else ""
        if client is None:
            config = Config(
                # total_max_attempts counts the first try; botocore's "max_attempts" would count retries only.
                retries={"mode": retry_mode, "total_max_attempts": max_attempts},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            )
            client = boto3.session.Session().client("s3", config=config)
        self.client = client
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
        )
        self.operation_attempts = operation_attempts
        self.retry_base_delay = retry_base_delay
        self.list_page_size = list_page_size
        self.checksums = checksums
        self._sleep = sleep

    # Keys and messages.

    def _object_key(self, key: str) -> str:
        key = normalize_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _url(self, object_key: str) -> str:
        return f"s3://{self.bucket}/{object_key}"

    def describe(self) -> str:
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", None) or "default endpoint"
        # Drop any user:password part of the endpoint so no secret reaches logs or the UI.
        parts = urlsplit(endpoint)
        if parts.hostname:
            port = f":{parts.port}" if parts.port else ""
            endpoint = f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
        root = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{root} at {endpoint}"

    def _failure(self, action: str, object_key: str, error: Exception) -> StorageError:
        """Turn a boto3 error into a ``StorageError`` that names the bucket and key."""
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        url = self._url(object_key)
        if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                f"S3 {action} failed for {url}: no usable AWS credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, in the environment of the engine"
            )
        if isinstance(error, ClientError):
            code = _error_code(error)
            if code == "NoSuchBucket":
                return StorageError(
                    f"S3 {action} failed for {url}: bucket {self.bucket!r} does not exist at "
                    f"{self.describe()}; create it or fix ENGINE_S3_BUCKET"
                )
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StorageError(
                    f"S3 {action} failed for {url}: access denied ({code}); "
                    "check the AWS credentials and the bucket policy"
                )
        return StorageError(f"S3 {action} failed for {url}: {error}")

    # Retries of whole operations.

    def _with_retries(self, action: str, object_key: str, operation: Callable[[], object]):
        """Run ``operation``, repeating it with exponential backoff while it fails with a transient error."""
        for attempt in range(1, self.operation_attempts + 1):
            try:
                return operation()
            except Exception as error:  # noqa: BLE001 - classified below, everything else is re-raised
                if not _is_transient(error) or attempt == self.operation_attempts:
                    raise
                delay = self.retry_base_delay * 2 ** (attempt - 1)
                logger.warning(
                    "S3 %s of %s failed on attempt %d of %d (%s); retrying in %.1f s",
                    action,
                    self._url(object_key),
                    attempt,
                    self.operation_attempts,
                    error,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    # Writes.

    def write_bytes(self, key: str, data: bytes) -> None:
        object_key = self._object_key(key)
        self._upload(object_key, lambda: io.BytesIO(data), lambda size: _slices(data, size))

    def write_file(self, key: str, path) -> None:
        """Upload a local file without loading it into memory; large files go up in parts."""
        object_key = self._object_key(key)
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise StorageError(f"S3 upload to {self._url(object_key)} failed: local file {path} not found")
        self._upload(object_key, lambda: open(path, "rb"), lambda size: _file_chunks(path, size))

    def _upload(
        self,
        object_key: str,
        open_stream: Callable[[], BinaryIO],
        read_chunks: Callable[[int], Iterator[bytes]],
    ) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        def upload_once() -> None:
            extra_args = {"ChecksumAlgorithm": CHECKSUM_ALGORITHM} if self.checksums else {}
            with open_stream() as stream:
                self.client.upload_fileobj(
                    stream, self.bucket, object_key, ExtraArgs=extra_args, Config=self.transfer_config
                )

        try:
            try:
                self._with_retries("upload", object_key, upload_once)
            except ClientError as error:
                if not (self.checksums and _rejects_checksums(error)):
                    raise
                # NOTE: which error codes mean "checksums not supported" is a guess for servers other than
                # AWS and moto. With checksums off, the manifests still catch corruption.
                logger.warning(
                    "S3 server rejected the SHA256 checksum header for %s (%s); uploading without checksums "
                    "from now on",
                    self._url(object_key),
                    _error_code(error),
                )
                self.checksums = False
                self._with_retries("upload", object_key, upload_once)
        except (BotoCoreError, ClientError) as error:
            raise self._failure("upload", object_key, error) from error
        if self.checksums:
            self._verify_checksum(object_key, read_chunks)
        logger.debug("uploaded %s", self._url(object_key))

    def _verify_checksum(self, object_key: str, read_chunks: Callable[[int], Iterator[bytes]]) -> None:
        """Compare the SHA256 checksum S3 stored for the object with one computed locally.

        A single-part object carries the SHA256 of its bytes. A multipart
        object carries a composite checksum: the SHA256 of the concatenated
        SHA256 digests of its parts, written with a ``-N`` part count suffix
        by AWS (moto leaves the suffix out), so both forms are accepted.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        url = self._url(object_key)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=object_key, ChecksumMode="ENABLED")
        except (BotoCoreError, ClientError) as error:
            raise self._failure("checksum check after upload", object_key, error) from error
        stored = head.get("ChecksumSHA256")
        if not stored:
            logger.debug("S3 returned no SHA256 checksum for %s; relying on the manifest", url)
            return
        stored_digest = stored.split("-", 1)[0]

        whole = hashlib.sha256()
        for chunk in read_chunks(8 * MIB):
            whole.update(chunk)
        if stored_digest == _b64(whole.digest()):
            return

        etag = head.get("ETag", "").strip('"')
        if "-" in etag:
            try:
                first_part = self.client.head_object(Bucket=self.bucket, Key=object_key, PartNumber=1)
            except (BotoCoreError, ClientError) as error:
                raise self._failure("checksum check after upload", object_key, error) from error
            part_size = int(first_part["ContentLength"])
            part_digests = b"".join(hashlib.sha256(part).digest() for part in read_chunks(part_size))
            if stored_digest == _b64(hashlib.sha256(part_digests).digest()):
                return
        raise IntegrityError(
            f"SHA256 checksum mismatch after upload to {url}: computed locally {_b64(whole.digest())}, "
            f"S3 stored {stored}; upload the file again"
        )

    # Reads and listings.

    def read_bytes(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

        object_key = self._object_key(key)

        def download() -> bytes:
            extra = {"ChecksumMode": "ENABLED"} if self.checksums else {}
            # botocore checks the SHA256 of single-part objects against the returned checksum here.
            response = self.client.get_object(Bucket=self.bucket, Key=object_key, **extra)
            with response["Body"] as body:
                return body.read()

        try:
            return self._with_retries("download", object_key, download)
        except FlexibleChecksumError as error:
            raise IntegrityError(
                f"SHA256 checksum mismatch while downloading {self._url(object_key)}: {error}"
            ) from error
        except ClientError as error:
            if _error_code(error) in ("NoSuchKey", "404", "NotFound"):
                raise ArtifactNotFoundError(
                    f"artifact not found: {key} (looked in {self._url(object_key)})"
                ) from None
            raise self._failure("download", object_key, error) from error
        except BotoCoreError as error:
            raise self._failure("download", object_key, error) from error

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        object_key = self._object_key(key)
        try:
            self._with_retries(
                "existence check",
                object_key,
                lambda: self.client.head_object(Bucket=self.bucket, Key=object_key),
            )
        except ClientError as error:
            if _error_code(error) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._failure("existence check", object_key, error) from error
        except BotoCoreError as error:
            raise self._failure("existence check", object_key, error) from error
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        """Return the keys under the folder ``prefix``, or ``[prefix]`` when it names an object."""
        from botocore.exceptions import BotoCoreError, ClientError

        folder = normalize_key(prefix) if prefix.strip("/") else ""
        root = f"{self.prefix}/" if self.prefix else ""
        list_prefix = root + folder

        def list_all() -> list[str]:
            paginator = self.client.get_paginator("list_objects_v2")
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=list_prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            return [item["Key"] for page in pages for item in page.get("Contents", [])]

        try:
            object_keys = self._with_retries("listing", list_prefix, list_all)
        except (BotoCoreError, ClientError) as error:
            raise self._failure("listing", list_prefix, error) from error

        keys = []
        skipped = 0
        for object_key in object_keys:
            relative = object_key[len(root):]
            # A string prefix also matches siblings such as "models/BTCUSDT2", so keep only the folder
            # and the exact key.
            if folder and relative != folder and not relative.startswith(folder + "/"):
                continue
            try:
                keys.append(normalize_key(relative))
            except StorageError:
                skipped += 1
        if skipped:
            logger.warning(
                "skipped %d objects under %s whose names are not valid storage keys",
                skipped,
                self._url(list_prefix),
            )
        return sorted(keys)

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        object_key = self._object_key(key)
        try:
            # S3 returns 204 for a missing key too, so deleting twice is not an error.
            self._with_retries(
                "delete", object_key, lambda: self.client.delete_object(Bucket=self.bucket, Key=object_key)
            )
        except (BotoCoreError, ClientError) as error:
            raise self._failure("delete", object_key, error) from error


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _slices(data: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


def _file_chunks(path: str, size: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def _error_code(error) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _rejects_checksums(error) -> bool:
    message = str(error.response.get("Error", {}).get("Message", "")).lower()
    return _error_code(error) in _CHECKSUM_REJECTION_CODES and "checksum" in message


def _is_transient(error: Exception) -> bool:
    """Return whether a retry of ``error`` can succeed: 5xx, throttling, timeouts and dropped connections."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, SSLError

    if isinstance(error, SSLError):
        # A rejected certificate is a ConnectionError to botocore, but a retry cannot fix it.
        return False
    if isinstance(error, (ConnectionError, HTTPClientError)):
        return True
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or _error_code(error) in _TRANSIENT_ERROR_CODES
    return False
