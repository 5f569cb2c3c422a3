"""Artifact store on the local file system."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from engine_assets.storage.base import ArtifactNotFoundError, ArtifactStore, normalize_key


class LocalArtifactStore(ArtifactStore):
    """Files under a root folder, written to a temporary name and renamed into place."""

    backend = "local"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        return self.root / normalize_key(key)

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary file sits in the target folder so the rename stays on one file system.
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"artifact not found: {key} (looked in {path})") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix.strip("/") else self.root
        if base.is_file():
            return [normalize_key(prefix)]
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            # Temporary files of writes in progress start with a dot and are never listed.
            if path.is_file() and not path.name.startswith("."):
                keys.append(path.relative_to(self.root).as_posix())
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def describe(self) -> str:
        return str(self.root)
