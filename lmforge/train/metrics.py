"""metrics.jsonl, the loss-curve PNG and the progress status line of a training run
(the display itself is `lmforge.core.progress.ProgressDisplay`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lmforge.core.plotting import new_figure, save_figure


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


def plot_metrics(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "loss") -> Path:
    """Train and val loss against tokens seen, as a PNG (see `lmforge.core.plotting`)."""
    train = [(r["tokens"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    figure, axis = new_figure(7, 4.2)
    if train:
        axis.plot(*zip(*train), label="train", linewidth=1, alpha=0.8)
    if val:
        axis.plot(*zip(*val), "o-", label="val", markersize=3)
    axis.set_xlabel("tokens")
    axis.set_ylabel("loss (nats/token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    return save_figure(figure, path)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def progress_line(progress: float, step: int, loss: float, tokens_per_s: float, elapsed: float) -> str:
    """The status text of a training run: step, loss, throughput, training time and ETA."""
    eta = elapsed * (1 - progress) / progress if progress > 0 else 0.0
    return (f"step {step} | loss {loss:.4f} | {tokens_per_s / 1000:.1f}k tok/s | {_duration(elapsed)} | "
            f"eta {_duration(eta)}")


class Throughput:
    """Tokens per second of training time since the previous reading (the log's tokens_per_s)."""

    def __init__(self, seconds: float, tokens: int) -> None:
        self._mark = (seconds, tokens)

    def rate(self, seconds: float, tokens: int) -> float:
        rate = (tokens - self._mark[1]) / max(seconds - self._mark[0], 1e-9)
        self._mark = (seconds, tokens)
        return rate


def log_training_step(metrics: MetricsLog, display: Any, *, step: int, tokens: int, seconds: float, rate: float,
                      progress: float, train_loss: float, status: str = "", **fields: Any) -> None:
    """The periodic record of a training step in metrics.jsonl (step, tokens, time, train_loss and
    the loop's own `fields`) and the progress line (plus the loop's `status` text)."""
    metrics.log(step=step, tokens=tokens, time_s=round(seconds, 3), train_loss=train_loss, **fields,
                tokens_per_s=round(rate, 1))
    display.update(progress, progress_line(progress, step, train_loss, rate, seconds) + status, log_line=True)
