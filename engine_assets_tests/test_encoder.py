"""Tests of the shared encoder: channels, seeded and resumed training, safe file loading and causal embeddings."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pandas as pd
import pytest
import torch

from engine_assets.encoder.model import (
    CHANNEL_NAMES,
    EncoderConfig,
    EncoderFileError,
    SharedEncoder,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    embed,
    encoder_channels,
    encoder_to_files,
    load_encoder,
)
from engine_assets.encoder.train import train_encoder

TINY = EncoderConfig(
    window=8,
    embedding_dim=3,
    hidden=8,
    epochs=3,
    batch_size=32,
    learning_rate=1e-2,
    seed=11,
    target_horizon=2,
    max_samples_per_coin=120,
    validation_fraction=0.2,
)


def make_grid(rows: int, seed: int, start: str = "2024-01-01") -> pd.DataFrame:
    """Build a random-walk hourly candle grid with a UTC index named ``date``."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, rows)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.003, rows)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.003, rows)))
    volume = rng.lognormal(3.0, 0.5, rows)
    index = pd.date_range(start, periods=rows, freq="1h", tz="UTC", name="date")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index)


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return {"BTCUSDT": make_grid(300, seed=1), "ETHUSDT": make_grid(260, seed=2)}


@pytest.fixture(scope="module")
def trained(frames):
    return train_encoder(frames, TINY, threads=1)


@pytest.fixture(scope="module")
def model(trained):
    encoder, _ = load_encoder(encoder_to_files(trained.state_dict, trained.config))
    return encoder


