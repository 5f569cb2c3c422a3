"""Training modes: how many coin runs may run at once."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from engine_assets.settings import HYBRID_CPU_CONCURRENCY, HYBRID_GPU_CONCURRENCY, EngineSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConcurrencyPlan:
    """The concurrency limit for coin runs and how it was chosen."""

    mode: str
    limit: int
    device: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def detect_cuda() -> bool:
    """Return whether torch finds a CUDA GPU (imports torch, so call it once per command)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def plan_concurrency(settings: EngineSettings, cuda_available: bool | None = None) -> ConcurrencyPlan:
    """Choose the coin-run limit for ``settings.training_mode``."""
    mode = settings.training_mode
    if mode == "sequential":
        return ConcurrencyPlan(mode, 1, "cpu", "sequential mode runs one coin at a time")
    if mode == "parallel":
        return ConcurrencyPlan(
            mode, settings.concurrency, "cpu", f"parallel mode with ENGINE_CONCURRENCY={settings.concurrency}"
        )
    has_gpu = detect_cuda() if cuda_available is None else cuda_available
    if has_gpu:
        plan = ConcurrencyPlan(mode, HYBRID_GPU_CONCURRENCY, "cuda", "hybrid mode found a CUDA GPU")
    else:
        plan = ConcurrencyPlan(mode, HYBRID_CPU_CONCURRENCY, "cpu", "hybrid mode found no CUDA GPU")
    logger.info("%s: %d coin runs at a time", plan.reason, plan.limit)
    return plan
