"""Shared fixtures: the sample candles and an isolated engine home per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = CHECKOUT.parent / "shared" / "data" / "ohlcv" / "binance"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real Binance sample candles next to the checkout."""
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"sample candles not found at {SAMPLE_DIR}")
    return SAMPLE_DIR


def link_samples(sample_dir: Path, target: Path, bases: list[str]) -> Path:
    """Symlink the sample files of ``bases`` (such as ``BTC``) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for base in bases:
        name = f"{base}_USDT-1h.feather"
        (target / name).symlink_to(sample_dir / name)
    return target


@pytest.fixture
def engine_env(tmp_path, monkeypatch) -> dict[str, str]:
    """ENGINE_HOME and DAGSTER_HOME under ``tmp_path``, with no inherited engine settings."""
    for name in list(os.environ):
        if name.startswith(("ENGINE_", "TELEGRAM_", "DROPBOX_")) or name == "DAGSTER_HOME":
            monkeypatch.delenv(name, raising=False)
    home = tmp_path / "engine-home"
    monkeypatch.setenv("ENGINE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    return {"ENGINE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
