"""The shared candle encoder: input channels, network, embedding and file formats.

Importing this module imports torch, so modules that only need candles or
settings should not import it at module level.

The encoder reads a "grid" frame: a UTC ``DatetimeIndex`` named ``date`` on a
regular timeframe grid with float columns ``open, high, low, close, volume``,
where a missing candle is an all-NaN row. An embedding at candle ``t`` is
computed from the ``window`` channel rows ending at ``t``. Because the first
channel is the close-to-close return, that window reads ``window + 1`` candles,
from ``t - window`` to ``t``, and nothing after ``t``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

logger = logging.getLogger(__name__)

OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")

CHANNEL_NAMES = (
    "close_return",
    "high_low_range",
    "body",
    "upper_wick",
    "lower_wick",
    "volume_change",
    "close_vs_mean",
    "hour_sin",
    "hour_cos",
)

# Fixed scaling, never fitted on data: a statistic of the whole series would let
# later candles change earlier embeddings. Log returns are multiplied by 100
# (percent) and clipped at +-20 percent per candle, so a bad print or a listing
# spike cannot dominate a window.
RETURN_SCALE = 100.0
RETURN_CLIP = 20.0
# Volume is compared with the mean of the previous 24 candles (one day on 1h).
# Adding 0.1 percent of that mean to the current volume keeps a zero-volume
# candle finite: it maps to log(0.001 / 1.001), about -6.9.
VOLUME_TRAILING_CANDLES = 24
VOLUME_FLOOR_FRACTION = 1e-3
VOLUME_CLIP = 7.0
# Close relative to the mean close of the last 24 candles, including the current one.
CLOSE_MEAN_CANDLES = 24

# The training target is the forward log return over target_horizon candles,
# clipped at +-20 percent and multiplied by RETURN_SCALE like the channels.
TARGET_CLIP = 0.2

# Embedding runs in batches of this many windows, and the last batch is padded
# to full size, so every window goes through the network in a batch of the same
# shape. A row's result then cannot depend on how many rows follow it.
EMBED_BATCH_SIZE = 1024

ENCODER_WEIGHTS_FILE = "encoder.pt"
ENCODER_CONFIG_FILE = "encoder_config.json"
ENCODER_FILE_FORMAT = 1


class EncoderFileError(ValueError):
    """An encoder or checkpoint file that cannot be loaded safely."""


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture and training settings of the shared encoder.

    ``channels`` names the input channels in order. It defaults to the channels
    that :func:`encoder_channels` computes, and loading rejects a saved encoder
    whose channels differ from the current code.
    """

    window: int = 48
    channels: tuple[str, ...] = CHANNEL_NAMES
    embedding_dim: int = 8
    hidden: int = 32
    epochs: int = 6
    batch_size: int = 512
    learning_rate: float = 1e-3
    seed: int = 7
    target_horizon: int = 4
    max_samples_per_coin: int = 6000
    validation_fraction: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        minimums = {
            "window": 1,
            "embedding_dim": 1,
            "hidden": 1,
            "epochs": 1,
            "batch_size": 1,
            "target_horizon": 1,
            "max_samples_per_coin": 1,
        }
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"invalid EncoderConfig.{name}={value!r}: expected a whole number >= {minimum}")
        if not self.channels:
            raise ValueError("invalid EncoderConfig.channels=(): expected at least one channel name")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"invalid EncoderConfig.learning_rate={self.learning_rate!r}: expected a number > 0")
        if not (isinstance(self.validation_fraction, (int, float)) and 0 <= self.validation_fraction < 1):
            raise ValueError(
                f"invalid EncoderConfig.validation_fraction={self.validation_fraction!r}: "
                "expected a number in [0, 1)"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"invalid EncoderConfig.seed={self.seed!r}: expected a whole number")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"invalid encoder config: unknown keys {unknown}; expected only {sorted(known)}"
            )
        return cls(**dict(data))


def check_channels(config: EncoderConfig) -> None:
    """Raise EncoderFileError when ``config.channels`` differs from this code's channels."""
    if tuple(config.channels) != CHANNEL_NAMES:
        raise EncoderFileError(
            f"encoder channels {list(config.channels)} differ from this code's channels "
            f"{list(CHANNEL_NAMES)}: the encoder was trained by another version, so retrain it"
        )