def assert_same_weights(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert list(left) == list(right)
    for name in left:
        assert torch.equal(left[name], right[name]), name


class PickleOnly:
    """An object that only a full unpickler can rebuild."""

    def __init__(self) -> None:
        self.value = 1


def test_config_dict_round_trip():
    restored = EncoderConfig.from_dict(TINY.to_dict())
    assert restored == TINY
    assert restored.channels == CHANNEL_NAMES


def test_config_rejects_unknown_key():
    with pytest.raises(ValueError, match="unknown keys \\['layers'\\]"):
        EncoderConfig.from_dict({**TINY.to_dict(), "layers": 3})


def test_config_rejects_bad_window():
    with pytest.raises(ValueError, match="EncoderConfig.window=0"):
        EncoderConfig(window=0)


def test_channels_shape_and_first_row():
    grid = make_grid(50, seed=3)
    channels = encoder_channels(grid)
    assert channels.shape == (50, len(CHANNEL_NAMES))
    # The first candle has no previous close, so only its return is missing.
    assert np.isnan(channels[0, 0])
    assert np.isfinite(channels[0, 1:]).all()
    assert np.isfinite(channels[1:]).all()


def test_channels_missing_row_stays_nan():
    grid = make_grid(50, seed=3)
    grid.iloc[20] = np.nan
    channels = encoder_channels(grid)
    assert np.isnan(channels[20]).all()
    assert np.isnan(channels[21, 0])
    assert np.isfinite(channels[21, 1:]).all()
    assert np.isfinite(channels[22]).all()


def test_channels_are_causal():
    grid = make_grid(120, seed=4)
    changed = grid.copy()
    changed.iloc[61:] = changed.iloc[61:] * 3.0
    changed.iloc[90] = np.nan
    before = encoder_channels(grid)
    after = encoder_channels(changed)
    np.testing.assert_array_equal(before[:61], after[:61])
    assert not np.array_equal(before[61:], after[61:], equal_nan=True)


def test_channels_reject_irregular_grid():
    grid = make_grid(50, seed=3).drop(index=make_grid(50, seed=3).index[10])
    with pytest.raises(ValueError, match="not a regular grid"):
        encoder_channels(grid)


def test_train_counts_and_history(trained):
    assert trained.samples_train > 0
    assert trained.samples_validation > 0
    assert trained.samples_train <= 2 * TINY.max_samples_per_coin
    assert [entry["epoch"] for entry in trained.history] == [1, 2, 3]
    assert all(np.isfinite(entry["train_loss"]) for entry in trained.history)
    assert all(np.isfinite(entry["val_loss"]) for entry in trained.history)
    assert trained.resumed_from_epoch is None


def test_train_without_validation(frames):
    result = train_encoder(frames, dataclasses.replace(TINY, epochs=1, validation_fraction=0.0), threads=1)
    assert result.samples_validation == 0
    assert result.history[0]["val_loss"] is None
    assert np.isfinite(result.history[0]["train_loss"])


def test_train_seeded_twice_identical(frames, trained):
    again = train_encoder(frames, TINY, threads=1)
    assert_same_weights(trained.state_dict, again.state_dict)
    assert again.history == trained.history


def test_train_other_seed_differs(frames, trained):
    other = train_encoder(frames, dataclasses.replace(TINY, seed=12), threads=1)
    assert not torch.equal(other.state_dict["projection.weight"], trained.state_dict["projection.weight"])


def test_train_resume_matches_straight_run(frames, trained):
    saved: dict[int, bytes] = {}
    progress: list[tuple[int, float, float | None]] = []
    straight = train_encoder(
        frames,
        TINY,
        threads=1,
        checkpoint=lambda epoch, state: saved.__setitem__(epoch, checkpoint_to_bytes(state)),
        progress=lambda epoch, train_loss, val_loss: progress.append((epoch, train_loss, val_loss)),
    )
    assert sorted(saved) == [1, 2, 3]
    assert [entry[0] for entry in progress] == [1, 2, 3]
    assert_same_weights(straight.state_dict, trained.state_dict)

    state = checkpoint_from_bytes(saved[1])
    assert state["epoch"] == 1
    resumed = train_encoder(frames, TINY, threads=1, resume=state)
    assert resumed.resumed_from_epoch == 1
    assert resumed.history == straight.history
    assert_same_weights(resumed.state_dict, straight.state_dict)


def test_train_resume_rejects_other_config(frames):
    saved: list[dict] = []
    config = dataclasses.replace(TINY, epochs=1)
    train_encoder(frames, config, threads=1, checkpoint=lambda epoch, state: saved.append(state))
    with pytest.raises(ValueError, match="hidden changed"):
        train_encoder(frames, dataclasses.replace(TINY, hidden=4), threads=1, resume=saved[0])


def test_train_resume_rejects_other_frames(frames):
    saved: list[dict] = []
    train_encoder(frames, dataclasses.replace(TINY, epochs=1), threads=1, checkpoint=lambda e, s: saved.append(s))
    with pytest.raises(ValueError, match="trained on other candles"):
        train_encoder({"BTCUSDT": frames["BTCUSDT"]}, TINY, threads=1, resume=saved[0])


def test_train_rejects_too_short_frames():
    with pytest.raises(ValueError, match="no encoder training windows"):
        train_encoder({"BTCUSDT": make_grid(10, seed=1)}, TINY, threads=1)


def test_checkpoint_loads_weights_only(frames):
    saved: list[bytes] = []
    config = dataclasses.replace(TINY, epochs=1)
    train_encoder(frames, config, threads=1, checkpoint=lambda epoch, state: saved.append(checkpoint_to_bytes(state)))
    state = torch.load(io.BytesIO(saved[0]), weights_only=True)
    assert state["epoch"] == 1
    assert set(state["model_state_dict"]) == {name for name, _ in SharedEncoder.from_config(config).state_dict().items()}
    assert state["history"][0]["epoch"] == 1
    assert isinstance(state["rng"]["torch"], torch.Tensor)


def test_checkpoint_rejects_pickle_payload():
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "payload": PickleOnly()}, buffer)
    with pytest.raises(EncoderFileError, match="not a weights-only torch file"):
        checkpoint_from_bytes(buffer.getvalue())


def test_checkpoint_to_bytes_rejects_objects():
    with pytest.raises(EncoderFileError, match="not a weights-only torch file"):
        checkpoint_to_bytes({"epoch": 1, "payload": PickleOnly()})


