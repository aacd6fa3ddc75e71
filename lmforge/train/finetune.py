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
from lmforge.data.chat import ChatBatches, ChatExample, collate, pack_examples, read_chat_jsonl
from lmforge.data.synthetic import TaskItem, make_items
from lmforge.io.checkpoint import load_meta, load_train_state
from lmforge.io.hf import save_pretrained
from lmforge.core.files import write_folder_atomically, write_text_atomically
from lmforge.io.peft import save_adapter
from lmforge.io.registry import load_model
from lmforge.model.lora import apply_lora, count_parameters, lora_state_dict, merge_lora, merged_state_dict
from lmforge.model.transformer import Transformer
from lmforge.tokenizer.chat import render_conversation
from lmforge.tokenizer.tokenizer import Tokenizer
from lmforge.tokenizer.train import token_byte_lengths
from lmforge.train.config import OptimConfig, RecipeConfig, ScheduleConfig
from lmforge.train.distributed import DistInfo, init_distributed, shutdown_distributed
from lmforge.train.checkpointing import find_resume_checkpoint, restore_optimizer, restore_training_checkpoint, save_training_checkpoint
from lmforge.core.progress import ProgressDisplay
from lmforge.train.metrics import MetricsLog, plot_metrics, progress_line
from lmforge.train.precision import autocast
from lmforge.train.reproducibility import seed_everything, set_deterministic, set_rng_state
from lmforge.train.signals import StopSignals, TrainClock
from lmforge.train.step import accumulate_gradients, clip_gradients, ensure_finite
from lmforge.train.validation import validation_loss
from lmforge.train.optim import build_optimizer
from lmforge.train.schedule import lr_multiplier

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


# --------------------------------------------------------------------------------------------
# Data: conversations -> (ids, mask); task scoring
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


def run_progress(config: FinetuneConfig, step: int, epochs_done: float, seconds: float) -> float:
    parts = []
    if config.max_steps is not None:
        parts.append(step / config.max_steps)
    if config.epochs is not None:
        parts.append(epochs_done / config.epochs)
    if config.time_budget_s is not None:
        parts.append(seconds / config.time_budget_s)
    return max(parts)


