"""What every training loop shares: step, accumulate, clip, check, evaluate, log, checkpoint, stop.

Each training method (pretrain, and later sft, dpo, ...) keeps its own loop, readable top to bottom;
the pieces below are the only copies of the mechanics. None of them reads a config object: they
take plain values, so a loop shows what it passes.

  seed_everything, set_deterministic, autocast         reproducibility and precision
  accumulate_gradients(model, micro_batches, loss_fn)   token-weighted accumulation (DDP/FSDP-aware)
  clip_gradients, ensure_finite                         clipping; a NaN/inf loss stops every rank
  evaluate(model, batches, token_bytes)                 mean loss and bits per byte over a split
  sample_text(model, tokenizer, prompts)                sample generations for the log
  StopSignals                                           SIGTERM/SIGINT -> save and exit cleanly
  TrainClock                                            training wall-clock with pauses excluded
  MetricsLog, plot_metrics, ProgressDisplay             metrics.jsonl, loss-curve PNG, progress line
  save_training_checkpoint, restore_training_checkpoint atomic checkpoints with full resume state
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.io.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_train_state,
    load_weights_into,
    save_checkpoint,
)
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.distributed import DistInfo, agree_any, all_reduce_max, all_reduce_sum
from lmforge.train.losses import IGNORE_INDEX, bits_per_byte, token_cross_entropy
from lmforge.core.files import replace_atomically

# (inputs [B, T], targets [B, T]), or with a third tensor, segment ids [B, T] of packed documents
Batch = tuple[torch.Tensor, ...]


def batch_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's logits for a batch; packed documents (segment ids) attend only within themselves."""
    inputs, _, *segments = batch
    if segments and segments[0] is not None:
        return model(inputs, segment_ids=segments[0])
    return model(inputs)
LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; no checkpoint is written for that state."""


# --------------------------------------------------------------------------------------------
# Reproducibility and precision
# --------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)


class autocast:  # noqa: N801 - used like torch.autocast
    """bf16 autocast on CPU or GPU (weights and optimizer stay float32); float32 is a no-op.

    On CPU, PyTorch's fused (flash) attention kernel is about 2x slower in bf16 than in fp32, and
    slower than the plain math path, so bf16 on CPU also selects the math attention backend.
    Reusable: enter it around every forward.
    """

    def __init__(self, device: torch.device, dtype: str) -> None:
        self.device, self.enabled = device, dtype not in ("float32", "fp32")
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> None:
        self._stack = contextlib.ExitStack()
        if self.enabled:
            self._stack.enter_context(torch.autocast(device_type=self.device.type, dtype=torch.bfloat16))
            if self.device.type == "cpu":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                self._stack.enter_context(sdpa_kernel([SDPBackend.MATH]))

    def __exit__(self, *exc: Any) -> None:
        assert self._stack is not None
        self._stack.close()


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


# --------------------------------------------------------------------------------------------
# One optimizer step's gradients
# --------------------------------------------------------------------------------------------
def accumulate_gradients(model: nn.Module, micro_batches: list[Batch], dist: DistInfo, *,
                         loss_fn: LossFn = token_cross_entropy,
                         precision: contextlib.AbstractContextManager | None = None) -> tuple[float, int]:
    """Forward and backward over the micro-batches of one step, weighting every target token equally.

    Each micro-batch's summed loss is divided by the number of target tokens in the whole step
    (all micro-batches, all ranks), so the gradient is the mean over tokens however they are split
    into micro-batches or processes. DDP/FSDP average gradients over ranks, hence the `world`
    factor. Returns the step's mean loss over all ranks and its global token count.
    """
    local_tokens = sum(int((batch[1] != IGNORE_INDEX).sum()) for batch in micro_batches)
    global_tokens = int(all_reduce_sum([float(local_tokens)], dist)[0])
    if global_tokens == 0:
        raise ValueError("a training step has no target tokens (every target is masked)")
    scale = dist.world / global_tokens
    loss_total = torch.zeros((), dtype=torch.float64, device=micro_batches[0][1].device)  # summed on device: one sync
    for index, batch in enumerate(micro_batches):
        targets = batch[1]
        last = index == len(micro_batches) - 1
        sync = model.no_sync() if (not last and hasattr(model, "no_sync")) else contextlib.nullcontext()
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter only on the last micro-batch
            model.set_requires_gradient_sync(last)
        with sync:
            with precision or contextlib.nullcontext():
                logits = batch_logits(model, batch)
            loss_sum, _ = loss_fn(logits, targets)
            (loss_sum * scale).backward()
        loss_total += loss_sum.detach().double()
    loss_all = all_reduce_sum([float(loss_total)], dist)[0]
    return loss_all / global_tokens, global_tokens


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` (0 = only measure it); returns the norm before."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2 returns a DTensor
        norm = norm.full_tensor()
    return float(norm)


def ensure_finite(loss: float, step: int, dist: DistInfo) -> None:
    """Raise NonFiniteLossError on every rank when the loss is NaN/inf on any rank."""
    if agree_any(not math.isfinite(loss), dist):
        raise NonFiniteLossError(
            f"the training loss became {loss} at step {step}; stopping without saving this state. "
            "Lower the learning rate, enable grad_clip or use float32, then resume from the last checkpoint")


# --------------------------------------------------------------------------------------------
# Evaluation and samples
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean nats per target token
    bpb: float  # bits per UTF-8 byte
    tokens: int
    seconds: float


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], token_bytes: torch.Tensor, dist: DistInfo, *,
             precision: contextlib.AbstractContextManager | None = None, loss_fn: LossFn = token_cross_entropy) -> EvalResult:
    """Loss and bits per byte over every batch given (each rank passes its own share).

    Ranks may hold different numbers of batches; the shorter ones run throw-away forwards so that
    sharded (FSDP) models, whose forward is a collective, never wait on each other.
    """
    started = time.perf_counter()
    batches = list(batches)
    rounds = all_reduce_max(len(batches), dist)
    was_training = model.training
    model.eval()
    loss_sum, tokens, n_bytes = 0.0, 0, 0
    for index in range(rounds):
        real = index < len(batches)
        batch = batches[index] if real else batches[0] if batches else (torch.zeros(1, 1, dtype=torch.long),) * 2
        targets = batch[1]
        with precision or contextlib.nullcontext():
            logits = batch_logits(model, batch)
        if not real:
            continue
        batch_loss, count = loss_fn(logits, targets)
        loss_sum += float(batch_loss)
        tokens += int(count)
        valid = targets[targets != IGNORE_INDEX]
        n_bytes += int(token_bytes[valid.cpu()].sum())
    model.train(was_training)
    loss_sum, tokens, n_bytes = all_reduce_sum([loss_sum, float(tokens), float(n_bytes)], dist)
    return EvalResult(loss_sum / max(tokens, 1), bits_per_byte(loss_sum, int(n_bytes)), int(tokens), time.perf_counter() - started)


def sample_text(model: Transformer, tokenizer: Tokenizer, prompts: list[str], *, max_new_tokens: int,
                temperature: float = 0.8, top_k: int | None = 40, seed: int = 0) -> list[str]:
    """Completions of `prompts` from the current weights (model left in train mode afterwards)."""
    from lmforge.infer.engine import generate

    was_training = model.training
    model.eval()
    try:
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_k=top_k, seed=seed)
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Stopping and timing
# --------------------------------------------------------------------------------------------
class StopSignals:
    """SIGTERM and SIGINT set a flag instead of killing the process; the loop saves and exits.

    A second SIGINT restores Python's default behaviour (KeyboardInterrupt), for an impatient Ctrl-C.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, dist: DistInfo) -> bool:
        """True on all ranks once any rank got a signal (torchrun forwards SIGTERM to every rank)."""
        return agree_any(self.received is not None, dist)


