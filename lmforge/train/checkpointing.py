"""Training checkpoints: full model and optimizer states written atomically, and resume."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.io.checkpoint import CheckpointError, latest_checkpoint, load_train_state, load_weights_into, save_checkpoint
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.distributed import DistInfo, agree_any
from lmforge.train.reproducibility import rng_state, set_rng_state


def _full_states(model: Transformer, wrapped: nn.Module, optimizer: Any, fsdp: bool) -> tuple[dict, dict]:
    """Unsharded model and optimizer state dicts (a collective under FSDP; full copies on rank 0)."""
    if not fsdp:
        return model.state_dict(), {"format": "plain", **optimizer.state_dict()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer.optimizers, options=options)
    return model_state, {"format": "fqn", "state": optim_state}


def save_training_checkpoint(root: str | os.PathLike, *, step: int, model: Transformer, wrapped: nn.Module,
                             optimizer: Any, tokenizer: Tokenizer | None, dist: DistInfo, fsdp: bool,
                             train_state: dict[str, Any], meta: dict[str, Any], keep: int) -> Path | None:
    """Collect full states on every rank, write on rank 0; every rank learns whether it worked."""
    model_state, optim_state = _full_states(model, wrapped, optimizer, fsdp)
    error: CheckpointError | None = None
    path = None
    if dist.is_main:
        export = model
        if fsdp:  # a plain CPU copy of the gathered weights for save_pretrained
            export = Transformer(model.config)
            export.load_state_dict(model_state)
        state = {**train_state, "optimizer": optim_state, "rng": rng_state()}
        try:
            path = save_checkpoint(root, step, export, tokenizer, state, meta, keep=keep)
        except CheckpointError as caught:
            error = caught
    if agree_any(error is not None, dist):
        raise error or CheckpointError("checkpoint writing failed on rank 0; the last good checkpoint is kept")
    return path


def restore_training_checkpoint(folder: str | os.PathLike, model: Transformer, dist: DistInfo) -> dict[str, Any]:
    """Load weights into the (not yet wrapped) model and return the resume state; call
    `restore_optimizer` once the optimizer exists."""
    load_weights_into(model, folder)
    state = load_train_state(folder)
    set_rng_state(state["rng"])
    return state


def restore_optimizer(optimizer: Any, model: Transformer, saved: dict[str, Any]) -> None:
    if saved.get("format") == "fqn":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer.optimizers, saved["state"],
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    else:
        optimizer.load_state_dict(saved)


def find_resume_checkpoint(root: str | os.PathLike) -> Path:
    found = latest_checkpoint(root)
    if found is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint under {root}")
    return found
