"""Training of the shared encoder on every coin's training candles, with resumable checkpoints.

The objective is a Huber loss on the scaled forward log return (see
``forward_target`` in :mod:`engine_assets.encoder.model`). The regression head
exists only for this objective. The coin models use the embeddings.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional

from engine_assets.encoder.model import (
    EncoderConfig,
    SharedEncoder,
    check_channels,
    complete_windows,
    encoder_channels,
    forward_target,
)

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
GRADIENT_CLIP_NORM = 1.0
# Windows per validation batch. The size changes speed, not results.
VALIDATION_BATCH_SIZE = 4096

CheckpointCallback = Callable[[int, dict[str, Any]], None]
ProgressCallback = Callable[[int, float, "float | None"], None]


@dataclasses.dataclass(frozen=True)
class EncoderTrainResult:
    """Trained weights (after the last epoch) and what the training saw."""

    state_dict: dict[str, torch.Tensor]
    config: EncoderConfig
    history: list[dict[str, Any]]
    samples_train: int
    samples_validation: int
    resumed_from_epoch: int | None
    duration_seconds: float


@dataclasses.dataclass(frozen=True)
class _Samples:
    """All coins' channels stacked into one array, and the window ends to train and validate on."""

    channels: torch.Tensor
    train_ends: torch.Tensor
    train_targets: torch.Tensor
    validation_ends: torch.Tensor
    validation_targets: torch.Tensor
    coins: tuple[str, ...]
    fingerprint: str


def _stride(indices: np.ndarray, limit: int) -> np.ndarray:
    """Keep at most ``limit`` indices, evenly spaced and including the first and last."""
    if len(indices) <= limit:
        return indices
    picks = np.linspace(0, len(indices) - 1, limit).round().astype(np.int64)
    return indices[picks]


def _build_samples(frames: Mapping[str, pd.DataFrame], config: EncoderConfig) -> _Samples:
    blocks: list[np.ndarray] = []
    train_ends: list[np.ndarray] = []
    train_targets: list[np.ndarray] = []
    validation_ends: list[np.ndarray] = []
    validation_targets: list[np.ndarray] = []
    coins: list[str] = []
    offset = 0
    horizon = config.target_horizon
    for coin in sorted(frames):
        grid = frames[coin]
        try:
            channels = encoder_channels(grid)
        except ValueError as exc:
            raise ValueError(f"coin {coin}: {exc}") from exc
        count = len(channels)
        target = forward_target(grid["close"].to_numpy(dtype=np.float64), horizon)
        usable = complete_windows(channels, config.window) & np.isfinite(target)
        rows = np.arange(count)
        # The last validation_fraction of the frame validates. Training targets
        # end at least one candle before it (t + horizon < split), so no
        # training label overlaps a validation label.
        split = int(np.floor(count * (1.0 - config.validation_fraction)))
        train = _stride(np.flatnonzero(usable & (rows + horizon < split)), config.max_samples_per_coin)
        validation = _stride(np.flatnonzero(usable & (rows >= split)), config.max_samples_per_coin)
        if len(train) == 0:
            logger.warning(
                "coin %s gives no encoder training windows: %d candles, %d complete windows of %d with a %d-candle target; skipped",
                coin,
                count,
                int(usable.sum()),
                config.window,
                horizon,
            )
            continue
        coins.append(coin)
        blocks.append(np.nan_to_num(channels.astype(np.float32), nan=0.0))
        train_ends.append(train + offset)
        train_targets.append(target[train])
        validation_ends.append(validation + offset)
        validation_targets.append(target[validation])
        offset += count

    if not coins:
        raise ValueError(
            f"no encoder training windows in {len(frames)} coin frames: each coin needs at least "
            f"{config.window + config.target_horizon + 1} consecutive candles before its validation part; "
            "pass longer training frames or a smaller window"
        )

    train_end_array = np.concatenate(train_ends)
    train_target_array = np.concatenate(train_targets).astype(np.float32)
    validation_end_array = np.concatenate(validation_ends)
    validation_target_array = np.concatenate(validation_targets).astype(np.float32)
    stacked = np.concatenate(blocks)

    # Identifies the training data, so a checkpoint cannot resume on other candles.
    digest = hashlib.sha256()
    digest.update(",".join(coins).encode("utf-8"))
    for array in (train_end_array, train_target_array, validation_end_array, validation_target_array, stacked):
        digest.update(np.ascontiguousarray(array).tobytes())

    return _Samples(
        channels=torch.from_numpy(stacked),
        train_ends=torch.from_numpy(train_end_array),
        train_targets=torch.from_numpy(train_target_array),
        validation_ends=torch.from_numpy(validation_end_array),
        validation_targets=torch.from_numpy(validation_target_array),
        coins=tuple(coins),
        fingerprint=digest.hexdigest(),
    )


