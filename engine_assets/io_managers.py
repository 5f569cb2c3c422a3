"""IO managers for the hand-offs between runs: Feather for frames, JSON for small records.

Both write under the local cache folder (``$ENGINE_HOME/cache``) with atomic
renames; nothing is pickled. Model artifacts do not go through them: the
assets publish those to the artifact store with manifests.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd
from pyarrow import feather


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class _CacheIOManager(dg.ConfigurableIOManager):
    root: str
    suffix: str = ""

    def _path(self, context) -> Path:
        # An InputContext names the upstream asset and its partition itself, also when the
        # upstream step is not part of the run (a coin_model materialized alone from the UI).
        parts = list(context.asset_key.path)
        if context.has_asset_partitions:
            parts.append(context.asset_partition_key)
        return Path(self.root, *parts).with_suffix(self.suffix)


class FrameIOManager(_CacheIOManager):
    """Pandas frames as Feather files at ``{root}/{asset}/{partition}.feather``."""

    suffix: str = ".feather"

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        path = self._path(context)
        # pyarrow keeps a named index in the file's pandas metadata and restores it on read.
        _atomic_write(path, lambda temporary: feather.write_feather(obj, temporary))
        context.add_output_metadata({"cache_path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        path = self._path(context)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: materialize {context.asset_key.to_user_string()} for this partition first"
            )
        return feather.read_feather(path)


class JsonIOManager(_CacheIOManager):
    """JSON-safe dicts at ``{root}/{asset}/{partition}.json``."""

    suffix: str = ".json"

    def handle_output(self, context: dg.OutputContext, obj: dict) -> None:
        path = self._path(context)
        text = json.dumps(obj, indent=2, sort_keys=True, default=str)
        _atomic_write(path, lambda temporary: Path(temporary).write_text(text))

    def load_input(self, context: dg.InputContext) -> dict:
        path = self._path(context)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: materialize {context.asset_key.to_user_string()} first"
            )
        return json.loads(path.read_text())
