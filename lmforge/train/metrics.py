"""metrics.jsonl, the loss-curve PNG and the progress display of a training run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from lmforge.core.files import replace_atomically


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
    """Train and val loss against tokens seen, as a PNG (a standalone Figure: pyplot's global
    state and the caller's backend are left alone)."""
    from matplotlib.figure import Figure

    train = [(r["tokens"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    figure = Figure(figsize=(7, 4.2), dpi=110)
    axis = figure.subplots()
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
    replace_atomically(path, figure.savefig)


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
        """Stop the bar (restoring the terminal's cursor); safe to call twice."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> "ProgressDisplay":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
