"""Build the artifact store that the settings select (``ENGINE_STORAGE``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from engine_assets.settings import EngineSettings
from engine_assets.storage.base import ArtifactStore, StorageError
from engine_assets.storage.local import LocalArtifactStore

logger = logging.getLogger(__name__)

DROPBOX_SECRET_NAMES = (
    "DROPBOX_APP_KEY",
    "DROPBOX_APP_SECRET",
    "DROPBOX_REFRESH_TOKEN",
    "DROPBOX_ACCESS_TOKEN",
)
# For a server other than Dropbox's own, such as a test server: its API and content hosts (host or
# host:port; either one alone sets both) and a PEM file of the certificates to trust for it.
DROPBOX_CONNECTION_NAMES = (
    "DROPBOX_API_HOST",
    "DROPBOX_API_CONTENT_HOST",
    "DROPBOX_CA_BUNDLE",
)


def build_store(settings: EngineSettings, secrets: Mapping[str, str] | None = None) -> ArtifactStore:
    """Return the store for ``settings.storage``: ``local``, ``s3`` or ``dropbox``.

    ``secrets`` contains the Dropbox credentials under the names in
    ``DROPBOX_SECRET_NAMES``, plus the optional connection settings in
    ``DROPBOX_CONNECTION_NAMES``. It defaults to the process environment.
    S3 credentials, region and endpoint come from boto3's own settings
    (``AWS_*`` variables, profiles, instance roles), not from ``secrets``.
    The S3 and Dropbox libraries are imported only when their backend is chosen.
    """
    if settings.storage == "local":
        store: ArtifactStore = LocalArtifactStore(settings.storage_root)
    elif settings.storage == "s3":
        store = _build_s3(settings)
    elif settings.storage == "dropbox":
        store = _build_dropbox(settings, os.environ if secrets is None else secrets)
    else:
        raise StorageError(f"invalid ENGINE_STORAGE={settings.storage!r}: expected local, s3 or dropbox")
    logger.info("artifact store: %s (%s)", store.backend, store.describe())
    return store


def _build_s3(settings: EngineSettings) -> ArtifactStore:
    if not settings.s3_bucket:
        raise StorageError(
            "ENGINE_STORAGE=s3 needs ENGINE_S3_BUCKET: set it to the bucket name; the endpoint, region "
            "and credentials come from boto3's settings (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, "
            "AWS_PROFILE)"
        )
    from engine_assets.storage.s3 import S3ArtifactStore

    return S3ArtifactStore(settings.s3_bucket, prefix=settings.s3_prefix)


def _build_dropbox(settings: EngineSettings, secrets: Mapping[str, str]) -> ArtifactStore:
    from engine_assets.storage.dropbox_store import CREDENTIALS_HINT, DropboxArtifactStore

    def secret(name: str) -> str | None:
        value = secrets.get(name, "")
        return value.strip() or None

    app_key = secret("DROPBOX_APP_KEY")
    refresh_token = secret("DROPBOX_REFRESH_TOKEN")
    access_token = secret("DROPBOX_ACCESS_TOKEN")
    if not (refresh_token or access_token):
        raise StorageError(f"ENGINE_STORAGE=dropbox but no Dropbox credentials are set: {CREDENTIALS_HINT}")
    if refresh_token and not app_key:
        raise StorageError(f"DROPBOX_REFRESH_TOKEN is set but DROPBOX_APP_KEY is missing: {CREDENTIALS_HINT}")
    # One test server usually serves both hosts, so either setting alone applies to both.
    api_host = secret("DROPBOX_API_HOST") or secret("DROPBOX_API_CONTENT_HOST")
    content_host = secret("DROPBOX_API_CONTENT_HOST") or api_host
    return DropboxArtifactStore(
        root=settings.dropbox_root,
        app_key=app_key,
        app_secret=secret("DROPBOX_APP_SECRET"),
        refresh_token=refresh_token,
        access_token=access_token,
        api_host=api_host,
        content_host=content_host,
        ca_bundle=secret("DROPBOX_CA_BUNDLE"),
    )