def _check_grid(grid: pd.DataFrame) -> None:
    missing = [column for column in OHLCV_COLUMNS if column not in grid.columns]
    if missing:
        raise ValueError(
            f"candle grid is missing columns {missing}; expected {list(OHLCV_COLUMNS)}"
        )
    index = grid.index
    if not isinstance(index, pd.DatetimeIndex):
        raise ValueError(
            f"candle grid has a {type(index).__name__}; expected a DatetimeIndex named 'date'"
        )
    if len(index) > 1:
        if not index.is_monotonic_increasing or not index.is_unique:
            raise ValueError("candle grid index is unsorted or has duplicates; sort and deduplicate the candles first")
        steps = np.unique(np.diff(index.asi8))
        if len(steps) != 1:
            raise ValueError(
                f"candle grid is not a regular grid: {len(steps)} different steps between rows; "
                "reindex it to the timeframe with all-NaN rows for missing candles"
            )


def _trailing_nanmean(values: np.ndarray, length: int, include_current: bool) -> np.ndarray:
    """Mean of the last ``length`` finite values at each row, NaN where none.

    Each window is summed on its own instead of with a running sum, so the
    result at row t is exact and depends on rows up to t only.
    """
    count = len(values)
    padded = np.concatenate([np.full(length, np.nan), values])
    windows = np.lib.stride_tricks.sliding_window_view(padded, length + 1)
    # windows[t] covers rows t - length .. t of the original series.
    windows = windows[:, 1:] if include_current else windows[:, :-1]
    finite = np.isfinite(windows)
    total = np.where(finite, windows, 0.0).sum(axis=1)
    seen = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / seen
    mean[seen == 0] = np.nan
    assert len(mean) == count
    return mean


def encoder_channels(grid: pd.DataFrame) -> np.ndarray:
    """Compute the encoder's input channels, one row per candle, shape (T, C).

    Every channel is scale-free, uses candles up to its row only and has fixed
    scaling. A missing candle (any non-finite or non-positive price, or a
    negative volume) gives an all-NaN row, and the row after it has a NaN
    close return. Flat candles and zero volume give finite values.
    """
    _check_grid(grid)
    values = grid.loc[:, list(OHLCV_COLUMNS)].to_numpy(dtype=np.float64, copy=True)
    with np.errstate(invalid="ignore"):
        missing = (
            ~np.isfinite(values).all(axis=1)
            | (values[:, :4] <= 0).any(axis=1)
            | (values[:, 4] < 0)
        )
    partial = int((missing & np.isfinite(values).any(axis=1)).sum())
    if partial:
        logger.warning(
            "candle grid has %d rows with some non-finite or non-positive values; they are treated as missing candles",
            partial,
        )
    values[missing] = np.nan
    open_, high, low, close, volume = values.T

    with np.errstate(invalid="ignore", divide="ignore"):
        previous_close = np.concatenate([[np.nan], close[:-1]])
        close_return = np.log(close / previous_close) * RETURN_SCALE
        high_low_range = np.log(high / low) * RETURN_SCALE
        body = np.log(close / open_) * RETURN_SCALE
        upper_wick = np.log(high / np.maximum(open_, close)) * RETURN_SCALE
        lower_wick = np.log(np.minimum(open_, close) / low) * RETURN_SCALE

        trailing_volume = _trailing_nanmean(volume, VOLUME_TRAILING_CANDLES, include_current=False)
        floor = VOLUME_FLOOR_FRACTION * trailing_volume
        volume_change = np.log((volume + floor) / (trailing_volume + floor))
        # After a run of zero-volume candles the trailing mean is 0: no change
        # when this candle also has none, the clip value when volume reappears.
        no_history = np.isfinite(volume) & (trailing_volume == 0)
        volume_change[no_history] = np.where(volume[no_history] > 0, VOLUME_CLIP, 0.0)
        # The first candle of a grid has no earlier volume to compare with.
        volume_change[np.isfinite(volume) & np.isnan(trailing_volume)] = 0.0

        close_mean = _trailing_nanmean(close, CLOSE_MEAN_CANDLES, include_current=True)
        close_vs_mean = np.log(close / close_mean) * RETURN_SCALE

    # The hour of day in UTC; a timezone-naive index is taken to be UTC already.
    index = grid.index if grid.index.tz is None else grid.index.tz_convert("UTC")
    hours = (index.hour + index.minute / 60.0).to_numpy(dtype=np.float64)
    angle = 2.0 * np.pi * hours / 24.0

    channels = np.column_stack(
        [
            np.clip(close_return, -RETURN_CLIP, RETURN_CLIP),
            np.clip(high_low_range, 0.0, RETURN_CLIP),
            np.clip(body, -RETURN_CLIP, RETURN_CLIP),
            np.clip(upper_wick, 0.0, RETURN_CLIP),
            np.clip(lower_wick, 0.0, RETURN_CLIP),
            np.clip(volume_change, -VOLUME_CLIP, VOLUME_CLIP),
            np.clip(close_vs_mean, -RETURN_CLIP, RETURN_CLIP),
            np.sin(angle),
            np.cos(angle),
        ]
    )
    channels[missing] = np.nan
    assert channels.shape[1] == len(CHANNEL_NAMES)
    return channels


