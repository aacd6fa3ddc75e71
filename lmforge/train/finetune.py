"""Supervised fine-tuning (full or LoRA) on chat data: the loop, top to bottom.

    pretrained model + chat JSONL (or a generated task)  ->  checkpoints, adapter/, merged/,
                                                            metrics.jsonl, loss.png, summary.json

Conversations go through the tokenizer's chat template (`render_conversation`, the one owner of
the chat format) into ids with a loss mask on assistant tokens, are packed into rows, and are
trained with the same shared modules as pretraining (`lmforge.train.step`, `.validation`, ...): token-weighted
accumulation, clipping, evaluation, metrics, progress, signals and atomic checkpoints.

LoRA runs wrap the chosen linear layers (`lmforge.model.lora`); only the adapter is trained. Their
checkpoints hold the *merged* model (so each one opens anywhere) and the adapter matrices in the
resume state; the finished run also writes the adapter in PEFT's layout under `adapter/`.
Given a `score` function (the CLI passes the eval runner's, `lmforge.eval.runner.task_scorer`),
the run scores the model on a held-out task before and after training.

Phases, each callable alone:

    1 data        `build_data`: conversations -> chat template -> packed rows -> batches
    2 method      `build_method`: LoRA wraps the target layers, or full training
    3 resume      `resume_run`: weights or adapter, loader position, counters
    4 the loop    `train`: `train_step`, then `validate` / `save` on their schedules
    5 the end     `finish`: last validation, task score, checkpoint, adapter, merged model, summary

`_finetune` reads top to bottom: it builds a `FinetuneRun` (everything the phases work on) and
runs them in order, with the progress display closed however the run ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

import lmforge
from lmforge.data.chat import ChatBatches, ChatExample, PackedRow, collate, pack_examples, read_chat_jsonl
from lmforge.data.synthetic import TaskItem, make_items
from lmforge.io.checkpoint import load_meta
from lmforge.core.files import write_text_atomically
from lmforge.io.registry import load_model
from lmforge.model.lora import apply_lora, count_parameters
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.tokenizer.train import token_byte_lengths
from lmforge.train.config import OptimConfig, RecipeConfig, ScheduleConfig
from lmforge.train.distributed import DistInfo, init_distributed, shutdown_distributed
from lmforge.train.checkpointing import (
    RunState,
    checkpoint_if_due,
    checkpoint_model,
    find_resume_checkpoint,
    restore_model,
    restore_optimizer,
    save_lora_outputs,
    save_training_checkpoint,
)
from lmforge.core.progress import ProgressDisplay
from lmforge.train.metrics import MetricsLog, Throughput, plot_metrics, progress_line
from lmforge.train.precision import autocast
from lmforge.train.reproducibility import prepare_process
from lmforge.train.signals import StopSignals, TrainClock
from lmforge.train.step import accumulate_gradients, clip_gradients, ensure_finite
from lmforge.train.validation import validation_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.schedule import fraction_done, lr_multiplier

DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}

TaskScorer = Callable[[Transformer, Tokenizer, str], Mapping[str, float]]
"""Scores a model on a held-out task: (model, tokenizer, "before" | "after") -> {metric: value}.
The train layer cannot import eval, so the caller builds it (`lmforge.eval.runner.task_scorer`)."""


@dataclass(frozen=True)
class LoRASettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("all-linear",)  # "all-linear" or module-name suffixes (q_proj, v_proj, ...)

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"lora.rank must be positive, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("lora.targets must name at least one layer (or 'all-linear')")

    @property
    def target_spec(self) -> str | list[str]:
        return self.targets[0] if self.targets == ("all-linear",) else list(self.targets)


@dataclass(frozen=True)
class FinetuneConfig(RecipeConfig):
    model: str = "smollm2-135m-instruct"  # known name, GGUF file, HF folder or lmforge checkpoint
    data: str | None = None  # chat JSONL; None -> the generated `task`
    val_data: str | None = None  # held-out chat JSONL for the validation loss; None -> split off `data`
    val_fraction: float = 0.05  # of `data`, when val_data is not given (at most val_max conversations)
    val_max: int = 200
    task: str = "add"  # generated task used when `data` is None (see lmforge.data.synthetic)
    train_items: int = 2000
    eval_items: int = 200  # held-out task items the CLI's scorer evaluates before and after training (0: none)
    out_dir: str = "runs/finetune"
    method: Literal["full", "lora"] = "lora"
    lora: LoRASettings = field(default_factory=LoRASettings)
    merge: bool = False  # also write the merged model to out_dir/merged (LoRA)
    seq_len: int = 512  # tokens per packed row
    pack: bool = True
    batch_size: int = 8  # rows per micro-batch
    grad_accum: int = 1
    epochs: float | None = 1.0
    max_steps: int | None = None
    time_budget_s: float | None = None
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=DEFAULT_LR["lora"], weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", warmup_steps=10, min_lr_frac=0.1))
    grad_clip: float = 1.0
    dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    threads: int | None = None
    log_every: int = 5
    eval_every: int = 50  # steps between validation-loss passes; 0 = only at the end
    eval_before: bool = True  # score the task before training too
    max_new_tokens: int = 16  # generation length of the CLI's task scorer (task answers are a few tokens)
    eval_batch_size: int = 16  # validation rows / task-scoring sequences per batch
    save_every: int = 0  # steps; 0 = only at the end (and on SIGTERM/SIGINT)
    keep_checkpoints: int = 2
    plot: bool = True

    def __post_init__(self) -> None:
        self._check_run(("epochs", "max_steps", "time_budget_s"),
                        ("seq_len", "batch_size", "grad_accum", "log_every", "eval_batch_size", "keep_checkpoints",
                         "max_new_tokens", "train_items"))
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.merge and self.method != "lora":
            raise ValueError("merge applies to LoRA runs (a full fine-tune already is a complete model)")


@dataclass
class FinetuneResult:
    out_dir: Path
    checkpoint: Path | None
    adapter: Path | None
    merged: Path | None
    steps: int
    train_seconds: float
    trainable_parameters: int
    total_parameters: int
    scores_before: dict[str, float] | None  # what the `score` function returned before training
    scores_after: dict[str, float] | None
    stopped_by: str | None
    evals: list[dict[str, Any]] = field(default_factory=list)


def run_progress(config: FinetuneConfig, step: int, epochs_done: float, seconds: float) -> float:
    """How much of the run is done (0..1): the furthest of the step, epoch and time budgets."""
    return fraction_done((step, config.max_steps), (epochs_done, config.epochs), (seconds, config.time_budget_s))


# --------------------------------------------------------------------------------------------
# Phase 1, data: conversations -> (ids, mask) -> packed rows -> batches
# --------------------------------------------------------------------------------------------
def encode_conversations(tokenizer: Tokenizer, examples: Sequence[ChatExample]) -> list[tuple[list[int], list[int]]]:
    """Render every conversation through the chat template; errors name the example's line."""
    encoded = []
    for example in examples:
        try:
            encoded.append(render_conversation(tokenizer, list(example.messages)))
        except ValueError as error:
            raise ValueError(f"{example.where}: {error}") from None
    return encoded


