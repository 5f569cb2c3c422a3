"""Embeddings of a coin's candles by a stored encoder, with a local cache.

The encoder run computes every coin's embeddings once and caches them, so a
coin run reads a Feather file instead of importing torch. The cache key holds
the encoder folder and a fingerprint of the candles, so changed candles or a
different encoder never reuse a stale file; a miss computes the embeddings
with torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from engine_assets.storage.base import ArtifactStore
from engine_assets.storage.manifest import verify_folder

logger = logging.getLogger(__name__)

ENCODER_FILES = ("encoder.pt", "encoder_config.json")


def data_fingerprint(grid: pd.DataFrame) -> str:
    """Return a short hash of the grid's timestamps and values."""
    digest = hashlib.sha256()
    digest.update(grid.index.asi8.tobytes())
    digest.update(np.ascontiguousarray(grid[["open", "high", "low", "close", "volume"]].to_numpy()).tobytes())
    return digest.hexdigest()[:20]


def cache_path(cache_root: Path, encoder_path: str, symbol: str, fingerprint: str) -> Path:
    encoder_id = encoder_path.strip("/").replace("/", "_")
    return cache_root / "embeddings" / encoder_id / f"{symbol}-{fingerprint}.feather"


def load_encoder_folder(store: ArtifactStore, encoder_path: str):
    """Load a stored encoder after verifying its manifest; returns (model, config)."""
    from engine_assets.encoder.model import load_encoder

    files = verify_folder(store, encoder_path, names=list(ENCODER_FILES))
    return load_encoder(files)


def write_cached(path: Path, embeddings: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        embeddings.reset_index().to_feather(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_cached(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_feather(path).set_index("date")
    except Exception as error:  # a damaged cache file is recomputed, never trusted
        logger.warning("ignoring unreadable embedding cache %s: %s", path, error)
        return None


def compute_embeddings(model, config, grid: pd.DataFrame) -> pd.DataFrame:
    from engine_assets.encoder.model import embed

    return embed(model, config, grid)


def embeddings_for(
    store: ArtifactStore,
    cache_root: Path,
    encoder_path: str,
    symbol: str,
    grid: pd.DataFrame,
    loaded: dict | None = None,
) -> tuple[pd.DataFrame, bool]:
    """Return (embeddings on the grid's index, whether they came from the cache).

    ``loaded`` memoizes encoders by path within one process.
    """
    path = cache_path(cache_root, encoder_path, symbol, data_fingerprint(grid))
    cached = read_cached(path)
    if cached is not None and cached.index.equals(grid.index):
        return cached, True
    loaded = {} if loaded is None else loaded
    if encoder_path not in loaded:
        loaded[encoder_path] = load_encoder_folder(store, encoder_path)
    model, config = loaded[encoder_path]
    embeddings = compute_embeddings(model, config, grid)
    write_cached(path, embeddings)
    return embeddings, False
