"""Artifact store in a Dropbox folder, through the official ``dropbox`` SDK.

Login: a refresh token with the app key (and the app secret, unless the token
came from a PKCE flow) is the normal setup, because the SDK then renews the
short-lived access token by itself. A bare access token works until it
expires (about four hours). After that every call fails with an error that
explains how to switch to a refresh token.

Other servers: the SDK reads ``DROPBOX_API_HOST`` and
``DROPBOX_API_CONTENT_HOST`` (host, optionally with ``:port``) once, when
``dropbox`` is first imported, and the ``requests`` library honours
``REQUESTS_CA_BUNDLE``. To choose the hosts after import, as tests do, pass
``api_host`` and ``content_host``. ``ca_bundle`` names a PEM file of trusted
certificates for that server and takes precedence over ``REQUESTS_CA_BUNDLE``.
The engine passes all three from ``DROPBOX_API_HOST``,
``DROPBOX_API_CONTENT_HOST`` and ``DROPBOX_CA_BUNDLE`` (see ``factory``).

Integrity: after every upload the store compares the ``content_hash`` that
Dropbox returns with one computed locally (SHA256 over the concatenated
SHA256 digests of each 4 MiB block), and it checks downloads the same way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator

from engine_assets.storage.base import (
    ArtifactNotFoundError,
    ArtifactStore,
    IntegrityError,
    StorageError,
    normalize_key,
)

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
# Dropbox hashes content in 4 MiB blocks. It requires every chunk but the last of a concurrent upload
# session to be a multiple of this size, and the store keeps to that rule in its sequential sessions too.
BLOCK_SIZE = 4 * MIB
# Dropbox rejects a request payload above 150 MiB, so larger files go through an upload session.
MAX_REQUEST_PAYLOAD = 150 * MIB
# The SDK waits this long too when a 429 response carries no Retry-After value (dropbox 12.2.5).
DEFAULT_RATE_LIMIT_DELAY = 5.0

CREDENTIALS_HINT = (
    "set DROPBOX_REFRESH_TOKEN with DROPBOX_APP_KEY (and DROPBOX_APP_SECRET unless the token came from "
    "a PKCE flow), or DROPBOX_ACCESS_TOKEN for a short-lived token"
)


def dropbox_content_hash(chunks: Iterable[bytes]) -> str:
    """Return the Dropbox ``content_hash`` of the bytes in ``chunks``, as lowercase hex."""
    from dropbox.content_hash import DropboxContentHasher

    hasher = DropboxContentHasher()
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest()


@functools.cache
def _client_class():
    """Return a ``dropbox.Dropbox`` subclass whose API and content hosts are set per instance."""
    import dropbox
    from dropbox.session import HOST_API, HOST_CONTENT

    class HostedDropbox(dropbox.Dropbox):
        # NOTE: this overrides ``_host_map``, a private attribute of dropbox 12.2.5, because the SDK's
        # public host settings are environment variables read once at import time.
        def __init__(self, *args, api_host: str, content_host: str, **kwargs):
            super().__init__(*args, **kwargs)
            self._api_host = api_host
            self._host_map = {**self._host_map, HOST_API: api_host, HOST_CONTENT: content_host}

        def refresh_access_token(self, host=None, scope=None):
            # The SDK binds the token host as a default argument at import, so route it explicitly.
            return super().refresh_access_token(host=host or self._api_host, scope=scope)

    return HostedDropbox


class DropboxArtifactStore(ArtifactStore):
    """Files under a Dropbox folder (``root``), uploaded in overwrite mode.

    Dropbox commits an upload, including an upload session, only when it
    completes, so the final name contains either the previous file or the
    complete new one.

    Retries: the SDK retries 5xx responses (``max_retries_on_error``) and
    refreshes an expired access token once per call when it has a refresh
    token. The store retries 429 responses after their ``Retry-After`` delay,
    up to ``max_rate_limit_retries`` times and ``max_rate_limit_wait``
    seconds in total, and dropped connections up to ``max_connection_retries``
    times.
    """

    backend = "dropbox"

    def __init__(
        self,
        root: str = "/engine",
        app_key: str | None = None,
        app_secret: str | None = None,
        refresh_token: str | None = None,
        access_token: str | None = None,
        *,
        dbx=None,
        session=None,
        ca_bundle: str | os.PathLike | None = None,
        api_host: str | None = None,
        content_host: str | None = None,
        chunk_size: int = 16 * MIB,
        session_threshold: int = MAX_REQUEST_PAYLOAD,
        list_page_size: int | None = None,
        max_rate_limit_retries: int = 5,
        max_rate_limit_wait: float = 300.0,
        max_retries_on_error: int = 4,
        max_connection_retries: int = 3,
        timeout: float = 100.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """Create the store; ``dbx`` replaces the SDK client built from the credentials.

        ``chunk_size`` (bytes) must be a multiple of 4 MiB and at most
        150 MiB. Files larger than ``session_threshold`` bytes go through an
        upload session. ``session`` is a ``requests.Session`` for the SDK,
        such as one from ``dropbox.create_session``. ``sleep`` waits before
        retries and exists for tests.
        """
        if chunk_size <= 0 or chunk_size % BLOCK_SIZE or chunk_size > MAX_REQUEST_PAYLOAD:
            raise ValueError(
                f"invalid chunk_size={chunk_size}: expected a multiple of {BLOCK_SIZE} bytes (4 MiB) "
                f"up to {MAX_REQUEST_PAYLOAD} bytes (150 MiB)"
            )
        if not 0 < session_threshold <= MAX_REQUEST_PAYLOAD:
            raise ValueError(
                f"invalid session_threshold={session_threshold}: "
                f"expected 1 to {MAX_REQUEST_PAYLOAD} bytes (150 MiB)"
            )
        if (api_host is None) != (content_host is None):
            raise ValueError("api_host and content_host must be given together")

        self.root = _normalize_root(root)
        self.chunk_size = chunk_size
        self.session_threshold = session_threshold
        self.list_page_size = list_page_size
        self.max_rate_limit_retries = max_rate_limit_retries
        self.max_rate_limit_wait = max_rate_limit_wait
        self.max_connection_retries = max_connection_retries
        self.api_host = api_host
        self._sleep = sleep
        self._can_refresh = bool(refresh_token and app_key)

        if dbx is None:
            dbx = self._build_client(
                app_key=app_key,
                app_secret=app_secret,
                refresh_token=refresh_token,
                access_token=access_token,
                session=session,
                ca_bundle=ca_bundle,
                api_host=api_host,
                content_host=content_host,
                max_retries_on_error=max_retries_on_error,
                timeout=timeout,
            )
        else:
            self._can_refresh = bool(getattr(dbx, "_oauth2_refresh_token", None))
        self.dbx = dbx

    @staticmethod
    def _build_client(
        *, app_key, app_secret, refresh_token, access_token, session, ca_bundle, api_host, content_host,
        max_retries_on_error, timeout,
    ):
        import dropbox

        if refresh_token and not app_key:
            raise StorageError(
                f"a Dropbox refresh token needs the app key: set DROPBOX_APP_KEY ({CREDENTIALS_HINT})"
            )
        if not (refresh_token or access_token):
            raise StorageError(f"no Dropbox credentials: {CREDENTIALS_HINT}")
        if session is None:
            session = _session_trusting(ca_bundle) if ca_bundle else dropbox.create_session()
        options = dict(
            oauth2_access_token=access_token or None,
            oauth2_refresh_token=refresh_token or None,
            app_key=app_key or None,
            app_secret=app_secret or None,
            session=session,
            timeout=timeout,
            max_retries_on_error=max_retries_on_error,
            # 0: the SDK raises RateLimitError at once, and the store waits with its own caps.
            max_retries_on_rate_limit=0,
            user_agent="engine-assets",
        )
        if api_host is None:
            return dropbox.Dropbox(**options)
        return _client_class()(api_host=api_host, content_host=content_host, **options)

    # Paths and messages.

    def _path(self, key: str) -> str:
        return f"{self.root}/{normalize_key(key)}"

    def describe(self) -> str:
        location = f"dropbox:{self.root or '/'}"
        return f"{location} at {self.api_host}" if self.api_host else location

    def _call(
        self, action: str, path: str, function: Callable, *args, retry_connection: bool = True, **kwargs
    ):
        """Call the SDK, retrying 429 responses after their delay and, when allowed, dropped connections.

        Raises ``StorageError`` for authentication, rate-limit and transport
        failures; route errors (``dropbox.exceptions.ApiError``) pass through
        for the caller to interpret.
        """
        import requests
        from dropbox.exceptions import AuthError, BadInputError, HttpError, RateLimitError

        rate_limited = 0
        waited = 0.0
        connection_failures = 0
        while True:
            try:
                return function(*args, **kwargs)
            except RateLimitError as error:
                rate_limited += 1
                delay = float(error.backoff) if error.backoff is not None else DEFAULT_RATE_LIMIT_DELAY
                if rate_limited > self.max_rate_limit_retries or waited + delay > self.max_rate_limit_wait:
                    raise StorageError(
                        f"Dropbox {action} of {path} failed: still rate limited (429) after "
                        f"{rate_limited} responses and {waited:.0f} s of waiting; retry later or raise "
                        "max_rate_limit_retries and max_rate_limit_wait"
                    ) from error
                logger.warning(
                    "Dropbox rate limit (429) on %s of %s; retrying in %.1f s (retry %d of %d)",
                    action,
                    path,
                    delay,
                    rate_limited,
                    self.max_rate_limit_retries,
                )
                self._sleep(delay)
                waited += delay
            except requests.exceptions.SSLError as error:
                # An SSLError is a ConnectionError to requests, but a retry cannot fix a rejected certificate.
                raise StorageError(
                    f"Dropbox {action} of {path} failed: TLS certificate verification failed ({error}); "
                    "check ca_bundle (DROPBOX_CA_BUNDLE) or REQUESTS_CA_BUNDLE"
                ) from error
            except (requests.ConnectionError, requests.Timeout) as error:
                connection_failures += 1
                if not retry_connection or connection_failures > self.max_connection_retries:
                    raise StorageError(f"Dropbox {action} of {path} failed: {error}") from error
                delay = 2.0 ** (connection_failures - 1)
                logger.warning(
                    "Dropbox %s of %s failed (%s); retrying in %.1f s (retry %d of %d)",
                    action,
                    path,
                    error,
                    delay,
                    connection_failures,
                    self.max_connection_retries,
                )
                self._sleep(delay)
            except AuthError as error:
                raise self._auth_failure(action, path, error) from error
            except (HttpError, BadInputError) as error:
                # InternalServerError is an HttpError: the SDK already retried it max_retries_on_error times.
                raise StorageError(f"Dropbox {action} of {path} failed: {error}") from error

    def _auth_failure(self, action: str, path: str, error) -> StorageError:
        reason = error.error
        prefix = f"Dropbox {action} of {path} failed"
        if reason is not None and reason.is_expired_access_token():
            if self._can_refresh:
                return StorageError(
                    f"{prefix}: the access token expired and refreshing it with DROPBOX_REFRESH_TOKEN "
                    "did not produce a valid one; check DROPBOX_APP_KEY, DROPBOX_APP_SECRET and "
                    "DROPBOX_REFRESH_TOKEN"
                )
            return StorageError(
                f"{prefix}: the access token expired (DROPBOX_ACCESS_TOKEN is short-lived); "
                f"{CREDENTIALS_HINT}"
            )
        if reason is not None and reason.is_invalid_access_token():
            return StorageError(
                f"{prefix}: Dropbox rejected the credentials as invalid or revoked; {CREDENTIALS_HINT}"
            )
        tag = getattr(reason, "_tag", "unknown")
        return StorageError(
            f"{prefix}: authentication error {tag!r}; check the app's permissions and {CREDENTIALS_HINT}"
        )

    @staticmethod
    def _route_failure(action: str, path: str, error) -> StorageError:
        return StorageError(f"Dropbox {action} of {path} failed: {error.error}")

    # Writes.

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        local_hash = dropbox_content_hash(_slices(data, BLOCK_SIZE))
        if len(data) <= self.session_threshold:
            metadata = self._upload_small(path, data)
        else:
            metadata = self._upload_session(path, _slices(data, self.chunk_size))
        self._check_uploaded(path, metadata, local_hash)

    def write_file(self, key: str, path) -> None:
        """Upload a local file; files above ``session_threshold`` are read and sent one chunk at a time."""
        local_path = os.fspath(path)
        remote_path = self._path(key)
        try:
            size = os.path.getsize(local_path)
        except OSError as error:
            raise StorageError(
                f"Dropbox upload to {remote_path} failed: cannot read {local_path}: {error}"
            ) from None
        if size <= self.session_threshold:
            with open(local_path, "rb") as handle:
                self.write_bytes(key, handle.read())
            return
        local_hash = dropbox_content_hash(_file_chunks(local_path, BLOCK_SIZE))
        metadata = self._upload_session(remote_path, _file_chunks(local_path, self.chunk_size))
        self._check_uploaded(remote_path, metadata, local_hash)

    def _commit_info(self, path: str):
        from dropbox.files import CommitInfo, WriteMode

        # mute: the engine's uploads should not notify the account owner's devices.
        return CommitInfo(path=path, mode=WriteMode.overwrite, autorename=False, mute=True)

    def _upload_small(self, path: str, data: bytes):
        from dropbox.exceptions import ApiError
        from dropbox.files import WriteMode

        try:
            return self._call(
                "upload",
                path,
                self.dbx.files_upload,
                data,
                path,
                mode=WriteMode.overwrite,
                autorename=False,
                mute=True,
            )
        except ApiError as error:
            raise self._route_failure("upload", path, error) from error

    def _upload_session(self, path: str, chunks: Iterator[bytes]):
        """Upload through a session: start empty, append every chunk but the last, finish with the last.

        Every appended chunk has exactly ``chunk_size`` bytes, a multiple of
        4 MiB, and only the final one (sent with finish) may be shorter.
        """
        from dropbox.exceptions import ApiError
        from dropbox.files import UploadSessionCursor

        try:
            started = self._call("upload session start", path, self.dbx.files_upload_session_start, b"")
        except ApiError as error:
            raise self._route_failure("upload session start", path, error) from error

        session_id = started.session_id
        offset = 0
        pending = None
        for chunk in chunks:
            if pending is not None:
                self._append(path, session_id, offset, pending)
                offset += len(pending)
            pending = chunk
        cursor = UploadSessionCursor(session_id=session_id, offset=offset)
        try:
            # NOTE: finish is not repeated after a dropped connection, because a finish that did commit
            # would then fail with a closed session. The caller gets a StorageError and can write again.
            return self._call(
                "upload session finish",
                path,
                self.dbx.files_upload_session_finish,
                pending or b"",
                cursor,
                self._commit_info(path),
                retry_connection=False,
            )
        except ApiError as error:
            raise self._route_failure("upload session finish", path, error) from error

    def _append(self, path: str, session_id: str, offset: int, chunk: bytes) -> None:
        from dropbox.exceptions import ApiError
        from dropbox.files import UploadSessionCursor

        cursor = UploadSessionCursor(session_id=session_id, offset=offset)
        try:
            self._call("upload session append", path, self.dbx.files_upload_session_append_v2, chunk, cursor)
        except ApiError as error:
            reason = error.error
            end = offset + len(chunk)
            if reason.is_incorrect_offset() and reason.get_incorrect_offset().correct_offset == end:
                # A retry after a lost response: Dropbox already appended this chunk.
                logger.info("Dropbox already has the chunk at offset %d of %s; continuing", offset, path)
                return
            raise self._route_failure(f"upload session append at offset {offset}", path, error) from error

    def _check_uploaded(self, path: str, metadata, local_hash: str) -> None:
        remote_hash = getattr(metadata, "content_hash", None)
        if remote_hash is None:
            logger.warning("Dropbox returned no content_hash for %s; relying on the manifest", path)
            return
        if remote_hash != local_hash:
            raise IntegrityError(
                f"Dropbox content_hash mismatch after upload of {path}: computed locally {local_hash}, "
                f"Dropbox reports {remote_hash}; the stored file may be corrupt, upload it again"
            )
        logger.debug("uploaded %s (%s bytes, content_hash %s)", path, metadata.size, remote_hash)

    # Reads and listings.

    def read_bytes(self, key: str) -> bytes:
        from dropbox.exceptions import ApiError

        path = self._path(key)

        def download():
            metadata, response = self.dbx.files_download(path)
            with contextlib.closing(response):
                return metadata, response.content

        try:
            metadata, data = self._call("download", path, download)
        except ApiError as error:
            if _is_not_found(error.error):
                raise ArtifactNotFoundError(f"artifact not found: {key} (looked in Dropbox {path})") from None
            raise self._route_failure("download", path, error) from error

        local_hash = dropbox_content_hash(_slices(data, BLOCK_SIZE))
        if metadata.content_hash is not None and metadata.content_hash != local_hash:
            raise IntegrityError(
                f"Dropbox content_hash mismatch while downloading {path}: downloaded bytes hash to "
                f"{local_hash}, Dropbox reports {metadata.content_hash}"
            )
        if len(data) != metadata.size:
            raise IntegrityError(
                f"size mismatch while downloading {path}: received {len(data)} bytes, "
                f"Dropbox reports {metadata.size}"
            )
        return data

    def exists(self, key: str) -> bool:
        import dropbox
        from dropbox.exceptions import ApiError

        path = self._path(key)
        try:
            metadata = self._call("metadata lookup", path, self.dbx.files_get_metadata, path)
        except ApiError as error:
            if _is_not_found(error.error):
                return False
            raise self._route_failure("metadata lookup", path, error) from error
        return isinstance(metadata, dropbox.files.FileMetadata)

    def list_keys(self, prefix: str = "") -> list[str]:
        """Return the keys under the folder ``prefix``, or ``[prefix]`` when it names a file."""
        import dropbox
        from dropbox.exceptions import ApiError

        folder = normalize_key(prefix) if prefix.strip("/") else ""
        path = f"{self.root}/{folder}" if folder else self.root
        try:
            page = self._call(
                "listing",
                path or "/",
                self.dbx.files_list_folder,
                path,
                recursive=True,
                limit=self.list_page_size,
            )
        except ApiError as error:
            lookup = _lookup_error(error.error)
            if lookup is not None and lookup.is_not_found():
                return []
            if lookup is not None and lookup.is_not_folder():
                return [folder]
            raise self._route_failure("listing", path or "/", error) from error

        keys = []
        while True:
            for entry in page.entries:
                if isinstance(entry, dropbox.files.FileMetadata):
                    keys.append(self._key_of(entry))
            if not page.has_more:
                break
            try:
                page = self._call("listing", path or "/", self.dbx.files_list_folder_continue, page.cursor)
            except ApiError as error:
                raise self._route_failure("listing", path or "/", error) from error
        return sorted(keys)

    def _key_of(self, entry) -> str:
        # NOTE: Dropbox paths are case-insensitive, so path_display may differ in case from the written key
        # when a parent folder was first created with another case. The engine writes one case only.
        relative = entry.path_display[len(self.root):].lstrip("/")
        return normalize_key(relative)

    def delete(self, key: str) -> None:
        from dropbox.exceptions import ApiError

        path = self._path(key)
        try:
            self._call("delete", path, self.dbx.files_delete_v2, path)
        except ApiError as error:
            if _is_not_found(error.error):
                return
            raise self._route_failure("delete", path, error) from error


def _session_trusting(ca_bundle: str | os.PathLike):
    """Return a ``requests.Session`` that verifies servers against ``ca_bundle`` only.

    ``dropbox.create_session(ca_certs=...)`` is not enough when
    ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` is set, because ``requests``
    lets those variables replace a session's ``verify`` on every request.
    Proxy settings from the environment still apply.
    """
    import requests

    path = os.fspath(ca_bundle)
    if not os.path.isfile(path):
        raise StorageError(
            f"Dropbox CA bundle not found: {path}; set DROPBOX_CA_BUNDLE (or ca_bundle) to a PEM file "
            "of trusted certificates"
        )

    class PinnedCASession(requests.Session):
        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            settings["verify"] = path
            return settings

    session = PinnedCASession()
    session.verify = path
    return session


def _normalize_root(root: str) -> str:
    """Return ``root`` as ``/a/b``, or ``""`` for the top of the app's Dropbox space."""
    parts = [part for part in root.replace("\\", "/").split("/") if part]
    for part in parts:
        if part in (".", ".."):
            raise StorageError(
                f"invalid Dropbox root {root!r}: '.' and '..' are not allowed; use a path like /engine"
            )
    return "/" + "/".join(parts) if parts else ""


def _lookup_error(reason):
    """Return the ``LookupError`` inside a route error (download, metadata, listing or delete), or None."""
    for tag in ("path", "path_lookup"):
        if getattr(reason, "_tag", None) == tag:
            value = reason.get_path() if tag == "path" else reason.get_path_lookup()
            if hasattr(value, "is_not_found"):
                return value
    return None


def _is_not_found(reason) -> bool:
    lookup = _lookup_error(reason)
    return lookup is not None and lookup.is_not_found()


def _slices(data: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


def _file_chunks(path: str, size: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(size):
            yield chunk