class TrainClock:
    """Seconds spent training: `with clock.paused():` around evaluation, sampling and saving.

    While paused the clock stands still, so records written during an evaluation carry the
    training time at which it started.
    """

    def __init__(self, already: float = 0.0) -> None:
        self._offset = already
        self._started = time.perf_counter()
        self._paused = 0.0
        self._pause_began: float | None = None

    @property
    def seconds(self) -> float:
        now = self._pause_began if self._pause_began is not None else time.perf_counter()
        return self._offset + now - self._started - self._paused

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        if self._pause_began is not None:  # already paused: nested pauses change nothing
            yield
            return
        self._pause_began = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - self._pause_began
            self._pause_began = None


# --------------------------------------------------------------------------------------------
# Metrics, plot and progress
# --------------------------------------------------------------------------------------------
class MetricsLog:
    """Append-only metrics.jsonl (main rank only). Resuming at step S drops records after S, which a
    killed run may have logged past its last checkpoint, so the file reads as one clean run."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, **record: Any) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def plot_metrics(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "loss") -> None:
    """Train and val loss against tokens seen, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["tokens"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        axis.plot(*zip(*train), label="train", linewidth=1, alpha=0.8)
    if val:
        axis.plot(*zip(*val), "o-", label="val", markersize=3)
    axis.set_xlabel("tokens")
    axis.set_ylabel("loss (nats/token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    try:
        replace_atomically(path, figure.savefig)
    finally:
        plt.close(figure)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressDisplay:
    """A rich progress bar with loss, tokens/s and ETA on a terminal; plain log lines otherwise."""

    def __init__(self, enabled: bool, description: str = "pretrain") -> None:
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                TextColumn("{task.fields[info]}"), transient=False)
            self.task = self.bar.add_task(description, total=1000, info="")
            self.bar.start()

    def update(self, progress: float, step: int, loss: float, tokens_per_s: float, elapsed: float, log_line: bool) -> None:
        if not self.enabled:
            return
        eta = elapsed * (1 - progress) / progress if progress > 0 else 0.0
        info = f"step {step} | loss {loss:.4f} | {tokens_per_s / 1000:.1f}k tok/s | {_duration(elapsed)} | eta {_duration(eta)}"
        if self.bar is not None:
            self.bar.update(self.task, completed=min(1000, int(progress * 1000)), info=info)
        elif log_line:
            print(info, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
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