def test_encoder_files_load_weights_only(trained):
    files = encoder_to_files(trained.state_dict, trained.config)
    assert sorted(files) == ["encoder.pt", "encoder_config.json"]
    weights = torch.load(io.BytesIO(files["encoder.pt"]), weights_only=True)
    assert_same_weights(weights, trained.state_dict)
    model, config = load_encoder(files)
    assert config == trained.config
    assert not model.training


def test_encoder_files_reject_pickle_payload(trained):
    files = encoder_to_files(trained.state_dict, trained.config)
    buffer = io.BytesIO()
    torch.save(PickleOnly(), buffer)
    files["encoder.pt"] = buffer.getvalue()
    with pytest.raises(EncoderFileError, match="encoder.pt is not a weights-only torch file"):
        load_encoder(files)


def test_encoder_files_reject_other_channels(trained):
    config = dataclasses.replace(trained.config, channels=("close_return",))
    files = encoder_to_files(trained.state_dict, config)
    with pytest.raises(EncoderFileError, match="differ from this code's channels"):
        load_encoder(files)


def test_embed_columns_and_warmup(model):
    grid = make_grid(100, seed=5)
    embeddings = embed(model, TINY, grid)
    assert list(embeddings.columns) == ["emb_0", "emb_1", "emb_2"]
    assert embeddings.index.equals(grid.index)
    # The window ending at row 8 is the first whose close returns all exist.
    assert embeddings.iloc[: TINY.window].isna().all().all()
    assert np.isfinite(embeddings.iloc[TINY.window :].to_numpy()).all()


def test_embed_is_causal(model):
    grid = make_grid(2500, seed=6)
    cut = 1500
    changed = grid.copy()
    rng = np.random.default_rng(7)
    changed.iloc[cut + 1 :] = changed.iloc[cut + 1 :] * rng.uniform(0.5, 2.0, size=(len(grid) - cut - 1, 1))
    changed.iloc[cut + 40] = np.nan
    before = embed(model, TINY, grid)
    after = embed(model, TINY, changed)
    np.testing.assert_array_equal(before.iloc[: cut + 1].to_numpy(), after.iloc[: cut + 1].to_numpy())
    assert not np.allclose(before.iloc[cut + 1 : cut + 30].to_numpy(), after.iloc[cut + 1 : cut + 30].to_numpy())


def test_embed_nan_around_gap(model):
    grid = make_grid(100, seed=8)
    gap = 50
    grid.iloc[gap] = np.nan
    embeddings = embed(model, TINY, grid).to_numpy()
    # The missing candle is read by the windows ending at rows gap .. gap + window:
    # the last of them reads it through its first close return.
    assert np.isnan(embeddings[gap : gap + TINY.window + 1]).all()
    assert np.isfinite(embeddings[gap - 1]).all()
    assert np.isfinite(embeddings[gap + TINY.window + 1]).all()


def test_embed_deterministic(model):
    grid = make_grid(300, seed=9)
    np.testing.assert_array_equal(embed(model, TINY, grid).to_numpy(), embed(model, TINY, grid).to_numpy())


def test_embed_flat_zero_volume_finite(model):
    grid = make_grid(120, seed=10)
    flat = slice(40, 90)
    price = grid["close"].iloc[39]
    for column in ("open", "high", "low", "close"):
        grid.iloc[flat, grid.columns.get_loc(column)] = price
    grid.iloc[flat, grid.columns.get_loc("volume")] = 0.0
    channels = encoder_channels(grid)
    assert np.isfinite(channels[1:]).all()
    embeddings = embed(model, TINY, grid)
    assert np.isfinite(embeddings.iloc[TINY.window :].to_numpy()).all()


def test_embed_all_zero_volume_finite(model):
    grid = make_grid(60, seed=11)
    grid["volume"] = 0.0
    assert np.isfinite(encoder_channels(grid)[1:]).all()
    assert np.isfinite(embed(model, TINY, grid).iloc[TINY.window :].to_numpy()).all()
