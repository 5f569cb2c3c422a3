"""Champion pointers: reading, scoring on today's holdout, and promotion under a lock."""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from engine_assets.storage.base import ArtifactStore
from engine_assets.storage.manifest import read_json, verify_folder, write_pointer

logger = logging.getLogger(__name__)


def champion_key(symbol: str) -> str:
    return f"champions/{symbol}.json"


def read_champion(store: ArtifactStore, symbol: str) -> dict | None:
    return read_json(store, champion_key(symbol))


@contextlib.contextmanager
def champion_lock(lock_dir: Path, symbol: str) -> Iterator[None]:
    """Serialize promotion decisions of one coin, so two runs never interleave writes to its pointer."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"champion-{symbol}.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def load_champion_head(store: ArtifactStore, pointer: dict):
    """Load the champion's head from its verified folder."""
    from engine_assets.heads.fit import load_head

    files = verify_folder(store, pointer["path"])
    head_files = {name: data for name, data in files.items() if name in pointer.get("head_files", files)}
    return load_head(head_files)


def promote(store: ArtifactStore, symbol: str, model_path: str, payload: dict) -> dict:
    """Point ``champions/{symbol}.json`` at ``model_path`` once the folder verifies."""
    return write_pointer(store, champion_key(symbol), model_path, payload)
