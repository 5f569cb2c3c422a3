"""Training of the shared encoder for one day, with checkpoints and resume.

The encoder reads each coin's candles only up to the end of the run's
training window (the cutoff less the holdout, the validation window and two
purge gaps), so nothing it learns comes from the windows the heads are
selected and scored on.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from engine_assets.data.universe import discover_universe
from engine_assets.data.validation import load_symbol_candles
from engine_assets.features.build import to_grid
from engine_assets.features.windows import make_windows
from engine_assets.settings import EngineSettings
from engine_assets.storage.base import ArtifactStore, IntegrityError
from engine_assets.storage.manifest import publish_folder, read_json, verify_folder
from engine_assets.training.config import TrainingConfig, choose_cutoff
from engine_assets.training.embeddings import embeddings_for

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"epoch_(\d{3,})\.pt$")


@dataclass
class EncoderOutcome:
    """The published encoder and what its training did."""

    ref: dict
    reused: bool
    history: list[dict] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def folder_timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y%m%d_%H%M%SZ")


def latest_checkpoint(store: ArtifactStore, folder: str) -> tuple[int, str] | None:
    """Return (epoch, key) of the newest checkpoint in ``folder``, if any."""
    best = None
    for key in store.list_keys(f"{folder}/checkpoints"):
        match = CHECKPOINT_PATTERN.search(key)
        if match and (best is None or int(match.group(1)) > best[0]):
            best = (int(match.group(1)), key)
    return best


def load_universe_grids(settings: EngineSettings, symbols: list[str]) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Load, validate and grid every coin; coins with unusable data are returned as skipped reasons."""
    grids, skipped = {}, {}
    for symbol in symbols:
        try:
            candles, _report = load_symbol_candles(settings.data_dir, symbol, settings.timeframe)
        except (OSError, ValueError) as error:
            skipped[symbol] = str(error)
            logger.warning("encoder leaves out %s: %s", symbol, error)
            continue
        grids[symbol] = to_grid(candles, settings.timeframe_seconds)
    return grids, skipped