def task_examples(items: Sequence[TaskItem], source: str) -> list[ChatExample]:
    return [ChatExample(tuple(item.messages()), source, index + 1) for index, item in enumerate(items)]


def load_data(config: FinetuneConfig) -> tuple[list[ChatExample], list[ChatExample]]:
    """(train conversations, validation conversations)."""
    if config.data is None:
        train = task_examples(make_items(config.task, config.train_items, "train", config.seed), f"task:{config.task}")
        # Held-out questions for the validation loss; a different draw than a scorer's (seed 0) documents.
        val_items = make_items(config.task, config.val_max, "heldout", config.seed + 1)
        return train, task_examples(val_items, f"task:{config.task}:heldout")
    examples = read_chat_jsonl(config.data)
    if config.val_data is not None:
        return examples, read_chat_jsonl(config.val_data)
    n_val = min(config.val_max, int(len(examples) * config.val_fraction))
    if n_val == 0:
        return examples, []
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(config.seed)).tolist()
    val_index = set(order[:n_val])
    return ([e for i, e in enumerate(examples) if i not in val_index],
            [e for i, e in enumerate(examples) if i in val_index])


@dataclass
class FinetuneData:
    """What the loop trains and validates on."""

    batches: ChatBatches  # endless, resumable micro-batches of packed training rows
    val_rows: list[PackedRow]
    pad_id: int
    token_bytes: torch.Tensor  # UTF-8 bytes of every token id (bits per byte of the validation loss)
    summary: str  # one line for the log