def complete_windows(channels: np.ndarray, window: int) -> np.ndarray:
    """Mark rows t whose channel rows t - window + 1 .. t are all finite."""
    bad = ~np.isfinite(channels).all(axis=1)
    bad_before = np.concatenate([[0], np.cumsum(bad)])
    count = len(channels)
    ends = np.arange(count)
    starts = ends - window + 1
    complete = np.zeros(count, dtype=bool)
    has_start = starts >= 0
    complete[has_start] = (bad_before[ends[has_start] + 1] - bad_before[starts[has_start]]) == 0
    return complete


def forward_target(close: np.ndarray, horizon: int) -> np.ndarray:
    """Compute the training target at each row: clipped log(close[t + horizon] / close[t]), scaled.

    The last ``horizon`` rows, and rows where either close is missing, get NaN,
    so no target reads past the end of the frame it is computed on.
    """
    close = np.asarray(close, dtype=np.float64)
    target = np.full(len(close), np.nan)
    if len(close) > horizon:
        with np.errstate(invalid="ignore", divide="ignore"):
            target[:-horizon] = np.log(close[horizon:] / close[:-horizon])
    target[~np.isfinite(target)] = np.nan
    return np.clip(target, -TARGET_CLIP, TARGET_CLIP) * RETURN_SCALE


