"""Pretraining from scratch: the loop, top to bottom.

    data folder (`lmforge prepare`) + PretrainConfig  ->  checkpoints, metrics.jsonl, loss.png

The same function runs alone or under torchrun (DDP or FSDP2). The mechanics it shares with other
training methods (accumulation, clipping, evaluation, logging, checkpoints, signals) live in
the modules of `lmforge.train` (step, validation, metrics, checkpointing, signals); what is left here is the order in which they happen.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import lmforge
from lmforge.data.loader import TrainLoader, eval_batches
from lmforge.data.shards import TokenData
from lmforge.io.checkpoint import CheckpointError
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
from lmforge.train.checkpointing import find_resume_checkpoint, restore_optimizer, restore_training_checkpoint, save_training_checkpoint
from lmforge.core.progress import ProgressDisplay
from lmforge.train.metrics import MetricsLog, plot_metrics, progress_line
from lmforge.train.precision import autocast
from lmforge.train.reproducibility import seed_everything, set_deterministic
from lmforge.train.signals import StopSignals, TrainClock
from lmforge.train.step import accumulate_gradients, clip_gradients, ensure_finite
from lmforge.train.validation import EvalResult, sample_text, validation_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.schedule import lr_multiplier
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
    parts = []
    if config.max_steps is not None:
        parts.append(step / config.max_steps)
    if config.max_tokens is not None:
        parts.append(tokens / config.max_tokens)
    if config.time_budget_s is not None:
        parts.append(seconds / config.time_budget_s)
    return max(parts)


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
    dist = init_distributed(config.device)
    try:
        return _pretrain(config, dist, resume, on_eval, show_progress)
    finally:
        shutdown_distributed()


def _pretrain(config: PretrainConfig, dist: DistInfo, resume: bool,
              on_eval: Callable[[dict[str, Any]], None] | None, show_progress: bool) -> PretrainResult:
    # ---- setup: determinism, output folder, data, tokenizer, model -------------------------------
    if config.threads:
        torch.set_num_threads(config.threads)
    set_deterministic(config.deterministic)
    seed_everything(config.seed)
    out = Path(config.out_dir)
    check_writable(out, dist)
    data = TokenData.open(config.data)
    tokenizer = Tokenizer.from_folder(data.tokenizer_folder)
    token_bytes = torch.from_numpy(data.token_bytes()).long()
    model_config = config.model.replace(vocab_size=data.vocab_size, max_seq_len=config.seq_len)
    model = Transformer(model_config)
    init_weights(model, seed=config.seed)
    model.to(dist.device)
    loader = TrainLoader(data.train, config.seq_len, config.batch_size, seed=config.seed, rank=dist.rank, world=dist.world)

    # ---- resume: weights before wrapping, optimizer after ----------------------------------------
    step, tokens, train_seconds, resumed = 0, 0, 0.0, None
    if resume:
        folder = find_resume_checkpoint(out)
        resumed = restore_training_checkpoint(folder, model, dist)
        loader.load_state_dict(resumed["loader"])
        step, tokens, train_seconds = int(resumed["step"]), int(resumed["tokens"]), float(resumed["train_seconds"])
    fsdp = dist.enabled and config.distributed == "fsdp"
    wrapped = wrap_model(model, config.distributed, dist)
    optimizer = build_optimizer(model, config.optim)
    if resumed is not None:
        restore_optimizer(optimizer, model, resumed["optimizer"])
    train_forward = torch.compile(wrapped) if config.compile else wrapped
    precision = autocast(dist.device, config.dtype)
    # Under bf16 autocast RMSNorm sees bf16 activations with fp32 weights and PyTorch warns that it
    # cannot use its fused kernel; harmless (results are right), so not shown to every user.
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight", category=UserWarning)

    # ---- logging ---------------------------------------------------------------------------------
    metrics = MetricsLog(out / "metrics.jsonl", enabled=dist.is_main, resume_step=step if resumed else None)
    display = ProgressDisplay(enabled=dist.is_main and show_progress)
    display.start("pretrain")
    if dist.is_main:
        write_text_atomically(out / "run_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        n_params = sum(p.numel() for p in model.parameters())
        display.message(f"model: {model_config.family}, {n_params / 1e6:.2f}M parameters; data: {data.train.tokens:,} train / "
                        f"{data.val.tokens:,} val tokens; {dist.world} process(es)"
                        + (f"; resuming at step {step}" if resumed else ""))
        busy = busy_cpu_warning(dist)
        if busy:
            display.message(busy)
    evals: list[dict[str, Any]] = []
    clock = TrainClock(already=train_seconds)
    next_eval_s = (resumed or {}).get("next_eval_s", config.eval_every_s)
    last_eval_step, last_save_step, stopped_by = -1, step if resumed else -1, None
    checkpoint: Path | None = folder if resume else None
    step_tokens = config.batch_size * config.seq_len * config.grad_accum * dist.world
    rate_mark = (time.perf_counter(), clock.seconds, tokens)

    def run_eval() -> EvalResult:
        batches = [(x.to(dist.device), y.to(dist.device)) for x, y in
                   eval_batches(data.val, config.seq_len, config.eval_batch_size, rank=dist.rank, world=dist.world,
                                max_tokens=config.eval_tokens)]
        result = validation_loss(wrapped, batches, token_bytes.to(dist.device), dist, precision=precision)
        record = {"step": step, "tokens": tokens, "time_s": round(clock.seconds, 3),
                  "val_loss": result.loss, "val_bpb": result.bpb, "eval_s": round(result.seconds, 3)}
        metrics.log(**record)
        evals.append(record)
        display.message(f"step {step}: val loss {result.loss:.4f}, {result.bpb:.4f} bits/byte "
                        f"({tokens:,} tokens, {clock.seconds:.1f}s)")
        if on_eval is not None and dist.is_main:
            on_eval(record)
        return result

    def run_samples() -> None:
        if not config.sample_prompts or not (dist.is_main or fsdp):  # FSDP: forward is a collective, all ranks generate
            return
        room = config.seq_len - 8
        texts = sample_text(model, tokenizer, list(config.sample_prompts), max_new_tokens=min(config.sample_tokens, room),
                            seed=config.seed)
        for prompt, text in zip(config.sample_prompts, texts):
            metrics.log(step=step, tokens=tokens, prompt=prompt, sample=text)
            display.message(f"sample @ step {step}: {prompt + text!r}")

    def save() -> None:
        nonlocal checkpoint, last_save_step
        state = {"step": step, "tokens": tokens, "train_seconds": clock.seconds, "loader": loader.state_dict(),
                 "next_eval_s": next_eval_s}
        meta = {"step": step, "tokens": tokens, "train_seconds": round(clock.seconds, 3),
                "val_loss": evals[-1]["val_loss"] if evals else None, "lmforge_version": lmforge.__version__,
                "world_size": dist.world, "pretrain_config": config.to_dict()}
        checkpoint = save_training_checkpoint(out, step=step, model=model, wrapped=wrapped, optimizer=optimizer,
                                              tokenizer=tokenizer, dist=dist, fsdp=fsdp, train_state=state, meta=meta,
                                              keep=config.keep_checkpoints)
        last_save_step = step
        if dist.is_main and config.plot:
            plot_metrics(metrics.records(), out / "loss.png", title=f"pretrain {out.name}")

    # ---- the loop ----------------------------------------------------------------------------------
    with StopSignals() as signals:
        while True:
            seconds = broadcast_float(clock.seconds, dist) if config.time_budget_s else clock.seconds
            progress = run_progress(config, step, tokens, seconds)
            if progress >= 1.0:
                break
            optimizer.set_lr_multiplier(lr_multiplier(config.schedule, step, progress))

            micro_batches = [(x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True))
                             for x, y in (loader.next_batch() for _ in range(config.grad_accum))]
            loss, _ = accumulate_gradients(train_forward, micro_batches, dist, precision=precision)
            ensure_finite(loss, step + 1, dist)
            grad_norm = clip_gradients(model, config.grad_clip)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            tokens += step_tokens

            if step % config.log_every == 0 or step == 1:
                now, train_now = time.perf_counter(), clock.seconds
                rate = (tokens - rate_mark[2]) / max(train_now - rate_mark[1], 1e-9)
                rate_mark = (now, train_now, tokens)
                lr = optimizer.param_groups[0]["lr"]
                metrics.log(step=step, tokens=tokens, time_s=round(train_now, 3), train_loss=loss, lr=lr,
                            grad_norm=grad_norm, tokens_per_s=round(rate, 1))
                done = run_progress(config, step, tokens, train_now)
                display.update(done, progress_line(done, step, loss, rate, train_now), log_line=True)

            with clock.paused():
                eval_due = (config.eval_every and step % config.eval_every == 0) or \
                           (next_eval_s is not None and clock.seconds >= next_eval_s)
                if eval_due:
                    run_eval()
                    last_eval_step = step
                    if next_eval_s is not None:
                        while next_eval_s <= clock.seconds:
                            next_eval_s += config.eval_every_s
                if config.sample_every and step % config.sample_every == 0:
                    run_samples()
                stopped_by = signals.received if signals.requested(dist) else None
                if stopped_by or (config.save_every and step % config.save_every == 0):
                    save()
            if stopped_by:
                display.message(f"stopped by {stopped_by} at step {step}; checkpoint saved to {checkpoint}; "
                                f"continue with --resume")
                break

        # ---- the end: final evaluation, samples, checkpoint, plot ----------------------------------
        with clock.paused():
            if not stopped_by:
                if last_eval_step != step:
                    run_eval()
                run_samples()
                if last_save_step != step:
                    save()
                elif dist.is_main and config.plot:
                    plot_metrics(metrics.records(), out / "loss.png", title=f"pretrain {out.name}")
        train_seconds = clock.seconds
    barrier(dist)
    display.close()
    return PretrainResult(out, checkpoint, step, tokens, train_seconds, stopped_by, evals)