def build_data(config: FinetuneConfig, tokenizer: Tokenizer, vocab_size: int, max_seq_len: int) -> FinetuneData:
    """Phase 1: read or generate the conversations, render them through the chat template and pack
    them into rows of at most `seq_len` + 1 tokens (bounded by the model's context)."""
    if tokenizer.pad_id is None and tokenizer.eos_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad batches with")
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    train_examples, val_examples = load_data(config)
    seq_len = min(config.seq_len, max_seq_len - 1)
    rows, cut = pack_examples(encode_conversations(tokenizer, train_examples), seq_len, config.pack)
    val_rows, _ = pack_examples(encode_conversations(tokenizer, val_examples), seq_len, config.pack)
    token_bytes = torch.zeros(vocab_size, dtype=torch.long)
    lengths = torch.from_numpy(token_byte_lengths(tokenizer)).long()
    token_bytes[:len(lengths)] = lengths[:vocab_size]
    summary = (f"data: {len(train_examples)} train conversations in {len(rows)} rows of <= {seq_len + 1} tokens"
               + (f" ({cut} cut to fit)" if cut else "") + f", {len(val_examples)} validation")
    return FinetuneData(ChatBatches(rows, config.batch_size, pad_id, seed=config.seed), val_rows, pad_id, token_bytes,
                        summary)


# --------------------------------------------------------------------------------------------
# Phase 2, method: LoRA wraps the chosen layers, full trains everything
# --------------------------------------------------------------------------------------------
def build_method(config: FinetuneConfig, model: Transformer) -> str:
    """Phase 2: wrap the LoRA target layers (method lora; the base weights are frozen) or leave the
    model whole (method full). Returns a line for the log."""
    wrapped: list[str] = []
    if config.method == "lora":
        wrapped = apply_lora(model, config.lora.target_spec, rank=config.lora.rank, alpha=config.lora.alpha,
                             dropout=config.lora.dropout)
    trainable, total = count_parameters(model)
    return (f"model: {config.model} ({model.config.family}, {total / 1e6:.1f}M parameters); method {config.method}: "
            f"{trainable:,} trainable parameters ({100 * trainable / total:.3f}%)"
            + (f" in {len(wrapped)} LoRA layers" if config.method == "lora" else ""))


# --------------------------------------------------------------------------------------------
# Phase 3, resume: weights (or adapter), loader position and counters from the last checkpoint
# --------------------------------------------------------------------------------------------
@dataclass
class FinetuneState(RunState):
    """A fine-tuning run's counters, and its task scores."""

    scores_before: dict[str, float] | None = None
    scores_after: dict[str, float] | None = None


def resume_run(config: FinetuneConfig, model: Transformer, batches: ChatBatches,
               dist: DistInfo) -> tuple[FinetuneState, dict]:
    """Phase 3: load the latest checkpoint of `config.out_dir` into the (LoRA-wrapped) model and the
    batches; returns the run state and the saved training state (its optimizer state is restored
    once the optimizer exists). A checkpoint of another method is refused."""
    checkpoint = find_resume_checkpoint(config.out_dir)
    saved_method = (load_meta(checkpoint).get("finetune_config") or {}).get("method")
    if saved_method != config.method:
        raise ValueError(f"{checkpoint} is from a {saved_method or 'non-finetune'} run; this run's method is {config.method}")
    resumed = restore_model(checkpoint, model, dist)  # LoRA: the adapter; the base weights come from --model
    batches.load_state_dict(resumed["loader"])
    return FinetuneState.resumed(checkpoint, resumed, scores_before=resumed.get("scores_before")), resumed