class SharedEncoder(nn.Module):
    """A causal 1D convolution network from candle windows to embeddings.

    ``forward`` maps (batch, window, channels) to (batch, embedding_dim) in
    [-1, 1]. ``target_head`` is a linear layer used only for the training
    objective: it predicts the scaled forward log return (see
    :func:`forward_target`) from the embedding. There is no batch
    normalization or dropout, so an embedding depends on its own window only.
    """

    DILATIONS = (1, 2, 4, 8)
    KERNEL_SIZE = 3

    def __init__(self, channels: int, hidden: int, embedding_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = channels
        for dilation in self.DILATIONS:
            # Left padding only, so each output step reads its own and earlier steps.
            layers.append(nn.ConstantPad1d(((self.KERNEL_SIZE - 1) * dilation, 0), 0.0))
            layers.append(nn.Conv1d(width, hidden, kernel_size=self.KERNEL_SIZE, dilation=dilation))
            layers.append(nn.GELU())
            width = hidden
        self.convolutions = nn.Sequential(*layers)
        # The last step and the mean over the window, so the embedding reflects
        # both the latest state and the window's average behaviour.
        self.projection = nn.Linear(2 * hidden, embedding_dim)
        self.target_head = nn.Linear(embedding_dim, 1)

    @classmethod
    def from_config(cls, config: EncoderConfig) -> SharedEncoder:
        return cls(len(config.channels), config.hidden, config.embedding_dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        features = self.convolutions(windows.transpose(1, 2))
        pooled = torch.cat([features[:, :, -1], features.mean(dim=2)], dim=1)
        return torch.tanh(self.projection(pooled))

    def predict_target(self, windows: torch.Tensor) -> torch.Tensor:
        return self.target_head(self.forward(windows)).squeeze(-1)


def embedding_columns(config: EncoderConfig) -> list[str]:
    return [f"emb_{i}" for i in range(config.embedding_dim)]


def embed(model: SharedEncoder, config: EncoderConfig, grid: pd.DataFrame) -> pd.DataFrame:
    """Compute embeddings for every candle of ``grid``, indexed like it.

    Columns are ``emb_0 .. emb_{k-1}``. A row is NaN where its window is
    incomplete (the first ``window`` rows) or reads a missing candle. The model
    is switched to eval mode.
    """
    check_channels(config)
    channels = encoder_channels(grid).astype(np.float32)
    count, width = channels.shape
    window = config.window
    output = np.full((count, config.embedding_dim), np.nan, dtype=np.float64)
    complete = complete_windows(channels, window)
    if count < window or not complete.any():
        return pd.DataFrame(output, index=grid.index, columns=embedding_columns(config))

    filled = np.nan_to_num(channels, nan=0.0)
    # windows[i] is the window ending at row i + window - 1.
    windows = np.lib.stride_tricks.sliding_window_view(filled, (window, width))[:, 0]
    model.eval()
    with torch.no_grad():
        for start in range(0, len(windows), EMBED_BATCH_SIZE):
            stop = min(start + EMBED_BATCH_SIZE, len(windows))
            ends = np.arange(start, stop) + window - 1
            if not complete[ends].any():
                continue
            batch = np.zeros((EMBED_BATCH_SIZE, window, width), dtype=np.float32)
            batch[: stop - start] = windows[start:stop]
            result = model(torch.from_numpy(batch)).numpy()[: stop - start]
            output[ends] = result
    output[~complete] = np.nan
    return pd.DataFrame(output, index=grid.index, columns=embedding_columns(config))


def _torch_save_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _torch_load_safe(data: bytes, name: str) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise EncoderFileError(
            f"{name} is not a weights-only torch file and was rejected, because loading "
            f"a pickle can run code: {exc}. Retrain or re-save it with tensors only"
        ) from exc
    except (RuntimeError, EOFError, ValueError) as exc:
        raise EncoderFileError(f"{name} is not a readable torch file ({exc}); it may be truncated") from exc


def encoder_to_files(state_dict: Mapping[str, torch.Tensor], config: EncoderConfig) -> dict[str, bytes]:
    """Serialize encoder weights and config into ``encoder.pt`` and ``encoder_config.json``, without pickled objects."""
    tensors = {name: tensor.detach().cpu().clone() for name, tensor in state_dict.items()}
    document = {"format": ENCODER_FILE_FORMAT, "config": config.to_dict(), "torch_version": torch.__version__}
    return {
        ENCODER_WEIGHTS_FILE: _torch_save_bytes(tensors),
        ENCODER_CONFIG_FILE: json.dumps(document, indent=2, sort_keys=True).encode("utf-8"),
    }


def load_encoder(files: Mapping[str, bytes]) -> tuple[SharedEncoder, EncoderConfig]:
    """Load an encoder written by :func:`encoder_to_files`, in eval mode, with ``weights_only=True``."""
    missing = [name for name in (ENCODER_WEIGHTS_FILE, ENCODER_CONFIG_FILE) if name not in files]
    if missing:
        raise EncoderFileError(f"encoder files are missing {missing}; got {sorted(files)}")
    try:
        document = json.loads(files[ENCODER_CONFIG_FILE].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EncoderFileError(f"{ENCODER_CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != ENCODER_FILE_FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise EncoderFileError(
            f"{ENCODER_CONFIG_FILE} has format {found!r}; this code reads format {ENCODER_FILE_FORMAT}"
        )
    config = EncoderConfig.from_dict(document["config"])
    check_channels(config)

    state_dict = _torch_load_safe(files[ENCODER_WEIGHTS_FILE], ENCODER_WEIGHTS_FILE)
    model = SharedEncoder.from_config(config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise EncoderFileError(
            f"{ENCODER_WEIGHTS_FILE} does not match the network described by {ENCODER_CONFIG_FILE}: {exc}"
        ) from exc
    model.eval()
    return model, config


def checkpoint_to_bytes(state: Mapping[str, Any]) -> bytes:
    """Serialize a training checkpoint, which must contain only tensors and plain values."""
    data = _torch_save_bytes(dict(state))
    # Saving succeeds for any picklable object, so load it back the safe way now
    # instead of finding out at resume time that the checkpoint is unreadable.
    _torch_load_safe(data, "checkpoint")
    return data


def checkpoint_from_bytes(data: bytes) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``."""
    state = _torch_load_safe(data, "checkpoint")
    if not isinstance(state, dict):
        raise EncoderFileError(f"checkpoint contains a {type(state).__name__}; expected a dict")
    return state
