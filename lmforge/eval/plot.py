"""Accuracy against the number of shots, as a PNG (a standalone Figure: see `lmforge.core.plotting`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lmforge.core.plotting import new_figure, save_figure

__all__ = ["plot_accuracy_vs_shots"]


def plot_accuracy_vs_shots(results: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Plot the primary metric (and acc_norm for multiple choice) of each run against its shots.

    `results` is what `lmforge.eval.runner.evaluate` returns. Error bars are one standard error;
    the dashed line is chance.
    """
    runs = sorted(results["runs"], key=lambda r: r["shots"])
    metric = results.get("primary_metric", "acc")
    shots = [r["shots"] for r in runs]
    series = [metric] + (["acc_norm"] if results.get("kind") == "multiple_choice" else [])
    figure, axes = new_figure(6, 4, dpi=120)
    for number, name in enumerate(series):
        values = [r["metrics"].get(name, math.nan) for r in runs]
        errors = [r["metrics"].get(f"{name}_stderr", 0.0) for r in runs]
        errors = [0.0 if e is None or math.isnan(e) else e for e in errors]
        axes.errorbar(shots, values, yerr=errors, marker="o", capsize=3, label=name, alpha=1.0 if number == 0 else 0.6)
        if number == 0:  # label the headline metric only, so numbers never overlap
            for x, y in zip(shots, values):
                axes.annotate(f"{y:.1%}", (x, y), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
    if results.get("chance") is not None:
        axes.axhline(results["chance"], linestyle="--", color="grey", label=f"chance ({results['chance']:.0%})")
    axes.set_xscale("symlog", linthresh=1)
    axes.set_xticks(shots)
    axes.set_xticklabels([str(k) for k in shots])
    axes.set_xlim(-0.3 if min(shots) == 0 else min(shots) * 0.8, max(shots) * 1.4 + 0.3)
    axes.set_xlabel("shots per class" if results.get("shots_per_class") else "shots (examples in the prompt)")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1.05)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    model = results.get("model")
    axes.set_title(title or f"{results['task']}" + (f" - {model}" if model else ""), fontsize=10)
    return save_figure(figure, path)
