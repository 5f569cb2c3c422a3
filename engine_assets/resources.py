"""Dagster resources: the engine's settings and the artifact store role."""

from __future__ import annotations

from functools import cached_property

import dagster as dg

from engine_assets.settings import EngineSettings
from engine_assets.storage.base import ArtifactStore

# Secrets are read at run time through Dagster's EnvVar, never at import and never logged. The
# Dropbox connection settings (hosts, CA bundle) are not secret but travel the same way to build_store.
# S3 credentials are not listed: boto3 reads them itself (AWS_* variables, profiles, instance roles).
SECRET_VARIABLES = (
    "DROPBOX_APP_KEY",
    "DROPBOX_APP_SECRET",
    "DROPBOX_REFRESH_TOKEN",
    "DROPBOX_ACCESS_TOKEN",
    "DROPBOX_API_HOST",
    "DROPBOX_API_CONTENT_HOST",
    "DROPBOX_CA_BUNDLE",
)


class EngineResource(dg.ConfigurableResource):
    """The engine's settings (ENGINE_* variables), its ledger lock folder and its artifact store."""

    @cached_property
    def settings(self) -> EngineSettings:
        return EngineSettings.from_env()

    @property
    def lock_dir(self):
        return self.settings.home / "locks"

    def store(self) -> ArtifactStore:
        """Return the artifact store chosen by ENGINE_STORAGE."""
        from engine_assets.storage.factory import build_store

        secrets = {name: dg.EnvVar(name).get_value() for name in SECRET_VARIABLES}
        return build_store(self.settings, {name: value for name, value in secrets.items() if value})

    def ledger(self, day: str):
        from engine_assets.scheduling.ledger import Ledger

        return Ledger(self.store(), day, self.lock_dir)
