"""Helpers for pretraining tests: tiny run configs, subprocess launches, reading metrics."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def tiny_config(data: Path, out: Path, **overrides) -> dict:
    """A run that takes a few milliseconds per step."""
    config = {
        "data": str(data), "out_dir": str(out),
        "model": {"family": "llama", "dim": 32, "n_layers": 2, "n_heads": 2, "ffn_dim": 64, "tie_embeddings": False},
        "seq_len": 32, "batch_size": 4, "max_steps": 30, "threads": 1,
        "optim": {"name": "adamw", "lr": 3e-3}, "schedule": {"warmup_steps": 5},
        "eval_every": 0, "eval_tokens": 2048, "save_every": 0, "log_every": 1, "sample_tokens": 16,
        "sample_prompts": ["ROMEO:"], "plot": True,
    }
    for key, value in overrides.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def start_pretrain(config_path: Path, *extra: str, prefix: list[str] | None = None) -> subprocess.Popen:
    command = (prefix or [sys.executable, "-m", "lmforge.cli.main"]) + ["pretrain", *extra, "--config", str(config_path)]
    return subprocess.Popen(command, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def train_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


class Terminal(io.StringIO):
    """A stream that says it is a terminal, so the progress display draws live bars into it."""

    def isatty(self) -> bool:
        return True


def terminal_displays(monkeypatch, module) -> list:
    """Make `module` draw its progress on fake terminals; returns the displays it creates."""
    from lmforge.core.progress import ProgressDisplay

    made = []

    def factory(enabled: bool = True, stream=None):
        made.append(ProgressDisplay(enabled=enabled, stream=Terminal()))
        return made[-1]

    monkeypatch.setattr(module, "ProgressDisplay", factory)
    return made


def cursor_restored(display) -> bool:
    """The display stopped drawing and its last cursor command shows the cursor again."""
    text = display.stream.getvalue()
    return not display.drawing and text.rfind("\x1b[?25h") > text.rfind("\x1b[?25l") >= 0
