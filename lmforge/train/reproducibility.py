"""Seeds, deterministic algorithms and the random states a resumed run restores."""

from __future__ import annotations

import os
import random
from typing import Any

import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_process(threads: int | None, deterministic: bool, seed: int) -> None:
    """What a training run sets first: CPU threads (None: PyTorch's choice), deterministic
    algorithms, and the seeds."""
    if threads:
        torch.set_num_threads(threads)
    set_deterministic(deterministic)
    seed_everything(seed)
