"""The training loop of the non-decoder families (T5, BERT, LSTM), top to bottom.

Every method here is the same loop with its own two settings: where batches come from
(`next_batch`) and what the loss of a batch is (`loss`: summed loss and the count it is summed
over). Span corruption and seq2seq fine-tuning (train/seq2seq.py), masked-LM pretraining and
classifier fine-tuning (train/mlm.py) and truncated BPTT for the LSTM (train/recurrent.py) are
settings of it; the mechanics come from the shared helpers (optimizer, schedule, clipping, the
finite-loss check, metrics.jsonl, the training clock that stops during evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.core.progress import ProgressDisplay
from lmforge.train.config import OptimConfig, RecipeConfig, ScheduleConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.metrics import MetricsLog, Throughput, log_training_step, plot_metrics
from lmforge.train.optim import build_optimizer
from lmforge.train.schedule import fraction_done, lr_multiplier
from lmforge.train.signals import TrainClock
from lmforge.train.step import clip_gradients, ensure_finite

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, int]]  # (model, batch) -> (summed loss, count)


@dataclass(frozen=True)
class ObjectiveConfig(RecipeConfig):
    """How long and how a family is trained (the batches and the loss are the method's)."""

    out_dir: str = "runs/objective"
    batch_size: int = 16
    max_steps: int | None = None
    time_budget_s: float | None = None  # training wall clock, evaluation excluded
    max_tokens: int | None = None  # counted as the loss counts them (targets)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.01))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup_steps=50))
    grad_clip: float = 1.0
    seed: int = 0
    threads: int | None = None
    log_every: int = 10
    eval_every: int = 0  # steps; 0 = only at the end
    eval_every_s: float | None = None  # or every this many seconds of training time

    def __post_init__(self) -> None:
        self._check_run(("max_steps", "max_tokens", "time_budget_s"), ("batch_size", "log_every"))
        for name in ("max_steps", "max_tokens", "time_budget_s"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise ValueError("grad_clip must be >= 0")


@dataclass
class ObjectiveResult:
    steps: int
    tokens: int
    train_seconds: float
    records: list[dict[str, Any]]

    @property
    def evals(self) -> list[dict[str, Any]]:
        """The evaluation records (those without a train_loss)."""
        return [r for r in self.records if "train_loss" not in r]


def mean_loss(model: nn.Module, loss: LossFn, batches: Iterable[Any]) -> float:
    """The loss per counted target over fixed batches (held-out evaluation), without gradients."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            loss_sum, n = loss(model, batch)
            total, count = total + float(loss_sum), count + n
    return total / max(1, count)


def train_objective(model: nn.Module, config: ObjectiveConfig, next_batch: Callable[[], Any], loss: LossFn, *,
                    evaluate: Callable[[], dict[str, float]] | None = None, name: str = "train",
                    display: ProgressDisplay | None = None) -> ObjectiveResult:
    """Optimizer steps until the step, token or time budget is spent; `evaluate()` (model in eval
    mode, clock paused) every `eval_every` steps / `eval_every_s` seconds and at the end. Writes
    metrics.jsonl and loss.png into `config.out_dir`."""
    if 0 in (config.max_steps, config.max_tokens, config.time_budget_s):
        raise ValueError(f"{name}: a budget of 0 trains nothing (skip the phase instead)")
    out = Path(config.out_dir)
    metrics = MetricsLog(out / "metrics.jsonl")
    display = display or ProgressDisplay(enabled=False)
    optimizer = build_optimizer(model, config.optim)
    clock, dist = TrainClock(), DistInfo(0, 1, 0, next(model.parameters()).device)  # one process
    step = tokens = 0
    last_eval_step = -1
    next_eval_s = config.eval_every_s
    throughput = Throughput(0.0, 0)

    def run_eval() -> None:
        nonlocal last_eval_step
        if evaluate is None:
            return
        last_eval_step = step
        with clock.paused(), torch.no_grad():
            model.eval()
            scores = evaluate()
            model.train()
        metrics.log(step=step, tokens=tokens, time_s=round(clock.seconds, 3), **scores)
        display.message(f"{name} step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))

    model.train()
    while True:
        progress = fraction_done((step, config.max_steps), (tokens, config.max_tokens), (clock.seconds, config.time_budget_s))
        if progress >= 1.0:
            break
        optimizer.set_lr_multiplier(lr_multiplier(config.schedule, step, progress))
        loss_sum, count = loss(model, next_batch())
        if count == 0:
            raise ValueError(f"{name}: a batch has no target tokens")
        (loss_sum / count).backward()
        mean = float(loss_sum.detach()) / count
        ensure_finite(mean, step + 1, dist)
        grad_norm = clip_gradients(model, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        tokens += int(count)
        if step % config.log_every == 0 or step == 1:
            seconds = clock.seconds
            log_training_step(metrics, display, step=step, tokens=tokens, seconds=seconds,
                              rate=throughput.rate(seconds, tokens), progress=min(progress, 1.0), train_loss=mean,
                              lr=optimizer.param_groups[0]["lr"], grad_norm=grad_norm)
        due = bool(config.eval_every and step % config.eval_every == 0)
        if next_eval_s is not None and clock.seconds >= next_eval_s:
            due = True
            while next_eval_s <= clock.seconds:
                next_eval_s += config.eval_every_s
        if due:
            run_eval()
    if last_eval_step != step:
        run_eval()
    model.eval()
    records = metrics.records()
    plot_metrics(records, out / "loss.png", title=f"{name} {out.name}")
    return ObjectiveResult(step, tokens, clock.seconds, records)
