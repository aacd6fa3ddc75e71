"""Training checkpoints: full model and optimizer states written atomically, resume, and the
counters of a run that checkpoints carry."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.core.files import write_folder_atomically
from lmforge.io.checkpoint import CheckpointError, latest_checkpoint, load_train_state, load_weights_into, save_checkpoint
from lmforge.io.hf import save_pretrained
from lmforge.io.peft import save_adapter
from lmforge.model.lora import merge_lora
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.distributed import DistInfo, agree_any
from lmforge.train.reproducibility import rng_state, set_rng_state
from lmforge.train.signals import StopSignals


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


@dataclass
class RunState:
    """How far a training run got: what its checkpoints save and its end reports. Loops subclass
    it for what only they track."""

    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0  # training clock, pauses for evaluation and saving excluded
    checkpoint: Path | None = None  # the latest one written (or resumed from)
    last_eval_step: int = -1
    last_save_step: int = -1
    stopped_by: str | None = None  # "SIGTERM"/"SIGINT" when a signal ended the run early
    evals: list[dict[str, Any]] = field(default_factory=list)  # validation records

    @classmethod
    def resumed(cls, folder: Path, saved: dict[str, Any], **extra: Any) -> "RunState":
        """The state of a run resumed from `folder`, whose saved training state is `saved`."""
        step = int(saved["step"])
        return cls(step=step, tokens=int(saved["tokens"]), train_seconds=float(saved["train_seconds"]), checkpoint=folder,
                   last_save_step=step, **extra)


def checkpoint_model(model: Transformer) -> tuple[Transformer, dict[str, Any]]:
    """(the model a checkpoint holds, what its resume state must add). A model with LoRA layers is
    saved merged, so every checkpoint opens anywhere, and its adapter matrices go into the resume
    state; a plain model is saved as it is."""
    from lmforge.model.lora import lora_modules, lora_state_dict, merged_state_dict

    if not lora_modules(model):
        return model, {}
    adapter = {k: v.detach().cpu().clone() for k, v in lora_state_dict(model).items()}
    return Transformer.from_state_dict(model.config, merged_state_dict(model)), {"lora": adapter}


def save_lora_outputs(model: Transformer, tokenizer: Tokenizer, out: Path, base_model: str, merge: bool,
                      display: Any) -> tuple[Path, Path | None]:
    """The end of a LoRA run: its adapter in PEFT's layout (OUT/adapter) and, with `merge`, the model
    with the adapter merged in as a Hugging Face folder (OUT/merged), each announced on `display`.
    Merging changes `model` in place, so this comes last."""
    adapter = save_adapter(model, out / "adapter", base_model_name_or_path=base_model)
    display.message(f"adapter (PEFT layout): {adapter}")
    merged = None
    if merge:
        merge_lora(model)
        merged = write_folder_atomically(out / "merged", lambda tmp: save_pretrained(model, tokenizer, tmp))
        display.message(f"merged model: {merged}")
    return adapter, merged


def restore_model(folder: str | os.PathLike, model: Transformer, dist: DistInfo) -> dict[str, Any]:
    """Resume `model` from a checkpoint written with `checkpoint_model` and return its resume state:
    a LoRA model takes its adapter matrices from the state (its base weights come from the run's
    own --model), a plain model the checkpoint's weights."""
    import torch

    from lmforge.model.lora import lora_modules, lora_state_dict

    if not lora_modules(model):
        return restore_training_checkpoint(folder, model, dist)
    state = load_train_state(folder)
    params = lora_state_dict(model)
    if set(state.get("lora", {})) != set(params):
        raise ValueError(f"{folder}: its adapter does not match this run's LoRA layers")
    set_rng_state(state["rng"])
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state["lora"][name])
    return state


def checkpoint_if_due(state: RunState, signals: StopSignals, dist: DistInfo, save_every: int, save: Callable[[], None],
                      say: Callable[[str], None]) -> bool:
    """After a step: call `save` every `save_every` steps (0: never) and when a signal asked the run
    to stop (all ranks agree on that); then `say` how to continue. True when the run must stop."""
    state.stopped_by = signals.received if signals.requested(dist) else None
    if state.stopped_by or (save_every and state.step % save_every == 0):
        save()
    if state.stopped_by:
        say(f"stopped by {state.stopped_by} at step {state.step}; checkpoint saved to {state.checkpoint}; "
            "continue with --resume")
    return state.stopped_by is not None