def _gather(channels: torch.Tensor, ends: torch.Tensor, window: int) -> torch.Tensor:
    offsets = torch.arange(-window + 1, 1, dtype=torch.int64)
    return channels[ends[:, None] + offsets]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Capture the RNG states as tensors, lists and plain numbers, which weights_only loading accepts."""
    numpy_name, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": numpy_name,
            "keys": [int(key) for key in numpy_keys],
            "pos": int(numpy_pos),
            "has_gauss": int(numpy_has_gauss),
            "cached_gaussian": float(numpy_gauss),
        },
        "python": {"version": int(python_version), "state": list(python_state), "gauss_next": python_gauss},
    }


def _restore_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))


def _validation_loss(model: SharedEncoder, samples: _Samples, window: int) -> float | None:
    count = len(samples.validation_ends)
    if count == 0:
        return None
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, count, VALIDATION_BATCH_SIZE):
            ends = samples.validation_ends[start : start + VALIDATION_BATCH_SIZE]
            targets = samples.validation_targets[start : start + VALIDATION_BATCH_SIZE]
            prediction = model.predict_target(_gather(samples.channels, ends, window))
            total += functional.smooth_l1_loss(prediction, targets, reduction="sum").item()
    return total / count


def _train_epoch(
    model: SharedEncoder, optimizer: torch.optim.Optimizer, samples: _Samples, config: EncoderConfig, epoch: int
) -> float:
    model.train()
    # The shuffle order comes from (seed, epoch) alone, so a resumed run
    # visits the samples in the same order as an uninterrupted one.
    order = torch.from_numpy(np.random.default_rng([config.seed, epoch]).permutation(len(samples.train_ends)))
    total = 0.0
    for start in range(0, len(order), config.batch_size):
        batch = order[start : start + config.batch_size]
        windows = _gather(samples.channels, samples.train_ends[batch], config.window)
        targets = samples.train_targets[batch]
        optimizer.zero_grad(set_to_none=True)
        loss = functional.smooth_l1_loss(model.predict_target(windows), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRADIENT_CLIP_NORM)
        optimizer.step()
        total += loss.item() * len(batch)
    return total / len(order)


def _comparable_config(config: EncoderConfig) -> dict[str, Any]:
    # More epochs may be requested when resuming; nothing else may change.
    data = config.to_dict()
    data.pop("epochs")
    return data


def _check_resume(resume: Mapping[str, Any], config: EncoderConfig, samples: _Samples) -> int:
    if resume.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"encoder checkpoint has format {resume.get('format')!r}; this code resumes format {CHECKPOINT_FORMAT}. "
            "Start the training from scratch"
        )
    saved = EncoderConfig.from_dict(resume["config"])
    if _comparable_config(saved) != _comparable_config(config):
        changed = sorted(
            key for key, value in _comparable_config(config).items() if _comparable_config(saved).get(key) != value
        )
        raise ValueError(
            f"encoder checkpoint was written with a different config ({', '.join(changed)} changed); "
            "resume with the same config or start from scratch"
        )
    if resume.get("data_fingerprint") != samples.fingerprint:
        raise ValueError(
            f"encoder checkpoint was trained on other candles (coins {resume.get('coins')}, "
            f"now {list(samples.coins)}); resume with the same frames or start from scratch"
        )
    epoch = int(resume["epoch"])
    if epoch < 1:
        raise ValueError(f"encoder checkpoint has epoch {epoch}; expected an epoch >= 1")
    return epoch


def _checkpoint_state(
    model: SharedEncoder,
    optimizer: torch.optim.Optimizer,
    config: EncoderConfig,
    samples: _Samples,
    epoch: int,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    # Copies, because state_dict() returns the live tensors that later epochs keep updating in place.
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "config": config.to_dict(),
        "coins": list(samples.coins),
        "data_fingerprint": samples.fingerprint,
        "samples_train": len(samples.train_ends),
        "samples_validation": len(samples.validation_ends),
        "model_state_dict": {name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
        "optimizer_state_dict": copy.deepcopy(optimizer.state_dict()),
        "history": copy.deepcopy(history),
        "rng": _rng_state(),
    }


def train_encoder(
    frames: Mapping[str, pd.DataFrame],
    config: EncoderConfig,
    *,
    checkpoint: CheckpointCallback | None = None,
    resume: Mapping[str, Any] | None = None,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
) -> EncoderTrainResult:
    """Train the shared encoder on every coin's grid, each already cut at that coin's training end.

    Windows that read a missing candle are skipped, and so are windows whose
    target would read past the frame's end. ``checkpoint(epoch, state)`` is
    called after every epoch with a dict that :func:`checkpoint_to_bytes` can
    save. Passing that dict as ``resume`` continues from the next epoch and
    ends with the same weights as an uninterrupted run on the same frames and
    config (``epochs`` may be raised). ``threads`` sets torch's intra-op
    threads for the call and restores the previous count afterwards.
    """
    check_channels(config)
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"invalid threads={threads}: expected at least 1")
        torch.set_num_threads(threads)
    try:
        samples = _build_samples(frames, config)
        logger.info(
            "encoder training on %d coins: %d training and %d validation windows, %d epochs",
            len(samples.coins),
            len(samples.train_ends),
            len(samples.validation_ends),
            config.epochs,
        )

        _seed_everything(config.seed)
        # NOTE: training runs on the CPU even when a GPU is present. Identical
        # weights across runs are tested for the same torch build and thread count only.
        model = SharedEncoder.from_config(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
        history: list[dict[str, Any]] = []
        resumed_from: int | None = None
        if resume is not None:
            resumed_from = _check_resume(resume, config, samples)
            model.load_state_dict(resume["model_state_dict"])
            optimizer.load_state_dict(resume["optimizer_state_dict"])
            history = copy.deepcopy(list(resume["history"]))
            _restore_rng_state(resume["rng"])
            logger.info("encoder training resumes after epoch %d of %d", resumed_from, config.epochs)

        for epoch in range((resumed_from or 0) + 1, config.epochs + 1):
            epoch_started = time.perf_counter()
            train_loss = _train_epoch(model, optimizer, samples, config, epoch)
            validation_loss = _validation_loss(model, samples, config.window)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": validation_loss})
            logger.info(
                "encoder epoch %d/%d: train_loss=%.5f val_loss=%s in %.1f s",
                epoch,
                config.epochs,
                train_loss,
                "n/a" if validation_loss is None else f"{validation_loss:.5f}",
                time.perf_counter() - epoch_started,
            )
            if progress is not None:
                progress(epoch, train_loss, validation_loss)
            if checkpoint is not None:
                checkpoint(epoch, _checkpoint_state(model, optimizer, config, samples, epoch, history))

        model.eval()
        return EncoderTrainResult(
            state_dict={name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
            config=config,
            history=history,
            samples_train=len(samples.train_ends),
            samples_validation=len(samples.validation_ends),
            resumed_from_epoch=resumed_from,
            duration_seconds=time.perf_counter() - started,
        )
    finally:
        torch.set_num_threads(previous_threads)