# --------------------------------------------------------------------------------------------
# The loop
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
    # ---- setup: determinism, output folder, model, data -------------------------------------------
    if config.threads:
        torch.set_num_threads(config.threads)
    set_deterministic(config.deterministic)
    seed_everything(config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    display = ProgressDisplay(enabled=show_progress)
    display.start(f"finetune ({config.method})")
    model, tokenizer = load_model(config.model, dtype=torch.float32, device=dist.device)
    if tokenizer.pad_id is None and tokenizer.eos_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token to pad batches with")
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    train_examples, val_examples = load_data(config)
    seq_len = min(config.seq_len, model.config.max_seq_len - 1)
    rows, cut = pack_examples(encode_conversations(tokenizer, train_examples), seq_len, config.pack)
    val_rows, _ = pack_examples(encode_conversations(tokenizer, val_examples), seq_len, config.pack)
    batches = ChatBatches(rows, config.batch_size, pad_id, seed=config.seed)
    token_bytes = torch.zeros(model.config.vocab_size, dtype=torch.long)
    lengths = torch.from_numpy(token_byte_lengths(tokenizer)).long()
    token_bytes[:len(lengths)] = lengths[:model.config.vocab_size]
    display.message(f"data: {len(train_examples)} train conversations in {len(rows)} rows of <= {seq_len + 1} tokens"
                    + (f" ({cut} cut to fit)" if cut else "") + f", {len(val_examples)} validation")

    # ---- method: LoRA wraps the chosen layers, full trains everything ----------------------------
    wrapped_names: list[str] = []
    if config.method == "lora":
        wrapped_names = apply_lora(model, config.lora.target_spec, rank=config.lora.rank, alpha=config.lora.alpha,
                                   dropout=config.lora.dropout)
    trainable, total = count_parameters(model)
    display.message(f"model: {config.model} ({model.config.family}, {total / 1e6:.1f}M parameters); method {config.method}: "
                    f"{trainable:,} trainable parameters ({100 * trainable / total:.3f}%)"
                    + (f" in {len(wrapped_names)} LoRA layers" if config.method == "lora" else ""))

    # ---- resume: weights (or adapter) first, optimizer after ---------------------------------------
    step, tokens, train_seconds, resumed, checkpoint = 0, 0, 0.0, None, None
    scores_before: dict[str, float] | None = None
    if resume:
        checkpoint = find_resume_checkpoint(out)
        saved_method = (load_meta(checkpoint).get("finetune_config") or {}).get("method")
        if saved_method != config.method:
            raise ValueError(f"{checkpoint} is from a {saved_method or 'non-finetune'} run; this run's method is {config.method}")
        if config.method == "lora":  # base weights come from --model; the adapter from the resume state
            resumed = load_train_state(checkpoint)
            set_rng_state(resumed["rng"])
            params = lora_state_dict(model)
            if set(resumed.get("lora", {})) != set(params):
                raise ValueError(f"{checkpoint}: its adapter does not match this run's LoRA layers")
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(resumed["lora"][name])
        else:
            resumed = restore_training_checkpoint(checkpoint, model, dist)
        batches.load_state_dict(resumed["loader"])
        step, tokens, train_seconds = int(resumed["step"]), int(resumed["tokens"]), float(resumed["train_seconds"])
        scores_before = resumed.get("scores_before")
    optimizer = build_optimizer(model, config.optim)
    if resumed is not None:
        restore_optimizer(optimizer, model, resumed["optimizer"])
    precision = autocast(dist.device, config.dtype)
    model.train()

    metrics = MetricsLog(out / "metrics.jsonl", resume_step=step if resumed else None)
    write_text_atomically(out / "run_config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    evals: list[dict[str, Any]] = []
    clock = TrainClock(already=train_seconds)
    last_eval_step, last_save_step, stopped_by = -1, step if resumed else -1, None
    rate_mark = (clock.seconds, tokens)

    def run_score(label: str) -> dict[str, float]:
        assert score is not None
        started = time.perf_counter()
        scores = dict(score(model, tokenizer, label))
        seconds = time.perf_counter() - started
        metrics.log(step=step, tokens=tokens, **{f"{name}_{label}": value for name, value in scores.items()},
                    score_s=round(seconds, 1))
        shown = ", ".join(f"{name} {value:.1%}" if isinstance(value, float) else f"{name} {value}"
                          for name, value in scores.items())
        display.message(f"task score {label} training: {shown} ({seconds:.0f}s)")
        return scores

    def to_device(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Move a collated batch; segment ids only when a row holds several conversations (else the
        plain causal path, with no mask to build: right padding is never seen by a real token)."""
        inputs, targets, segments = batch
        packed = bool((segments.amax(dim=1) > 1).any())
        return (inputs.to(dist.device), targets.to(dist.device)) + ((segments.to(dist.device),) if packed else ())

    def run_eval() -> None:
        if not val_rows:
            return
        val_batches = [to_device(collate(val_rows[i:i + config.eval_batch_size], pad_id))
                       for i in range(0, len(val_rows), config.eval_batch_size)]
        result = validation_loss(model, val_batches, token_bytes.to(dist.device), dist, precision=precision)
        record = {"step": step, "tokens": tokens, "time_s": round(clock.seconds, 3), "val_loss": result.loss,
                  "val_bpb": result.bpb, "eval_s": round(result.seconds, 3)}
        metrics.log(**record)
        evals.append(record)
        display.message(f"step {step}: val loss {result.loss:.4f} on {result.tokens:,} assistant tokens")

    def save() -> None:
        nonlocal checkpoint, last_save_step
        state = {"step": step, "tokens": tokens, "train_seconds": clock.seconds, "loader": batches.state_dict(),
                 "method": config.method,
                 "scores_before": scores_before}
        export = model
        if config.method == "lora":
            state["lora"] = {k: v.detach().cpu().clone() for k, v in lora_state_dict(model).items()}
            export = Transformer.from_state_dict(model.config, merged_state_dict(model))
        meta = {"step": step, "tokens": tokens, "train_seconds": round(clock.seconds, 3),
                "val_loss": evals[-1]["val_loss"] if evals else None, "lmforge_version": lmforge.__version__,
                "finetune_config": config.to_dict(), "merged_lora": config.method == "lora"}
        checkpoint = save_training_checkpoint(out, step=step, model=export, wrapped=export, optimizer=optimizer,
                                              tokenizer=tokenizer, dist=dist, fsdp=False, train_state=state, meta=meta,
                                              keep=config.keep_checkpoints)
        last_save_step = step
        if config.plot:
            plot_metrics(metrics.records(), out / "loss.png", title=f"finetune {out.name}")

    if score is not None and config.eval_before and scores_before is None:
        with clock.paused():
            scores_before = run_score("before")

    # ---- the loop ----------------------------------------------------------------------------------
    with StopSignals() as signals:
        while True:
            progress = run_progress(config, step, batches.epoch_progress, clock.seconds)
            if progress >= 1.0:
                break
            optimizer.set_lr_multiplier(lr_multiplier(config.schedule, step, progress))

            micro_batches = []
            for _ in range(config.grad_accum):
                batch = next(batches)
                tokens += int((batch[2] > 0).sum())
                micro_batches.append(to_device(batch))
            loss, target_tokens = accumulate_gradients(model, micro_batches, dist, precision=precision)
            ensure_finite(loss, step + 1, dist)
            grad_norm = clip_gradients(model, config.grad_clip)
            optimizer.step()
            optimizer.zero_grad()
            step += 1

            if step % config.log_every == 0 or step == 1:
                train_now = clock.seconds
                rate = (tokens - rate_mark[1]) / max(train_now - rate_mark[0], 1e-9)
                rate_mark = (train_now, tokens)
                metrics.log(step=step, tokens=tokens, time_s=round(train_now, 3), train_loss=loss,
                            lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm, target_tokens=target_tokens,
                            epoch=round(batches.epoch_progress, 4), tokens_per_s=round(rate, 1))
                done = run_progress(config, step, batches.epoch_progress, train_now)
                display.update(done, progress_line(done, step, loss, rate, train_now), log_line=True)

            with clock.paused():
                if config.eval_every and step % config.eval_every == 0:
                    run_eval()
                    last_eval_step = step
                stopped_by = signals.received if signals.requested(dist) else None
                if stopped_by or (config.save_every and step % config.save_every == 0):
                    save()
            if stopped_by:
                display.message(f"stopped by {stopped_by} at step {step}; checkpoint saved to {checkpoint}; "
                                "continue with --resume")
                break

        # ---- the end: evaluation, score, checkpoint, adapter, merged model -----------------------------
        scores_after = adapter = merged = None
        train_seconds = clock.seconds
        if not stopped_by:
            if last_eval_step != step:
                run_eval()
            if score is not None:
                scores_after = run_score("after")
            if last_save_step != step:
                save()
            if config.method == "lora":
                adapter = save_adapter(model, out / "adapter", base_model_name_or_path=config.model)
                display.message(f"adapter (PEFT layout): {adapter}")
                if config.merge:
                    merge_lora(model)
                    merged = write_folder_atomically(out / "merged", lambda tmp: save_pretrained(model, tokenizer, tmp))
                    display.message(f"merged model: {merged}")
            summary = {"model": config.model, "method": config.method, "task": config.task if config.data is None else None,
                       "data": config.data, "steps": step, "tokens": tokens, "train_seconds": round(train_seconds, 1),
                       "trainable_parameters": trainable, "total_parameters": total,
                       "scores_before": scores_before, "scores_after": scores_after,
                       "final_val_loss": evals[-1]["val_loss"] if evals else None,
                       "checkpoint": str(checkpoint) if checkpoint else None,
                       "adapter": str(adapter) if adapter else None, "merged": str(merged) if merged else None}
            write_text_atomically(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    display.close()
    return FinetuneResult(out, checkpoint, adapter, merged, step, train_seconds, trainable, total,
                          scores_before, scores_after, stopped_by, evals)
