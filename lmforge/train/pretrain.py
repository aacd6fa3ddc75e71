"""Pretraining from scratch: the loop, top to bottom.

    data folder (`lmforge prepare`) + PretrainConfig  ->  checkpoints, metrics.jsonl, loss.png

The same function runs alone or under torchrun (DDP or FSDP2). The mechanics it shares with other
training methods (accumulation, clipping, evaluation, logging, checkpoints, signals) live in
the modules of `lmforge.train` (step, validation, metrics, checkpointing, signals); what is left
here is the order in which they happen, as phases that can each be called alone:

    1 data        TokenData, tokenizer, TrainLoader (the LSTM: StreamLoader, consecutive windows)
    2 model       `build_model` (fresh weights of the recipe's shape: a decoder, or an LSTM)
    3 resume      `resume_run` (weights before wrapping; the optimizer's state once it exists)
    4 the loop    `train`: `train_step`, then `validate` / `write_samples` / `save` on their schedules
    5 the end     `finish`: last validation, samples, checkpoint, plot

`_pretrain` is the whole run in one screen: data, model and resume build a `PretrainRun`, on
which the loop and the end work; a `with` block stops the progress bar even after a crash.

`architecture: lstm` runs the same phases on the recurrent baseline (train/recurrent.py): its
loader reads contiguous streams window after window, its training forward (`logits_fn`) starts
each window from the state the previous one left (truncated BPTT), that state is saved with
every checkpoint, and validation reads the decoder's held-out windows from a zero state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import lmforge
from lmforge.data.loader import TrainLoader, eval_batches
from lmforge.data.shards import TokenData
from lmforge.io.checkpoint import CheckpointError
from lmforge.model.lstm import LSTMLanguageModel, init_lstm_weights
from lmforge.model.transformer import Transformer, init_weights
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.train.config import PretrainConfig
from lmforge.train.distributed import (
    DistInfo,
    barrier,
    broadcast_float,
    init_distributed,
    shutdown_distributed,
    wrap_model,
)
from lmforge.train.checkpointing import (
    RunState,
    checkpoint_if_due,
    find_resume_checkpoint,
    restore_optimizer,
    restore_training_checkpoint,
    save_training_checkpoint,
)
from lmforge.core.progress import ProgressDisplay
from lmforge.train.metrics import MetricsLog, Throughput, plot_metrics, progress_line
from lmforge.train.precision import autocast
from lmforge.train.reproducibility import prepare_process
from lmforge.train.signals import StopSignals, TrainClock
from lmforge.train.recurrent import CarriedState, SplitTokens, StreamLoader, fresh_state_logits
from lmforge.train.recurrent import sample_text as lstm_sample_text
from lmforge.train.step import Batch, LogitsFn, accumulate_gradients, batch_logits, clip_gradients, ensure_finite
from lmforge.train.validation import EvalResult, sample_text, validation_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.schedule import fraction_done, lr_multiplier
from lmforge.core.files import write_text_atomically


@dataclass
class PretrainResult:
    out_dir: Path
    checkpoint: Path | None
    steps: int
    tokens: int
    train_seconds: float
    stopped_by: str | None  # "SIGTERM"/"SIGINT" when a signal ended the run early
    evals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_val_loss(self) -> float | None:
        return self.evals[-1]["val_loss"] if self.evals else None


def run_progress(config: PretrainConfig, step: int, tokens: int, seconds: float) -> float:
    """How much of the run is done (0..1): the furthest of the step, token and time budgets."""
    return fraction_done((step, config.max_steps), (tokens, config.max_tokens), (seconds, config.time_budget_s))


def busy_cpu_warning(dist: DistInfo) -> str | None:
    """A note when other processes already keep the CPU cores busy: PyTorch's worker threads then
    wait on each other and throughput can fall by 10x or more (threads=1 copes better)."""
    if dist.device.type != "cpu" or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load < cores + 0.5:
        return None
    threads = torch.get_num_threads()
    advice = " (consider threads=1)" if threads > 1 else ""
    return f"note: the CPU is busy (load {load:.1f} on {cores} cores): training will be slow and timings noisy{advice}"


def check_writable(out: Path, dist: DistInfo) -> None:
    """Fail at once, with the path in the message, if the run folder cannot be written."""
    if not dist.is_main:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{time.time_ns()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise CheckpointError(f"cannot write to the output folder {out}: {error.strerror or error}") from error


def pretrain(config: PretrainConfig, *, resume: bool = False,
             on_eval: Callable[[dict[str, Any]], None] | None = None, show_progress: bool = True) -> PretrainResult:
    """Pretrain as `config` says (alone or under torchrun); `on_eval` receives every validation
    record on the main rank."""
    dist = init_distributed(config.device)
    try:
        return _pretrain(config, dist, resume, on_eval, show_progress)
    finally:
        shutdown_distributed()


# --------------------------------------------------------------------------------------------
# Phases 1-3: data, model, resume
# --------------------------------------------------------------------------------------------
def build_loader(config: PretrainConfig, data: TokenData, dist: DistInfo) -> TrainLoader | StreamLoader:
    """Phase 1: random windows for a decoder; for the LSTM, consecutive windows of contiguous streams."""
    if config.architecture == "lstm":
        return StreamLoader(SplitTokens(data.train), config.seq_len, config.batch_size, rank=dist.rank, world=dist.world,
                            segment_windows=config.lstm_segment_windows, seed=config.seed)
    return TrainLoader(data.train, config.seq_len, config.batch_size, seed=config.seed, rank=dist.rank, world=dist.world)


def build_model(config: PretrainConfig, vocab_size: int, device: torch.device) -> Transformer | LSTMLanguageModel:
    """Phase 2: a freshly initialised model of the recipe's shape, with the data's vocabulary and
    a context of `seq_len` (the decoder's)."""
    if config.architecture == "lstm":
        lstm = LSTMLanguageModel(dataclasses.replace(config.lstm, vocab_size=vocab_size))
        init_lstm_weights(lstm, seed=config.seed)
        return lstm.to(device)
    model = Transformer(config.model.replace(vocab_size=vocab_size, max_seq_len=config.seq_len))
    init_weights(model, seed=config.seed)
    return model.to(device)


@dataclass
class PretrainState(RunState):
    """A pretraining run's counters, and when its next timed evaluation is due."""

    next_eval_s: float | None = None


def resume_run(config: PretrainConfig, model: Transformer | LSTMLanguageModel, loader: TrainLoader | StreamLoader,
               dist: DistInfo) -> tuple[PretrainState, dict[str, Any] | None]:
    """Phase 3: without a checkpoint to resume, a fresh state; else the latest checkpoint's weights
    (into the model before it is wrapped), loader position and counters, and the saved training
    state (its optimizer state is restored once the optimizer exists)."""
    folder = find_resume_checkpoint(config.out_dir)
    resumed = restore_training_checkpoint(folder, model, dist)
    loader.load_state_dict(resumed["loader"])
    return PretrainState.resumed(folder, resumed, next_eval_s=resumed.get("next_eval_s", config.eval_every_s)), resumed


# --------------------------------------------------------------------------------------------
# What the loop works with, and the steps it takes
# --------------------------------------------------------------------------------------------
@dataclass
class PretrainRun:
    """Everything one run holds: built by `_pretrain`, changed by the loop and its phases."""

    config: PretrainConfig
    dist: DistInfo
    data: TokenData
    tokenizer: Tokenizer
    token_bytes: torch.Tensor  # UTF-8 bytes of every token id, on the device (bits per byte)
    model: Transformer | LSTMLanguageModel  # the plain module (weights, sampling, checkpoints)
    wrapped: nn.Module  # DDP/FSDP around it (evaluation)
    train_forward: nn.Module  # what training steps call: `wrapped`, compiled when config.compile
    loader: TrainLoader | StreamLoader
    optimizer: Any
    precision: autocast
    metrics: MetricsLog
    display: ProgressDisplay
    clock: TrainClock
    state: PretrainState
    on_eval: Callable[[dict[str, Any]], None] | None = None
    carried: CarriedState | None = None  # the LSTM's state between windows (truncated BPTT)

    @property
    def logits_fn(self) -> LogitsFn:
        """How a training step runs the model on a batch."""
        return batch_logits if self.carried is None else self.carried.logits

    @property
    def out(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def fsdp(self) -> bool:
        return self.dist.enabled and self.config.distributed == "fsdp"

    def progress(self, seconds: float | None = None) -> float:
        return run_progress(self.config, self.state.step, self.state.tokens,
                            self.clock.seconds if seconds is None else seconds)


def train_step(run: PretrainRun, progress: float) -> tuple[float, float]:
    """One optimizer step over `grad_accum` micro-batches at run `progress`: (mean loss, gradient norm)."""
    config, dist, state = run.config, run.dist, run.state
    run.optimizer.set_lr_multiplier(lr_multiplier(config.schedule, state.step, progress))
    micro_batches = [to_device(run.loader.next_batch(), dist.device) for _ in range(config.grad_accum)]
    loss, _ = accumulate_gradients(run.train_forward, micro_batches, dist, logits_fn=run.logits_fn,
                                   precision=run.precision)
    ensure_finite(loss, state.step + 1, dist)
    grad_norm = clip_gradients(run.model, config.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad()
    state.step += 1
    state.tokens += config.batch_size * config.seq_len * config.grad_accum * dist.world
    return loss, grad_norm


def to_device(batch: Batch, device: torch.device) -> Batch:
    """A batch's tensors on `device` (other parts, such as the LSTM's `fresh` flag, as they are)."""
    return tuple(part.to(device, non_blocking=True) if isinstance(part, torch.Tensor) else part for part in batch)


def validate(run: PretrainRun) -> EvalResult:
    """Validation loss and bits per byte (every rank its share of the val split), logged, kept in
    `state.evals` and handed to `on_eval`."""
    config, dist, state = run.config, run.dist, run.state
    batches = [(x.to(dist.device), y.to(dist.device)) for x, y in
               eval_batches(run.data.val, config.seq_len, config.eval_batch_size, rank=dist.rank, world=dist.world,
                            max_tokens=config.eval_tokens)]
    result = validation_loss(run.wrapped, batches, run.token_bytes, dist, precision=run.precision,
                             logits_fn=batch_logits if run.carried is None else fresh_state_logits)
    record = {"step": state.step, "tokens": state.tokens, "time_s": round(run.clock.seconds, 3),
              "val_loss": result.loss, "val_bpb": result.bpb, "eval_s": round(result.seconds, 3)}
    run.metrics.log(**record)
    state.evals.append(record)
    state.last_eval_step = state.step
    run.display.message(f"step {state.step}: val loss {result.loss:.4f}, {result.bpb:.4f} bits/byte "
                        f"({state.tokens:,} tokens, {run.clock.seconds:.1f}s)")
    if run.on_eval is not None and dist.is_main:
        run.on_eval(record)
    return result


def eval_due(run: PretrainRun) -> bool:
    """Whether a validation pass is due: every `eval_every` steps, or every `eval_every_s` seconds
    of training time (then the next time is moved past now)."""
    config, state = run.config, run.state
    due = bool(config.eval_every and state.step % config.eval_every == 0)
    if state.next_eval_s is not None and run.clock.seconds >= state.next_eval_s:
        due = True
        while state.next_eval_s <= run.clock.seconds:
            state.next_eval_s += config.eval_every_s
    return due


def write_samples(run: PretrainRun) -> None:
    """Sample completions of the recipe's prompts, logged (FSDP: every rank takes part)."""
    config = run.config
    if not config.sample_prompts or not (run.dist.is_main or run.fsdp):  # FSDP: forward is a collective
        return
    room = config.seq_len - 8
    if isinstance(run.model, LSTMLanguageModel):  # no context limit, but as many tokens as the decoder's
        texts = lstm_sample_text(run.model, run.tokenizer, list(config.sample_prompts), start_id=run.data.boundary_id,
                                 max_new_tokens=min(config.sample_tokens, room), seed=config.seed)
    else:
        texts = sample_text(run.model, run.tokenizer, list(config.sample_prompts),
                            max_new_tokens=min(config.sample_tokens, room), seed=config.seed)
    for prompt, text in zip(config.sample_prompts, texts):
        run.metrics.log(step=run.state.step, tokens=run.state.tokens, prompt=prompt, sample=text)
        run.display.message(f"sample @ step {run.state.step}: {prompt + text!r}")


def save(run: PretrainRun) -> None:
    """An atomic checkpoint (gathered from every rank, written by the main one) and the loss plot."""
    config, dist, state = run.config, run.dist, run.state
    train_state = {"step": state.step, "tokens": state.tokens, "train_seconds": run.clock.seconds,
                   "loader": run.loader.state_dict(), "next_eval_s": state.next_eval_s}
    if run.carried is not None:
        train_state["carried_state"] = run.carried.state_dict()
    meta = {"step": state.step, "tokens": state.tokens, "train_seconds": round(run.clock.seconds, 3),
            "val_loss": state.evals[-1]["val_loss"] if state.evals else None, "lmforge_version": lmforge.__version__,
            "world_size": dist.world, "pretrain_config": config.to_dict()}
    state.checkpoint = save_training_checkpoint(run.out, step=state.step, model=run.model, wrapped=run.wrapped,
                                                optimizer=run.optimizer, tokenizer=run.tokenizer, dist=dist,
                                                fsdp=run.fsdp, train_state=train_state, meta=meta,
                                                keep=config.keep_checkpoints)
    state.last_save_step = state.step
    plot(run)


def plot(run: PretrainRun) -> None:
    if run.dist.is_main and run.config.plot:
        plot_metrics(run.metrics.records(), run.out / "loss.png", title=f"pretrain {run.out.name}")


# --------------------------------------------------------------------------------------------
# Phase 4, the loop
# --------------------------------------------------------------------------------------------
def train(run: PretrainRun, signals: StopSignals) -> None:
    """Phase 4: optimizer steps until the step, token or time budget is used up or a signal asks to
    stop; validation, samples and checkpoints on their schedules, with the training clock paused."""
    config, dist, state = run.config, run.dist, run.state
    throughput = Throughput(run.clock.seconds, state.tokens)
    while True:
        seconds = broadcast_float(run.clock.seconds, dist) if config.time_budget_s else run.clock.seconds  # ranks agree
        progress = run.progress(seconds)
        if progress >= 1.0:
            return
        loss, grad_norm = train_step(run, progress)
        if state.step % config.log_every == 0 or state.step == 1:
            seconds = run.clock.seconds
            rate = throughput.rate(seconds, state.tokens)
            run.metrics.log(step=state.step, tokens=state.tokens, time_s=round(seconds, 3), train_loss=loss,
                            lr=run.optimizer.param_groups[0]["lr"], grad_norm=grad_norm, tokens_per_s=round(rate, 1))
            done = run.progress(seconds)
            run.display.update(done, progress_line(done, state.step, loss, rate, seconds), log_line=True)
        with run.clock.paused():
            if eval_due(run):
                validate(run)
            if config.sample_every and state.step % config.sample_every == 0:
                write_samples(run)
            if checkpoint_if_due(state, signals, dist, config.save_every, lambda: save(run), run.display.message):
                return


# --------------------------------------------------------------------------------------------
# Phase 5, the end
# --------------------------------------------------------------------------------------------
def finish(run: PretrainRun) -> PretrainResult:
    """Phase 5 (skipped but for the result when a signal stopped the run): the last validation,
    samples, the final checkpoint and the plot."""
    state = run.state
    with run.clock.paused():
        if not state.stopped_by:
            if state.last_eval_step != state.step:
                validate(run)
            write_samples(run)
            if state.last_save_step != state.step:
                save(run)
            else:
                plot(run)
    state.train_seconds = run.clock.seconds
    return PretrainResult(run.out, state.checkpoint, state.step, state.tokens, state.train_seconds, state.stopped_by,
                          state.evals)


# --------------------------------------------------------------------------------------------
# The run, top to bottom
# --------------------------------------------------------------------------------------------
def _pretrain(config: PretrainConfig, dist: DistInfo, resume: bool,
              on_eval: Callable[[dict[str, Any]], None] | None, show_progress: bool) -> PretrainResult:
    prepare_process(config.threads, config.deterministic, config.seed)
    check_writable(Path(config.out_dir), dist)
    with ProgressDisplay(enabled=dist.is_main and show_progress) as display:  # closed however the run ends
        display.start("pretrain")
        data = TokenData.open(config.data)  # phase 1
        tokenizer = Tokenizer.from_folder(data.tokenizer_folder)
        loader = build_loader(config, data, dist)
        model = build_model(config, data.vocab_size, dist.device)  # phase 2
        state, resumed = resume_run(config, model, loader, dist) if resume else (
            PretrainState(next_eval_s=config.eval_every_s), None)  # phase 3
        wrapped = wrap_model(model, config.distributed, dist)
        optimizer = build_optimizer(model, config.optim)
        if resumed is not None:
            restore_optimizer(optimizer, model, resumed["optimizer"])
        metrics = MetricsLog(Path(config.out_dir) / "metrics.jsonl", enabled=dist.is_main,
                             resume_step=state.step if resumed else None)
        token_bytes = torch.from_numpy(data.token_bytes()).long().to(dist.device)
        run = PretrainRun(config, dist, data, tokenizer, token_bytes, model, wrapped,
                          torch.compile(wrapped) if config.compile else wrapped, loader, optimizer,
                          autocast(dist.device, config.dtype), metrics, display, TrainClock(already=state.train_seconds),
                          state, on_eval, CarriedState() if config.architecture == "lstm" else None)
        if resumed is not None and run.carried is not None:
            run.carried.load_state_dict(resumed.get("carried_state", {}), dist.device)
        if dist.is_main:
            write_text_atomically(run.out / "run_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
            display.message(describe(run) + (f"; resuming at step {state.step}" if resumed else ""))
            busy = busy_cpu_warning(dist)
            if busy:
                display.message(busy)
        # Under bf16 autocast RMSNorm sees bf16 activations with fp32 weights and PyTorch warns that it
        # cannot use its fused kernel; harmless (results are right), so not shown to every user.
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight", category=UserWarning)
        with StopSignals() as signals:
            train(run, signals)  # phase 4
            result = finish(run)  # phase 5
        barrier(dist)
        return result


def describe(run: PretrainRun) -> str:
    """The log's first line: model size, data, processes."""
    n_params = sum(p.numel() for p in run.model.parameters())
    kind = "lstm" if isinstance(run.model, LSTMLanguageModel) else run.model.config.family
    return (f"model: {kind}, {n_params / 1e6:.2f}M parameters; data: {run.data.train.tokens:,} train / "
            f"{run.data.val.tokens:,} val tokens; {run.dist.world} process(es)")
