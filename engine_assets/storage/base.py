"""The artifact store: one storage layout on every backend.

Paths are relative, POSIX-style keys under the store's root, such as
``models/BTCUSDT/20261204_001500Z/metrics.json``. Backends differ only in
where the bytes go; the manifest, verification and pointer rules live in
``engine_assets.storage.manifest`` and hold for all of them.
"""

from __future__ import annotations

import abc
import posixpath
import re

_SEGMENT = re.compile(r"^[A-Za-z0-9._\-]+$")


class StorageError(RuntimeError):
    """A read or write against the artifact store failed."""


class ArtifactNotFoundError(StorageError, FileNotFoundError):
    """A key that does not exist in the artifact store."""


class IntegrityError(StorageError):
    """Stored bytes that do not match their manifest."""


def normalize_key(key: str) -> str:
    """Return ``key`` as a clean relative path, rejecting anything that could leave the root."""
    parts = [part for part in key.replace("\\", "/").split("/") if part]
    if not parts:
        raise StorageError(f"invalid storage key {key!r}: empty")
    for part in parts:
        if part in (".", "..") or not _SEGMENT.match(part):
            raise StorageError(
                f"invalid storage key {key!r}: segment {part!r} must use only letters, digits, '.', '_' and '-'"
            )
    return posixpath.join(*parts)


class ArtifactStore(abc.ABC):
    """Bytes under string keys, with atomic writes.

    Implementations must make ``write_bytes`` atomic: a reader sees either the
    previous content or the new content, never a partial file.
    """

    #: A short name for logs and metadata, such as ``local`` or ``s3``.
    backend: str = "abstract"

    @abc.abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any previous content atomically."""

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """Return the bytes under ``key``; raise ``ArtifactNotFoundError`` when missing."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Return whether ``key`` exists."""

    @abc.abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Return every key under ``prefix`` (recursively), sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Return a human-readable location of the root, without secrets."""

    def write_file(self, key: str, path) -> None:
        """Store the content of a local file; backends override this to stream large files."""
        with open(path, "rb") as handle:
            self.write_bytes(key, handle.read())

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def list_folders(self, prefix: str) -> list[str]:
        """Return the names of the direct sub-folders of ``prefix``, sorted."""
        prefix = normalize_key(prefix) + "/"
        names = set()
        for key in self.list_keys(prefix):
            rest = key[len(prefix):]
            if "/" in rest:
                names.add(rest.split("/", 1)[0])
        return sorted(names)
