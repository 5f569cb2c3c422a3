"""Folders with a SHA256 manifest, and pointers written only to verified folders.

A folder (``models/BTCUSDT/20261204_001500Z/``) is published by writing every
file first and ``manifest.json`` last, then reading everything back and
checking it. Readers verify the manifest before loading anything, so a
folder without a manifest, or with a mismatch, is never used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from engine_assets.storage.base import ArtifactNotFoundError, ArtifactStore, IntegrityError, normalize_key

MANIFEST_NAME = "manifest.json"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class PublishedFolder:
    """A folder whose files were written and verified against its manifest."""

    prefix: str
    manifest: dict
    manifest_sha256: str

    @property
    def files(self) -> dict[str, dict]:
        return self.manifest["files"]


def build_manifest(files: Mapping[str, bytes], extra: Mapping | None = None) -> dict:
    entries = {name: {"size": len(data), "sha256": sha256_hex(data)} for name, data in sorted(files.items())}
    manifest = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "files": entries,
    }
    if extra:
        manifest.update(extra)
    return manifest


def publish_folder(
    store: ArtifactStore, prefix: str, files: Mapping[str, bytes], extra: Mapping | None = None
) -> PublishedFolder:
    """Write ``files`` under ``prefix``, then the manifest, then verify every file."""
    prefix = normalize_key(prefix)
    if MANIFEST_NAME in files:
        raise ValueError(f"{MANIFEST_NAME} is written by publish_folder and cannot be passed as a file")
    for name, data in files.items():
        store.write_bytes(f"{prefix}/{normalize_key(name)}", data)
    manifest = build_manifest(files, extra)
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    store.write_bytes(f"{prefix}/{MANIFEST_NAME}", manifest_bytes)
    verify_folder(store, prefix)
    return PublishedFolder(prefix=prefix, manifest=manifest, manifest_sha256=sha256_hex(manifest_bytes))


def read_manifest(store: ArtifactStore, prefix: str) -> dict:
    prefix = normalize_key(prefix)
    try:
        raw = store.read_bytes(f"{prefix}/{MANIFEST_NAME}")
    except ArtifactNotFoundError:
        raise IntegrityError(
            f"manifest missing: {prefix}/{MANIFEST_NAME}; the folder is incomplete and must not be loaded"
        ) from None
    try:
        manifest = json.loads(raw)
        manifest["files"].items()
    except (ValueError, KeyError, AttributeError, TypeError) as error:
        raise IntegrityError(f"invalid manifest {prefix}/{MANIFEST_NAME}: {error}") from None
    return manifest


def verify_folder(store: ArtifactStore, prefix: str, names: list[str] | None = None) -> dict[str, bytes]:
    """Read the files of a published folder, checking size and SHA256 against its manifest.

    Returns the verified bytes by file name (only ``names`` when given).
    Raises ``IntegrityError`` naming the file and both hashes on a mismatch.
    """
    prefix = normalize_key(prefix)
    manifest = read_manifest(store, prefix)
    wanted = manifest["files"] if names is None else {name: manifest["files"].get(name) for name in names}
    verified = {}
    for name, entry in wanted.items():
        if entry is None:
            raise IntegrityError(f"file {name!r} is not listed in {prefix}/{MANIFEST_NAME}")
        key = f"{prefix}/{name}"
        try:
            data = store.read_bytes(key)
        except ArtifactNotFoundError:
            raise IntegrityError(f"file missing: {key} is listed in the manifest but not stored") from None
        actual = sha256_hex(data)
        if actual != entry["sha256"] or len(data) != entry["size"]:
            raise IntegrityError(
                f"SHA256 mismatch for {key}: manifest has {entry['sha256']} ({entry['size']} bytes), "
                f"stored file has {actual} ({len(data)} bytes)"
            )
        verified[name] = data
    return verified


def write_pointer(store: ArtifactStore, key: str, target_prefix: str, payload: Mapping) -> dict:
    """Write a JSON pointer to ``target_prefix`` after checking that the folder verifies.

    The pointer records the manifest's SHA256 so a reader can tell that the
    folder it finds is the one the pointer was written for.
    """
    verify_folder(store, target_prefix)
    manifest_bytes = store.read_bytes(f"{normalize_key(target_prefix)}/{MANIFEST_NAME}")
    pointer = dict(payload)
    pointer["path"] = normalize_key(target_prefix)
    pointer["manifest_sha256"] = sha256_hex(manifest_bytes)
    store.write_bytes(key, json.dumps(pointer, indent=2, sort_keys=True).encode("utf-8"))
    return pointer


def read_json(store: ArtifactStore, key: str) -> dict | None:
    """Return the parsed JSON under ``key``, or None when the key does not exist."""
    try:
        return json.loads(store.read_bytes(key))
    except ArtifactNotFoundError:
        return None


def write_json(store: ArtifactStore, key: str, payload) -> None:
    store.write_bytes(key, json.dumps(payload, indent=2, sort_keys=True, default=str).encode("utf-8"))