def train_shared_encoder(
    settings: EngineSettings,
    store: ArtifactStore,
    ledger,
    training: TrainingConfig,
    encoder_config,
    *,
    force: bool = False,
    now: dt.datetime | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> EncoderOutcome:
    """Train (or reuse, or resume) today's encoder and publish ``encoder/<timestamp>/``."""
    from engine_assets.encoder.model import (
        checkpoint_from_bytes,
        checkpoint_to_bytes,
        encoder_to_files,
        load_encoder,
    )
    from engine_assets.encoder.train import train_encoder

    now = now or dt.datetime.now(dt.timezone.utc)
    say = progress or (lambda message: logger.info("%s", message))
    load_started = time.monotonic()
    symbols = discover_universe(settings.data_dir, settings.timeframe, settings.symbols)
    grids, skipped = load_universe_grids(settings, symbols)
    load_seconds = time.monotonic() - load_started
    if not grids:
        raise RuntimeError(f"no coin in {settings.data_dir} has usable {settings.timeframe} candles: {skipped}")

    last_candles = {symbol: grid.index[-1] for symbol, grid in grids.items()}
    cutoff = choose_cutoff(last_candles, settings.timeframe_seconds, now)
    windows = make_windows(cutoff, settings.timeframe_seconds, training.windows)

    entry = ledger.read().get("encoder", {})
    if not force and entry.get("status") == "succeeded" and entry.get("path"):
        try:
            verify_folder(store, entry["path"])
            ref = read_json(store, f"{entry['path']}/training.json")
            if ref and ref.get("cutoff") == cutoff.isoformat():
                say(f"encoder: reusing today's {entry['path']}")
                return EncoderOutcome(ref=ref, reused=True, history=ref.get("history", []))
        except IntegrityError as error:
            logger.warning("today's encoder %s does not verify, training again: %s", entry["path"], error)

    resume_state, resumed_from = None, None
    folder = entry.get("path") if entry.get("status") in ("running", "failed") and not force else None
    if folder:
        found = latest_checkpoint(store, folder)
        if found:
            resume_state = checkpoint_from_bytes(store.read_bytes(found[1]))
            resumed_from = found[0]
            say(f"encoder: resuming {folder} from its epoch {resumed_from} checkpoint")
    if folder is None:
        folder = f"encoder/{folder_timestamp(now)}"
    ledger.update_encoder(
        status="running", path=folder, started_at=now.isoformat(timespec="seconds"), resumed_from_epoch=resumed_from
    )

    frames = {symbol: grid[grid.index < windows.train_end] for symbol, grid in grids.items()}
    checkpoints: dict[str, bytes] = {}
    for name_key in store.list_keys(f"{folder}/checkpoints"):
        checkpoints[name_key[len(folder) + 1:]] = store.read_bytes(name_key)

    def save_checkpoint(epoch: int, state: dict) -> None:
        name = f"checkpoints/epoch_{epoch:03d}.pt"
        data = checkpoint_to_bytes(state)
        store.write_bytes(f"{folder}/{name}", data)
        checkpoints[name] = data
        ledger.update_encoder(last_checkpoint_epoch=epoch)

    def report(epoch: int, train_loss: float, val_loss: float) -> None:
        say(f"encoder: epoch {epoch}/{encoder_config.epochs} train loss {train_loss:.5f}, validation loss {val_loss:.5f}")

    started = time.monotonic()
    result = train_encoder(
        frames, encoder_config, checkpoint=save_checkpoint, resume=resume_state, threads=threads, progress=report
    )
    files = dict(encoder_to_files(result.state_dict, encoder_config))
    files.update(checkpoints)
    ref = {
        "path": folder,
        "cutoff": cutoff.isoformat(),
        "windows": windows.to_dict(),
        "timeframe": settings.timeframe,
        "symbols": sorted(grids),
        "skipped": skipped,
        "config": encoder_config.to_dict(),
        "history": result.history,
        "samples_train": result.samples_train,
        "samples_validation": result.samples_validation,
        "resumed_from_epoch": result.resumed_from_epoch,
        "duration_seconds": round(time.monotonic() - started, 3),
        "load_seconds": round(load_seconds, 3),
        "trained_at": now.isoformat(timespec="seconds"),
    }
    files["history.json"] = json.dumps(result.history, indent=2).encode()
    files["training.json"] = json.dumps(ref, indent=2, sort_keys=True, default=str).encode()
    published = publish_folder(store, folder, files, extra={"kind": "encoder", "cutoff": cutoff.isoformat()})
    ref["manifest_sha256"] = published.manifest_sha256
    ledger.update_encoder(
        status="succeeded",
        path=folder,
        finished_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        cutoff=cutoff.isoformat(),
        epochs=len(result.history),
        resumed_from_epoch=result.resumed_from_epoch,
    )

    # Embeddings for every coin now, while torch is loaded, so coin runs need not import it.
    model, config = load_encoder({name: files[name] for name in ("encoder.pt", "encoder_config.json")})
    loaded = {folder: (model, config)}
    for symbol, grid in grids.items():
        embeddings_for(store, settings.cache_root, folder, symbol, grid, loaded)
        champion = read_json(store, f"champions/{symbol}.json")
        if champion and champion.get("encoder_path") and champion["encoder_path"] != folder:
            try:
                embeddings_for(store, settings.cache_root, champion["encoder_path"], symbol, grid, loaded)
            except (IntegrityError, OSError, ValueError) as error:
                # The coin run reports the champion's problem; the encoder run goes on.
                logger.warning("cannot embed %s with its champion's encoder: %s", symbol, error)
    return EncoderOutcome(ref=ref, reused=False, history=result.history, skipped=skipped)