# --------------------------------------------------------------------------------------------
# What the loop works with, and the steps it takes
# --------------------------------------------------------------------------------------------
@dataclass
class FinetuneRun:
    """Everything one run holds: built by `_finetune`, changed by the loop and its phases."""

    config: FinetuneConfig
    dist: DistInfo
    model: Transformer
    tokenizer: Tokenizer
    data: FinetuneData
    optimizer: Any
    precision: autocast
    metrics: MetricsLog
    display: ProgressDisplay
    clock: TrainClock
    state: FinetuneState
    score: TaskScorer | None = None

    @property
    def out(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def progress(self) -> float:
        return run_progress(self.config, self.state.step, self.data.batches.epoch_progress, self.clock.seconds)

    def to_device(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Move a collated batch; segment ids only when a row holds several conversations (else the
        plain causal path, with no mask to build: right padding is never seen by a real token)."""
        inputs, targets, segments = batch
        device = self.dist.device
        packed = bool((segments.amax(dim=1) > 1).any())
        return (inputs.to(device), targets.to(device)) + ((segments.to(device),) if packed else ())


def train_step(run: FinetuneRun) -> tuple[float, float, int]:
    """One optimizer step over `grad_accum` micro-batches: (mean loss, gradient norm, target tokens)."""
    config, state = run.config, run.state
    run.optimizer.set_lr_multiplier(lr_multiplier(config.schedule, state.step, run.progress))
    micro_batches = []
    for _ in range(config.grad_accum):
        batch = next(run.data.batches)
        state.tokens += int((batch[2] > 0).sum())
        micro_batches.append(run.to_device(batch))
    loss, target_tokens = accumulate_gradients(run.model, micro_batches, run.dist, precision=run.precision)
    ensure_finite(loss, state.step + 1, run.dist)
    grad_norm = clip_gradients(run.model, config.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad()
    state.step += 1
    return loss, grad_norm, target_tokens


def validate(run: FinetuneRun) -> None:
    """Validation loss (and bits per byte) over the held-out rows, logged and kept in `state.evals`."""
    config, state = run.config, run.state
    if not run.data.val_rows:
        return
    rows = run.data.val_rows
    batches = [run.to_device(collate(rows[i:i + config.eval_batch_size], run.data.pad_id))
               for i in range(0, len(rows), config.eval_batch_size)]
    result = validation_loss(run.model, batches, run.data.token_bytes.to(run.dist.device), run.dist,
                             precision=run.precision)
    record = {"step": state.step, "tokens": state.tokens, "time_s": round(run.clock.seconds, 3), "val_loss": result.loss,
              "val_bpb": result.bpb, "eval_s": round(result.seconds, 3)}
    run.metrics.log(**record)
    state.evals.append(record)
    state.last_eval_step = state.step
    run.display.message(f"step {state.step}: val loss {result.loss:.4f} on {result.tokens:,} assistant tokens")


def score_task(run: FinetuneRun, label: str) -> dict[str, float]:
    """The task score ("before" or "after" training) from the run's `score` function, logged."""
    assert run.score is not None
    started = time.perf_counter()
    scores = dict(run.score(run.model, run.tokenizer, label))
    seconds = time.perf_counter() - started
    run.metrics.log(step=run.state.step, tokens=run.state.tokens, **{f"{name}_{label}": value for name, value in scores.items()},
                    score_s=round(seconds, 1))
    shown = ", ".join(f"{name} {value:.1%}" if isinstance(value, float) else f"{name} {value}"
                      for name, value in scores.items())
    run.display.message(f"task score {label} training: {shown} ({seconds:.0f}s)")
    return scores


def save(run: FinetuneRun) -> None:
    """An atomic checkpoint: the model (LoRA runs: merged, so it opens anywhere), and the resume
    state (loader position, counters, LoRA matrices, optimizer); then the loss plot."""
    config, state, model = run.config, run.state, run.model
    export, extra = checkpoint_model(model)  # LoRA: merged weights, and the adapter in the resume state
    train_state = {"step": state.step, "tokens": state.tokens, "train_seconds": run.clock.seconds,
                   "loader": run.data.batches.state_dict(), "method": config.method, "scores_before": state.scores_before,
                   **extra}
    meta = {"step": state.step, "tokens": state.tokens, "train_seconds": round(run.clock.seconds, 3),
            "val_loss": state.evals[-1]["val_loss"] if state.evals else None, "lmforge_version": lmforge.__version__,
            "finetune_config": config.to_dict(), "merged_lora": config.method == "lora"}
    state.checkpoint = save_training_checkpoint(run.out, step=state.step, model=export, wrapped=export,
                                                optimizer=run.optimizer, tokenizer=run.tokenizer, dist=run.dist, fsdp=False,
                                                train_state=train_state, meta=meta, keep=config.keep_checkpoints)
    state.last_save_step = state.step
    if config.plot:
        plot_metrics(run.metrics.records(), run.out / "loss.png", title=f"finetune {run.out.name}")


# --------------------------------------------------------------------------------------------
# Phase 4, the loop
# --------------------------------------------------------------------------------------------
def train(run: FinetuneRun, signals: StopSignals) -> None:
    """Phase 4: optimizer steps until the run's length is reached or a signal asks to stop;
    validation and checkpoints on their schedules, all with the training clock paused."""
    config, state = run.config, run.state
    throughput = Throughput(run.clock.seconds, state.tokens)
    while run.progress < 1.0:
        loss, grad_norm, target_tokens = train_step(run)
        if state.step % config.log_every == 0 or state.step == 1:
            seconds = run.clock.seconds
            rate = throughput.rate(seconds, state.tokens)
            run.metrics.log(step=state.step, tokens=state.tokens, time_s=round(seconds, 3), train_loss=loss,
                            lr=run.optimizer.param_groups[0]["lr"], grad_norm=grad_norm, target_tokens=target_tokens,
                            epoch=round(run.data.batches.epoch_progress, 4), tokens_per_s=round(rate, 1))
            done = run.progress
            run.display.update(done, progress_line(done, state.step, loss, rate, seconds), log_line=True)
        with run.clock.paused():
            if config.eval_every and state.step % config.eval_every == 0:
                validate(run)
            if checkpoint_if_due(state, signals, run.dist, config.save_every, lambda: save(run), run.display.message):
                return


# --------------------------------------------------------------------------------------------
# Phase 5, the end: validation, task score, checkpoint, adapter, merged model, summary
# --------------------------------------------------------------------------------------------
def finish(run: FinetuneRun) -> FinetuneResult:
    """Phase 5 (skipped but for the result when a signal stopped the run): the last validation and
    task score, the final checkpoint, the PEFT adapter (and the merged model), summary.json."""
    config, state, model = run.config, run.state, run.model
    state.train_seconds = run.clock.seconds
    trainable, total = count_parameters(model)  # before merging removes the adapter
    adapter = merged = None
    if not state.stopped_by:
        if state.last_eval_step != state.step:
            validate(run)
        if run.score is not None:
            state.scores_after = score_task(run, "after")
        if state.last_save_step != state.step:
            save(run)
        if config.method == "lora":
            adapter, merged = save_lora_outputs(model, run.tokenizer, run.out, config.model, config.merge, run.display)
    result = FinetuneResult(run.out, state.checkpoint, adapter, merged, state.step, state.train_seconds, trainable, total,
                            state.scores_before, state.scores_after, state.stopped_by, state.evals)
    if not state.stopped_by:
        write_text_atomically(run.out / "summary.json", json.dumps(summary(config, result, state.tokens), indent=2) + "\n")
    return result


def summary(config: FinetuneConfig, result: FinetuneResult, tokens: int) -> dict[str, Any]:
    """summary.json of a finished run."""
    return {"model": config.model, "method": config.method, "task": config.task if config.data is None else None,
            "data": config.data, "steps": result.steps, "tokens": tokens, "train_seconds": round(result.train_seconds, 1),
            "trainable_parameters": result.trainable_parameters, "total_parameters": result.total_parameters,
            "scores_before": result.scores_before, "scores_after": result.scores_after,
            "final_val_loss": result.evals[-1]["val_loss"] if result.evals else None,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "adapter": str(result.adapter) if result.adapter else None,
            "merged": str(result.merged) if result.merged else None}


# --------------------------------------------------------------------------------------------
# The run, top to bottom
# --------------------------------------------------------------------------------------------
def finetune(config: FinetuneConfig, *, resume: bool = False, show_progress: bool = True,
             score: TaskScorer | None = None) -> FinetuneResult:
    """Fine-tune as `config` says; with `score`, measure the model before (unless eval_before is
    off) and after training."""
    dist = init_distributed(config.device)
    try:
        if dist.enabled:
            raise ValueError("finetune runs in a single process; start it without torchrun")
        return _finetune(config, dist, resume, show_progress, score)
    finally:
        shutdown_distributed()


def _finetune(config: FinetuneConfig, dist: DistInfo, resume: bool, show_progress: bool,
              score: TaskScorer | None) -> FinetuneResult:
    prepare_process(config.threads, config.deterministic, config.seed)
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    with ProgressDisplay(enabled=show_progress) as display:  # closed however the run ends
        display.start(f"finetune ({config.method})")
        model, tokenizer = load_model(config.model, dtype=torch.float32, device=dist.device)
        data = build_data(config, tokenizer, model.config.vocab_size, model.config.max_seq_len)
        display.message(data.summary)
        display.message(build_method(config, model))
        state, resumed = resume_run(config, model, data.batches, dist) if resume else (FinetuneState(), None)
        optimizer = build_optimizer(model, config.optim)
        if resumed is not None:
            restore_optimizer(optimizer, model, resumed["optimizer"])
        model.train()
        metrics = MetricsLog(Path(config.out_dir) / "metrics.jsonl", resume_step=state.step if resumed else None)
        write_text_atomically(Path(config.out_dir) / "run_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        run = FinetuneRun(config, dist, model, tokenizer, data, optimizer, autocast(dist.device, config.dtype), metrics,
                          display, TrainClock(already=state.train_seconds), state, score)
        if score is not None and config.eval_before and state.scores_before is None:
            with run.clock.paused():
                state.scores_before = score_task(run, "before")
        with StopSignals() as signals:
            train(run, signals)
            return finish(run)
